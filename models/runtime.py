"""Run an exported detector (``models.export``) through onnxruntime, as a drop-in for the torch one.

``OrtDetector.predict(images_rgb) -> Detection`` takes and returns what ``PatchKNN.predict`` does,
so the engine can swap one for the other. The frames are preprocessed with the same torch code
(``models.preprocess``) and the map is brought back to the frame size the same way, so torch and
onnxruntime differ only inside the graph.

Execution providers are asked for in the order ``TensorrtExecutionProvider`` (only with
``tensorrt=True``: engine builds take minutes), ``CUDAExecutionProvider``, ``CPUExecutionProvider``,
as far as this onnxruntime build has them and a CUDA device is present; the provider the session
really got is logged and kept in ``provider``. ``device="cuda"`` without a working CUDA provider
raises instead of silently running on the CPU.

Example:
    >>> detector = OrtDetector(Path("models/fryum/v3/model.onnx"))
    >>> detector.provider
    'CPUExecutionProvider'
    >>> detection = detector.predict(frame_rgb)       # Detection(pred_score (1,), anomaly_map (1, H, W))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
from torch import nn

from models.detectors.patch_knn import Detection, PatchKNN
from models.onnx_contract import BACKBONE_OUTPUTS, INPUT_NAME, describe_path, file_sha256, read_description
from models.preprocess import (
    as_image_list,
    frame_geometry,
    standardise_brightness,
    to_model_input,
    uncrop_maps,
)

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["PROVIDER_ORDER", "OrtBackbone", "OrtDetector", "Parity", "check_parity", "create_session",
           "select_providers"]

logger = logging.getLogger(__name__)

# Fastest first; onnxruntime falls back along the list (its documented provider priority order).
PROVIDER_ORDER: Final = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
DEVICES: Final = ("auto", "cpu", "cuda")
# Parity of another runtime or precision with the fp32 torch detector (issue 17): scores this correlated
# and the same verdict for every frame.
MIN_PARITY_CORRELATION: Final = 0.9999


def select_providers(device: str = "auto", *, tensorrt: bool = False) -> list[str]:
    """Execution providers to ask for, fastest first.

    Args:
        device: ``"auto"`` (GPU providers when a CUDA device is present), ``"cpu"`` or ``"cuda"``.
        tensorrt: also ask for TensorRT before CUDA (off by default: building its engine takes minutes).

    Raises:
        ValueError: an unknown device.
        RuntimeError: ``"cuda"`` without a CUDA provider in this onnxruntime build or without a device.
    """
    import onnxruntime

    kind = device.split(":")[0]
    if kind not in DEVICES:
        msg = f"unknown device {device!r}; use one of: {', '.join(DEVICES)}"
        raise ValueError(msg)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    available = set(onnxruntime.get_available_providers())
    # onnxruntime-gpu lists the CUDA provider even on a machine without a GPU; asking for it there
    # only produces error logs before the fallback, so ask torch whether a device is present.
    gpu = "CUDAExecutionProvider" in available and torch.cuda.is_available()
    if kind == "cuda" and not gpu:
        msg = (f"device 'cuda' was asked for but onnxruntime cannot use CUDA here (providers: "
               f"{', '.join(sorted(available))}; CUDA device present: {torch.cuda.is_available()}); "
               "install onnxruntime-gpu matching the CUDA version, or use device 'auto' or 'cpu'")
        raise RuntimeError(msg)
    providers: list[str] = []
    if gpu:
        if tensorrt and "TensorrtExecutionProvider" in available:
            providers.append("TensorrtExecutionProvider")
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


def create_session(
    path: str | Path,
    *,
    device: str = "auto",
    tensorrt: bool = False,
    intra_op_threads: int | None = None,
) -> tuple[onnxruntime.InferenceSession, str]:
    """An onnxruntime session on the best available provider.

    Args:
        path: the ``.onnx`` file.
        device: ``"auto" | "cpu" | "cuda"`` (see ``select_providers``).
        tensorrt: ask for TensorRT first.
        intra_op_threads: CPU threads per operator; None lets onnxruntime choose (all cores).

    Returns:
        (session, the provider it runs on).

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: the file cannot be loaded, or ``"cuda"`` was asked for and the session fell
            back to the CPU.
    """
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        msg = f"{path} not found; export the model first (`inspector export RECIPE`)"
        raise FileNotFoundError(msg)
    providers = select_providers(device, tensorrt=tensorrt)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        options.intra_op_num_threads = int(intra_op_threads)
    provider_args: list[Any] = list(providers)
    if providers[0] == "TensorrtExecutionProvider":
        # fp16 engines, cached beside the model: the build takes minutes once, not at every start
        cache = path.parent / f"{path.stem}.trt-cache"
        cache.mkdir(exist_ok=True)
        provider_args[0] = ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                                          "trt_engine_cache_path": str(cache)})
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=provider_args)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / ... types
        msg = f"{path}: onnxruntime cannot load the file ({type(exc).__name__}: {exc}); export it again"
        raise RuntimeError(msg) from exc
    got = session.get_providers()[0]
    if device.startswith("cuda") and got == "CPUExecutionProvider":
        msg = f"{path}: asked for CUDA but onnxruntime fell back to the CPU; check the CUDA/cuDNN install"
        raise RuntimeError(msg)
    logger.info("onnxruntime session for %s on %s (asked for %s)", path.name, got, ", ".join(providers))
    return session, got


class OrtBackbone(nn.Module):
    """A ``DinoBackbone`` stand-in that runs an exported ``"backbone"`` graph in onnxruntime.

    Has the attributes ``PatchKNN`` reads (``patch_size``, ``feature_dim``, ``blocks``, ``norm``,
    ``embed_dim``, ``depth``) and a zero-size parameter so ``PatchKNN.device`` is the CPU: the
    tensors it returns live on the CPU whatever the provider.

    Args:
        path: the ``.onnx`` file of a backbone graph.
        device: ``"auto" | "cpu" | "cuda"`` for the provider choice.
        tensorrt: ask for TensorRT first.
        intra_op_threads: CPU threads per operator.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        tensorrt: bool = False,
        intra_op_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.description = read_description(path)
        if self.description["graph"] != "backbone":
            msg = f"{path} holds a {self.description['graph']!r} graph; OrtBackbone runs 'backbone' graphs"
            raise ValueError(msg)
        self.session, self.provider = create_session(path, device=device, tensorrt=tensorrt,
                                                     intra_op_threads=intra_op_threads)
        bb = self.description["backbone"]
        self.patch_size: int = int(bb["patch_size"])
        self.feature_dim: int = int(bb["feature_dim"])
        self.blocks: tuple[int, ...] = tuple(int(b) for b in bb["blocks"])
        self.norm: bool = bool(bb["norm"])
        self.embed_dim: int = self.feature_dim // len(self.blocks)
        self.depth: int = max(self.blocks)
        height, width = self.description["input_hw"]
        self.input_hw: tuple[int, int] = (int(height), int(width))
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float (H, W = ``input_hw``) -> (B, h, w, D) float32 features on the CPU."""
        if tuple(images.shape[-2:]) != self.input_hw:
            msg = (f"model input of {images.shape[-2]}x{images.shape[-1]} px, but the ONNX backbone was "
                   f"exported for {self.input_hw[0]}x{self.input_hw[1]}; "
                   "export again with the camera's frame size")
            raise ValueError(msg)
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (features,) = self.session.run(list(BACKBONE_OUTPUTS), {INPUT_NAME: x})
        return torch.from_numpy(features)


class OrtDetector:
    """An exported detector run by onnxruntime; ``predict`` behaves as ``PatchKNN.predict``.

    Args:
        path: the ``.onnx`` file written by ``models.export.export_onnx`` (its ``.json`` beside it).
        device: ``"auto" | "cpu" | "cuda"`` for the provider choice.
        tensorrt: ask for TensorRT first (GPU only).
        intra_op_threads: CPU threads per operator; None lets onnxruntime choose.
        detector: the fitted torch detector; needed only for a ``"backbone"`` graph (exported when
            the detector masks the background), whose kNN scoring then runs in torch on its bank.

    Raises:
        FileNotFoundError: the file or its description is missing.
        ValueError: a backbone graph without ``detector``.
        RuntimeError: onnxruntime cannot load the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        tensorrt: bool = False,
        intra_op_threads: int | None = None,
        detector: PatchKNN | None = None,
    ) -> None:
        self.path = Path(path)
        self.description = read_description(self.path)
        expected = self.description.get("onnx_sha256")      # absent only during the export's own self-check
        if expected is not None and file_sha256(self.path) != expected:
            msg = (f"{self.path} was changed after it was exported (its sha256 differs from the one in "
                   f"{describe_path(self.path).name}); a model is used only as exported: export it again")
            raise ValueError(msg)
        self.graph: str = self.description["graph"]
        height, width = self.description["input_hw"]
        self.input_hw: tuple[int, int] = (int(height), int(width))
        prep = self.description["preprocess"]
        self.shorter_side: int = int(prep["shorter_side"])
        self.patch_size: int = int(prep["patch_size"])
        self.brightness: str = str(prep.get("brightness", "as_is"))   # exports before the option: as is
        self._scorer: PatchKNN | None = None
        if self.graph == "backbone":
            if detector is None:
                msg = (f"{self.path} holds only the backbone (the detector masks the background, which ONNX "
                       "cannot express); pass detector= (the fitted torch detector) to score with its bank")
                raise ValueError(msg)
            backbone = OrtBackbone(self.path, device=device, tensorrt=tensorrt,
                                   intra_op_threads=intra_op_threads)
            self.session, self.provider = backbone.session, backbone.provider
            scorer = PatchKNN(backbone=backbone, config=detector.config)  # type: ignore[arg-type]
            tensors, info = detector.export_state()
            scorer.import_state(tensors, info)
            self._scorer = scorer
        elif self.graph == "detector":
            self.session, self.provider = create_session(self.path, device=device, tensorrt=tensorrt,
                                                         intra_op_threads=intra_op_threads)
        else:
            msg = f"{self.path}: unknown graph kind {self.graph!r}; export the model again"
            raise ValueError(msg)

    @property
    def device(self) -> torch.device:
        """Where results are returned (host memory), for code that asks the torch detector the same."""
        return torch.device("cpu")

    def run_graph(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on preprocessed input.

        Args:
            images: (B, 3, H, W) float32 normalised RGB, (H, W) = ``input_hw``.

        Returns:
            The graph outputs by name: ``pred_score`` (B,) and ``anomaly_map`` (B, H, W) float32 for
            a detector graph, ``features`` (B, h, w, D) float32 for a backbone graph.
        """
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(names, values, strict=True))

    def run_bound(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """``run_graph`` on a CUDA tensor through onnxruntime's I/O binding: the input is read where
        torch preprocessed it (no copy through host memory); the outputs come back to the host.
        """
        x = images.detach().to(torch.float32).contiguous()
        binding = self.session.io_binding()
        binding.bind_input(name=INPUT_NAME, device_type="cuda", device_id=x.device.index or 0,
                           element_type=np.float32, shape=tuple(x.shape), buffer_ptr=x.data_ptr())
        names = [o.name for o in self.session.get_outputs()]
        for name in names:
            binding.bind_output(name, "cuda", x.device.index or 0)
        torch.cuda.current_stream(x.device).synchronize()  # the preprocessing kernels have written x
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))

    def predict(self, images_rgb: np.ndarray | Sequence[np.ndarray], *, batch_size: int = 8) -> Detection:
        """Score frames, as ``PatchKNN.predict``.

        Args:
            images_rgb: one (H, W, 3) uint8 RGB frame, a (B, H, W, 3) batch or a list of frames;
                each frame's model input (shorter side resized, cropped) must be ``input_hw``.
            batch_size: frames per session run.

        Returns:
            ``Detection(pred_score (B,) float32, anomaly_map (B, H, W) float32 at the frame size)``.

        Raises:
            ValueError: a frame is not valid or its size does not fit the exported input size.
        """
        if self._scorer is not None:
            return self._scorer.predict(images_rgb, batch_size=batch_size)
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        frames = as_image_list(images_rgb)
        if self.brightness == "standardise":     # as PatchKNN.predict does
            frames = [standardise_brightness(frame) for frame in frames]
        scores = np.zeros(len(frames), dtype=np.float32)
        maps: list[np.ndarray] = [np.empty(0, np.float32)] * len(frames)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            by_size.setdefault(frame.shape[:2], []).append(i)
        for (height, width), indices in by_size.items():
            geo = frame_geometry(height, width, shorter_side=self.shorter_side, patch_size=self.patch_size)
            if geo.crop != self.input_hw:
                msg = (f"a frame of {height}x{width} px gives a model input of {geo.crop[0]}x{geo.crop[1]}, "
                       f"but {self.path.name} was exported for {self.input_hw[0]}x{self.input_hw[1]}; "
                       "export again "
                       "for this frame size (or use the torch runtime)")
                raise ValueError(msg)
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                on_gpu = self.provider != "CPUExecutionProvider"
                x = to_model_input(np.stack([frames[i] for i in chunk]), shorter_side=self.shorter_side,
                                   patch_size=self.patch_size, device="cuda" if on_gpu else "cpu")
                out = self.run_bound(x) if on_gpu else self.run_graph(x.numpy())
                scores[chunk] = out["pred_score"]
                crop = torch.from_numpy(np.ascontiguousarray(out["anomaly_map"]))[:, None]
                full = uncrop_maps(crop, geo).numpy().astype(np.float32, copy=False)   # as PatchKNN does
                for j, i in enumerate(chunk):
                    maps[i] = full[j]
        if len(by_size) == 1:
            return Detection(pred_score=scores, anomaly_map=np.stack(maps))
        return Detection(pred_score=scores, anomaly_map=maps)

    def __call__(self, images_rgb: np.ndarray | Sequence[np.ndarray]) -> Detection:
        """Same as ``predict``."""
        return self.predict(images_rgb)


@dataclass(frozen=True, kw_only=True)
class Parity:
    """How a runtime (or a precision) scores the same frames as the reference fp32 torch detector."""

    frames: int
    correlation: float          # Pearson correlation of the image scores (nan when either is constant)
    score_max_abs_diff: float
    map_max_abs_diff: float
    verdicts_equal: bool        # the same side of ``threshold`` for every frame
    threshold: float

    @property
    def ok(self) -> bool:
        """Correlation >= ``MIN_PARITY_CORRELATION`` (or identical scores) and identical verdicts."""
        same = self.score_max_abs_diff == 0.0 or self.correlation >= MIN_PARITY_CORRELATION
        return bool(same and self.verdicts_equal)

    def line(self) -> str:
        return (f"{self.frames} frames: score correlation {self.correlation:.6f}, max |score diff| "
                f"{self.score_max_abs_diff:.2e}, max |map diff| {self.map_max_abs_diff:.2e}, verdicts at "
                f"{self.threshold:.4f} {'identical' if self.verdicts_equal else 'DIFFERENT'}"
                f" -> {'parity' if self.ok else 'NO PARITY'}")


def check_parity(
    reference: Any, candidate: Any, frames: Sequence[np.ndarray], *, threshold: float, batch_size: int = 8
) -> Parity:
    """Score ``frames`` with both detectors (anything with ``PatchKNN.predict``) and compare.

    Args:
        reference: the fp32 torch detector.
        candidate: the runtime or precision under test (``OrtDetector``, a PatchKNN in fp16, ...).
        frames: same-sized (H, W, 3) uint8 RGB frames (at least 2 for a correlation).
        threshold: the verdict threshold (the recipe's review threshold).
        batch_size: frames per call of each detector.
    """
    a = reference.predict(list(frames), batch_size=batch_size)
    b = candidate.predict(list(frames), batch_size=batch_size)
    sa, sb = np.asarray(a.pred_score, np.float64), np.asarray(b.pred_score, np.float64)
    corr = float(np.corrcoef(sa, sb)[0, 1]) if len(sa) > 1 and sa.std() > 0 and sb.std() > 0 else float("nan")
    map_diff = float(np.abs(np.asarray(a.anomaly_map, np.float32) - np.asarray(b.anomaly_map, np.float32)).max())
    return Parity(frames=len(sa), correlation=corr, score_max_abs_diff=float(np.abs(sa - sb).max()),
                  map_max_abs_diff=map_diff, verdicts_equal=bool(np.array_equal(sa >= threshold, sb >= threshold)),
                  threshold=float(threshold))
