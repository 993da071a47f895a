"""A station: one recipe and its fitted detector, turning frames into inspection results.

`Station.inspect` is what the pipeline's inference worker calls for every frame: region of interest,
the detector, defect regions, the verdict. It is a `inspector.pipeline.FrameInspector`.

Which model version a station loads is `inspector.versions.resolve_version` (re-exported here with
`ModelVersion` and `next_version`).

Example:
    >>> station = Station.load(load_recipe("recipes/fryum_demo.yaml"))
    >>> result = station.inspect_image(cv2.imread("part.png"))
    >>> result.verdict, result.score
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import cv2
import numpy as np

from inspector.errors import ModelError, WeightsNotFound
from inspector.results import DefectRegion, Frame, InspectionResult, StageTimes, Verdict, verdict_for
from inspector.versions import ModelVersion, next_version, resolve_version
from models.calibration import Thresholds
from models.regions import shown_count

if TYPE_CHECKING:
    from inspector.defect_typing import DefectTyper, PendingTyping
    from inspector.recipe import Recipe, Roi
    from models.detectors.patch_knn import PatchKNN
    from models.weights import WeightsInfo

__all__ = [
    "ModelVersion", "Station", "apply_roi", "build_detector", "check_detector_options", "line_thresholds",
    "next_version", "resolve_version",
]

logger = logging.getLogger(__name__)

PATCH_SIZE: Final = 14  # px of the model input per DINOv2 feature patch (every backbone in models.backbone)
MIN_ROI_PX: Final = PATCH_SIZE
# Frames per model call in ``Station.inspect_images``: large enough to amortise the backbone's and the
# kNN's per-call overhead, small enough that a batch of 448-px frames stays well under 1 GB of activations.
INSPECT_BATCH: Final = 8


# --------------------------------------------------------------------------- device


NVIDIA_PCI_VENDOR: Final = "0x10de"
PCI_DEVICES: Final = Path("/sys/bus/pci/devices")


def nvidia_gpu_installed(pci_devices: Path = PCI_DEVICES) -> bool | None:
    """Whether the machine has an NVIDIA display or 3D controller, driver or not (None: cannot tell).

    Read from Linux's PCI listing (vendor 0x10de, class 0x03xxxx), so a GPU whose driver failed still
    counts; None where there is no such listing (another OS, a container without ``/sys``).
    """
    try:
        devices = list(pci_devices.iterdir())
    except OSError:
        return None
    for device in devices:
        try:
            vendor = (device / "vendor").read_text(encoding="ascii").strip().lower()
            klass = (device / "class").read_text(encoding="ascii").strip().lower()
        except OSError:
            continue
        if vendor == NVIDIA_PCI_VENDOR and klass.startswith("0x03"):
            return True
    return False


def _gpu_warning(pci_devices: Path = PCI_DEVICES) -> str | None:
    """The operator's warning for a recipe with ``device: auto`` that finds no usable CUDA device.

    A machine without an NVIDIA GPU is a CPU station: running on its CPU is what ``auto`` asks for
    (logged, and the footer says "on cpu"), not a fault. An installed GPU that CUDA cannot use (driver,
    CUDA build of torch) is one, and so is a machine where the hardware cannot be listed.
    """
    import torch

    if torch.cuda.is_available():
        return None
    installed = nvidia_gpu_installed(pci_devices)
    if installed is False:
        logger.info("no GPU on this machine: running on CPU")
        return None
    if installed and torch.version.cuda is None:
        return "GPU unavailable: running on CPU (this torch is a CPU-only build; install a CUDA build)"
    if installed:
        return "GPU unavailable: running on CPU (an NVIDIA GPU is installed; check its driver)"
    return "GPU unavailable: running on CPU"


# --------------------------------------------------------------------------- ROI


def apply_roi(image_bgr: np.ndarray, roi: Roi | None) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
    """Cut the region of interest out of a frame.

    Args:
        image_bgr: (H, W, 3) uint8 BGR frame.
        roi: the recipe's ROI, or None for the whole frame.

    Returns:
        ``(crop_bgr, (x0, y0), polygon_mask)``: the crop, its offset in the frame, and for a polygon a
        (h, w) bool mask of the crop's pixels inside it (None for a rectangle or the whole frame).
    """
    if roi is None:
        return image_bgr, (0, 0), None
    height, width = image_bgr.shape[:2]
    x, y, w, h = roi.bounding_box()
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 - x0 < MIN_ROI_PX or y1 - y0 < MIN_ROI_PX:
        msg = (f"the region of interest ({x}, {y}, {w}, {h}) leaves less than {MIN_ROI_PX}x{MIN_ROI_PX} px "
               f"of a {width}x{height} frame")
        raise ValueError(msg)
    crop = image_bgr[y0:y1, x0:x1]
    mask = roi.mask(height, width)[y0:y1, x0:x1] if roi.polygon is not None else None
    return crop, (x0, y0), mask


# --------------------------------------------------------------------------- building and loading


def _weights(recipe: Recipe, weights: str | Path | None) -> Any:
    from models.weights import resolve_weights

    explicit = weights if weights is not None else recipe.weights_path()
    try:
        return resolve_weights(recipe.detector.backbone, explicit)
    except FileNotFoundError as exc:
        raise WeightsNotFound(str(exc), tried=tuple(getattr(exc, "tried", ()))) from exc


def build_detector(
    recipe: Recipe, *, device: str | None = None, weights: str | Path | None = None
) -> tuple[PatchKNN, WeightsInfo]:
    """A new, unfitted detector as the recipe describes it, on ``device`` (default: the recipe's)."""
    from models.backbone import create_backbone
    from models.detectors import PatchKNNConfig, create_detector

    resolved = _weights(recipe, weights)
    backbone = create_backbone(
        recipe.detector.backbone,
        state_dict=resolved.state_dict,
        blocks=tuple(recipe.detector.blocks),
        device=device or recipe.detector.device,
    )
    options = {"shorter_side": recipe.preprocess.shorter_side, **recipe.detector.options}
    try:
        config = PatchKNNConfig.from_dict(options)
        # create_detector is typed nn.Module (the registry's type); its detectors are PatchKNN (the only built-in)
        detector = cast("PatchKNN", create_detector(recipe.detector.name, backbone=backbone, config=config))
    except (TypeError, ValueError) as exc:
        where = recipe.path or recipe.name
        msg = f"{where}: detector settings are not valid: {exc}"
        raise ModelError(msg) from exc
    return detector, resolved.info


def check_detector_options(recipe: Recipe) -> None:
    """Refuse ``detector.options`` that `build_detector` (teaching) would refuse, before loading a model.

    Raises:
        RecipeError: naming the recipe file, ``detector.options`` and the bad option.
    """
    from inspector.errors import RecipeError
    from models.detectors import PatchKNNConfig

    try:
        PatchKNNConfig.from_dict({"shorter_side": recipe.preprocess.shorter_side, **recipe.detector.options})
    except (TypeError, ValueError) as exc:
        msg = f"{recipe.path or recipe.name}: detector.options are not valid: {exc}"
        raise RecipeError(msg, path=recipe.path, field="detector.options") from exc


class Station:
    """A recipe with its fitted detector: inspects frames.

    Thread-safe. On CUDA `inspect` holds a lock, so a GUI "check this image" call cannot interleave
    with the pipeline's worker (the detector reuses pinned buffers and CUDA graphs from call to call).
    On the CPU the detector only reads its state while it scores, so callers on several threads
    score at once (`concurrent_calls`; a review's scoring threads, `inspector._review_workers`).
    """

    can_defer_typing: ClassVar[bool] = True     # inspect(frame, defer_typing=True): a PLC hears the verdict first

    def __init__(
        self,
        *,
        recipe: Recipe,
        detector: PatchKNN,
        thresholds: Thresholds,
        version: ModelVersion | None,
        weights: WeightsInfo | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.recipe = recipe
        self.detector = detector
        self.model_thresholds = thresholds
        self.version = version
        self.weights = weights
        self.warnings: list[str] = list(warnings)
        self._lock = threading.Lock()
        self.typer: DefectTyper | None = None   # few-shot defect typing (attach_typer)

    # ----------------------------------------------------------------- construction

    @staticmethod
    def import_engine() -> None:
        """Import what `load` needs (torch, timm, the detectors) without loading a model: for a caller that loads
        one later and would rather pay the imports while nothing waits for them (the app at start-up)."""
        import importlib

        for name in ("models.saved", "models.detectors"):     # torch, timm and the backbone with the first
            importlib.import_module(name)

    @classmethod
    def load(
        cls,
        recipe: Recipe,
        *,
        version: str | None = None,
        device: str | None = None,
        weights: str | Path | None = None,
    ) -> Station:
        """Load the recipe's model (the pinned or newest version) onto ``device``.

        Raises:
            ModelError: no trained model, a broken model folder, or a model made with other weights.
            WeightsNotFound: no DINOv2 weights source works.
        """
        from models.backbone import create_backbone
        from models.saved import load_detector, read_manifest

        chosen = resolve_version(recipe, version)
        wanted_device = device or recipe.detector.device
        warnings: list[str] = []
        if wanted_device == "auto":
            warning = _gpu_warning()
            if warning:
                warnings.append(warning)
        resolved = _weights(recipe, weights)
        try:
            saved = read_manifest(chosen.path)["backbone"]
            backbone = create_backbone(
                saved["model_name"],
                state_dict=resolved.state_dict,
                blocks=tuple(saved["blocks"]),
                norm=bool(saved["norm"]),
                device=wanted_device,
            )
            detector, thresholds, _ = load_detector(
                chosen.path, backbone=backbone, weights_sha256=resolved.info.sha256, device=wanted_device
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            msg = f"{chosen.path}: cannot load model version {chosen.name} of recipe '{recipe.name}': {exc}"
            raise ModelError(msg) from exc
        if recipe.detector.runtime == "onnx":
            detector = _onnx_detector(recipe, chosen, detector, wanted_device, weights_sha256=resolved.info.sha256)
        logger.info("recipe %s: loaded model %s on %s", recipe.name, chosen.name, detector.device)
        return cls(
            recipe=recipe, detector=detector, thresholds=thresholds, version=chosen,
            weights=resolved.info, warnings=tuple(warnings),
        )

    # ----------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def model_version(self) -> str:
        return self.version.name if self.version else ""

    @property
    def device(self) -> str:
        return str(self.detector.device)

    @property
    def thresholds(self) -> tuple[float, float, float]:
        """(review, fail, pixel): the recipe's overrides where set, else the model's calibration."""
        return line_thresholds(self.recipe, self.model_thresholds)

    @property
    def region_peak(self) -> float | None:
        """A region is shown when its peak reaches this (and a frame's strongest always): the recipe's override
        where set, else the model's calibration; None (a model saved before it) shows every region."""
        over = self.recipe.thresholds.region_peak
        return float(over) if over is not None else self.model_thresholds.region_peak

    @property
    def concurrent_calls(self) -> bool:
        """Whether several threads may inspect at once: a detector on the CPU reads only its fitted
        state while it scores; on CUDA it reuses per-call buffers and graphs, so calls take turns."""
        return self.detector.device.type == "cpu"

    def _turn(self) -> AbstractContextManager[object]:
        """The lock when calls must take turns (`concurrent_calls`), else nothing to wait for."""
        return contextlib.nullcontext() if self.concurrent_calls else self._lock

    # ----------------------------------------------------------------- inspection

    def inspect(self, frame: Frame, *, defer_typing: bool = False) -> InspectionResult:
        """Inspect one frame (the pipeline's worker calls this).

        ``defer_typing``: a REVIEW/FAIL result comes back with its regions untyped and its typing pending
        (``result.typing``; `inspector.defect_typing.finish_typing` runs it), so that a PLC can hear the
        verdict first (`inspector.lineio.trigger.TriggeredRunner`).

        Raises on failure; the pipeline turns that into an ERROR result.
        """
        return self._inspect(frame.image_bgr, frame_id=frame.frame_id, timestamp=frame.timestamp,
                             source=frame.source, path=frame.path, capture_ms=frame.capture_ms,
                             defer_typing=defer_typing)

    def inspect_image(
        self, image_bgr: np.ndarray, *, path: str | None = None, frame_id: int = 0
    ) -> InspectionResult:
        """Inspect one image outside the pipeline (teaching checks, review, the GUI)."""
        return self._inspect(image_bgr, frame_id=frame_id, timestamp=time.time(),
                             source=path or "image", path=path, capture_ms=0.0)

    def inspect_images(
        self,
        images_bgr: Sequence[np.ndarray],
        *,
        paths: Sequence[str | None] | None = None,
        first_frame_id: int = 0,
        batch_size: int = INSPECT_BATCH,
    ) -> list[InspectionResult]:
        """Inspect several images with batched model calls (review, teaching checks); same results as
        ``inspect_image`` one at a time, in the same order.

        Images of one crop size are scored ``batch_size`` at a time (one backbone call and one kNN
        pass per batch); images of other sizes form batches of their own.
        ``times.model_ms`` of each result is its share of its batch's model time.

        Raises:
            ValueError: ``paths`` does not match ``images_bgr`` in length, ``batch_size < 1``, or an
                image is not valid (the whole call fails; score the images one at a time to isolate it).
        """
        if paths is not None and len(paths) != len(images_bgr):
            msg = f"inspect_images: {len(paths)} paths for {len(images_bgr)} images; give one path per image"
            raise ValueError(msg)
        if batch_size < 1:
            msg = f"inspect_images: batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        names = list(paths) if paths is not None else [None] * len(images_bgr)
        results: list[InspectionResult] = []
        with self._turn():
            for start in range(0, len(images_bgr), batch_size):
                chunk = images_bgr[start : start + batch_size]
                t0 = time.perf_counter()
                crops = [self._crop(image) for image in chunk]
                t1 = time.perf_counter()
                detection = self._predict([rgb for rgb, _, _ in crops], batch_size=batch_size)
                t2 = time.perf_counter()
                share = 1.0 / len(chunk)
                for j, (image, (rgb, origin, polygon)) in enumerate(zip(chunk, crops, strict=True)):
                    t_post = time.perf_counter()
                    path = names[start + j]
                    features = getattr(detection, "patch_features", None)
                    results.append(self._result(
                        image, float(detection.pred_score[j]), detection.anomaly_map[j], origin, polygon,
                        frame_id=first_frame_id + start + j, timestamp=time.time(), source=path or "image",
                        path=path, capture_ms=0.0, preprocess_ms=(t1 - t0) * 1e3 * share,
                        model_ms=(t2 - t1) * 1e3 * share, t_post=t_post,
                        features=features[j] if features else None, crop_rgb=rgb))
        return results

    def _inspect(
        self, image_bgr: np.ndarray, *, frame_id: int, timestamp: float, source: str,
        path: str | None, capture_ms: float, defer_typing: bool = False,
    ) -> InspectionResult:
        with self._turn():
            t0 = time.perf_counter()
            crop_rgb, origin, polygon = self._crop(image_bgr)
            t1 = time.perf_counter()
            detection = self._predict(crop_rgb)
            t2 = time.perf_counter()
            features = getattr(detection, "patch_features", None)
            return self._result(image_bgr, float(detection.pred_score[0]), detection.anomaly_map[0], origin,
                                polygon, frame_id=frame_id, timestamp=timestamp, source=source, path=path,
                                capture_ms=capture_ms, preprocess_ms=(t1 - t0) * 1e3,
                                model_ms=(t2 - t1) * 1e3, t_post=t2,
                                features=features[0] if features else None, crop_rgb=crop_rgb,
                                defer_typing=defer_typing)

    def _crop(self, image_bgr: np.ndarray) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
        """The recipe's region of interest as RGB, its top-left corner in the frame, and its polygon mask."""
        crop_bgr, origin, polygon = apply_roi(image_bgr, self.recipe.roi)
        return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB), origin, polygon

    def _result(
        self, image_bgr: np.ndarray, score: float, crop_map: np.ndarray, origin: tuple[int, int],
        polygon: np.ndarray | None, *, frame_id: int, timestamp: float, source: str, path: str | None,
        capture_ms: float, preprocess_ms: float, model_ms: float, t_post: float,
        features: np.ndarray | None = None, crop_rgb: np.ndarray | None = None, defer_typing: bool = False,
    ) -> InspectionResult:
        """Verdict, regions (typed when ``features``, the crop's patch features, are given; ``crop_rgb``, the
        crop that was scored, gives the typer its colour; ``defer_typing``: typed later, ``result.typing``)
        and the full-frame map of one scored crop."""
        x0, y0 = origin
        if polygon is not None:
            crop_map = np.where(polygon, crop_map, 0.0).astype(np.float32)
        review, fail, pixel = self.thresholds
        problem = _not_finite(score, review, fail, pixel, crop_map)
        if problem is not None:    # fail-safe: a broken number is a reject, never a PASS
            logger.error("recipe %s frame %s: %s", self.name, frame_id, problem)
            return InspectionResult(
                frame_id=frame_id, timestamp=timestamp, source=source, recipe=self.name,
                model_version=self.model_version, verdict=Verdict.ERROR, score=None, image_bgr=image_bgr,
                path=path, times=StageTimes(capture_ms=capture_ms), error=problem,
                line=self.recipe.line, station=self.recipe.station,
            )
        verdict = verdict_for(score, review, fail)
        regions: tuple[DefectRegion, ...] = ()
        pending: PendingTyping | None = None
        if verdict is not Verdict.PASS:
            every = self._regions(crop_map, pixel, x0, y0)
            # shown: the regions whose peak no good image reached when teaching, and the strongest; the typer
            # still describes the frame by all of them (typing from the shown ones alone measured worse)
            regions = every[:shown_count([r.max_score for r in every], self.region_peak)]
            if regions and features is not None:
                work = functools.partial(self._typed, every, len(regions), features, crop_map, pixel, (x0, y0),
                                         crop_rgb, pool=verdict is Verdict.FAIL, turn=defer_typing)
                if defer_typing:
                    from inspector.defect_typing import PendingTyping

                    pending = PendingTyping(work, regions)
                else:
                    regions = work()
        anomaly_map = crop_map
        if crop_map.shape != image_bgr.shape[:2]:
            anomaly_map = np.zeros(image_bgr.shape[:2], np.float32)
            anomaly_map[y0 : y0 + crop_map.shape[0], x0 : x0 + crop_map.shape[1]] = crop_map
        t3 = time.perf_counter()
        return InspectionResult(
            frame_id=frame_id, timestamp=timestamp, source=source, recipe=self.name,
            model_version=self.model_version, verdict=verdict, score=score, regions=regions,
            anomaly_map=anomaly_map, image_bgr=image_bgr, path=path,
            times=StageTimes(capture_ms=capture_ms, preprocess_ms=preprocess_ms,
                             model_ms=model_ms, postprocess_ms=(t3 - t_post) * 1e3),
            line=self.recipe.line, station=self.recipe.station, typing=pending,
        )

    def _typed(
        self, regions: tuple[DefectRegion, ...], shown: int, features: np.ndarray, crop_map: np.ndarray,
        pixel: float, offset: tuple[int, int], crop_rgb: np.ndarray | None, *, pool: bool, turn: bool,
    ) -> tuple[DefectRegion, ...]:
        """The first ``shown`` of the frame's regions with their embeddings and types, typed from all of them
        (the typer's crop pass uses the backbone: ``turn`` takes the station's turn, for typing run after the
        answer, outside `inspect`)."""
        from inspector.defect_typing import type_regions
        from models.defect_types import crop_embedder

        with self._turn() if turn else contextlib.nullcontext():
            typed = type_regions(regions, typer=self.typer, patch_features=features, crop_map=crop_map,
                                 pixel_threshold=pixel, offset=offset, shorter_side=self._model_side(crop_map.shape),
                                 memory_bank=getattr(self.detector, "memory_bank", None), crop_rgb=crop_rgb,
                                 embed_crops=crop_embedder(self.detector), pool=pool,
                                 standardised=bool(getattr(self.detector, "brightness_active", False)))
        return typed[:shown]

    def attach_typer(self, typer: DefectTyper | None) -> None:
        """Type every region from now on with ``typer`` (None: stop typing; embeddings are still kept)."""
        self.typer = typer

    def _predict(self, image_rgb: np.ndarray | list[np.ndarray], *, batch_size: int = 1) -> Any:
        from models.detectors.patch_knn import PatchKNN

        try:
            if isinstance(self.detector, PatchKNN):   # the same backbone pass gives the region features
                return self.detector.predict(image_rgb, batch_size=batch_size, with_features=True)
            return self.detector.predict(image_rgb, batch_size=batch_size)
        except Exception as exc:
            if "OutOfMemory" in type(exc).__name__ and self.detector.device.type != "cpu":
                # This frame is an ERROR (the pipeline reports it); the next ones run on the CPU.
                self.detector.to("cpu")
                warning = "GPU out of memory: this station now runs on CPU"
                self.warnings.append(warning)
                logger.warning("recipe %s: %s", self.name, warning)
            raise

    def _model_side(self, shape: tuple[int, ...]) -> int:
        """The shorter side (model pixels) a crop of ``shape`` is scored at: the recipe's, or a tiled model's
        tiling scale (its maps and features have one patch per 14 model pixels of that size)."""
        side = getattr(self.detector, "scoring_shorter_side", None)  # PatchKNN; the ONNX runtime never tiles
        return int(side(shape[0], shape[1])) if side is not None else int(self.recipe.preprocess.shorter_side)

    def _regions(self, crop_map: np.ndarray, pixel: float, x0: int, y0: int) -> tuple[DefectRegion, ...]:
        from models.regions import find_regions, patch_gap_px

        # fragments closer than one feature patch come from neighbouring patches of one defect: one region
        gap = patch_gap_px(crop_map.shape, self._model_side(crop_map.shape), patch_size=PATCH_SIZE)
        found = find_regions(crop_map, pixel_threshold=pixel, min_area_px=self.recipe.min_defect_area_px,
                             mm_per_px=self.recipe.mm_per_px, merge_gap_px=gap)
        return tuple(
            DefectRegion(x=r.x + x0, y=r.y + y0, width=r.width, height=r.height, area_px=r.area_px,
                         area_mm2=r.area_mm2, max_score=r.max_score, mean_score=r.mean_score)
            for r in found
        )



def line_thresholds(recipe: Recipe, model: Thresholds | Path) -> tuple[float, float, float]:
    """(review, fail, pixel) a station of ``recipe`` judges with: the recipe's overrides where set, else the
    model's calibration (``model``: its `Thresholds`, or a saved version's folder, read from its ``model.json``
    without loading the detector).

    Raises:
        FileNotFoundError, ValueError: the version's ``model.json`` is missing or unreadable (naming the file).
    """
    if isinstance(model, Path):
        from models.manifest import read_manifest  # not models.saved: no torch import to read a threshold

        model = Thresholds.from_dict(read_manifest(model)["thresholds"])
    over = recipe.thresholds
    review = over.review if over.review is not None else model.review
    fail = over.fail if over.fail is not None else model.fail
    pixel = over.pixel if over.pixel is not None else model.pixel
    return float(review), float(fail), float(pixel)


def _not_finite(score: float, review: float, fail: float, pixel: float, anomaly_map: np.ndarray) -> str | None:
    """Why this frame cannot be judged (a NaN or infinite number), or None when every number is finite."""
    for name, value in (("review threshold", review), ("fail threshold", fail), ("pixel threshold", pixel)):
        if not np.isfinite(value):
            return f"the {name} is {value}: the model or recipe is broken; teach the recipe again"
    if not np.isfinite(score):
        return f"the model gave the score {score}: the model is broken; teach the recipe again"
    if not np.isfinite(anomaly_map).all():
        return "the model's anomaly map holds NaN or infinite values: the model is broken; teach the recipe again"
    return None


def _onnx_detector(recipe: Recipe, version: ModelVersion, detector: PatchKNN, device: str, *,
                   weights_sha256: str | None = None) -> Any:
    """The version's exported ``model.onnx`` run by onnxruntime (``detector.runtime: onnx``).

    ``models.runtime.OrtDetector`` has the torch detector's ``predict``; the torch detector is kept
    only when the export holds just the backbone (masking detectors score in torch).
    """
    from models.export import read_description
    from models.runtime import OrtDetector

    path = version.path / "model.onnx"
    if not path.is_file():
        msg = (f"{path} not found: recipe '{recipe.name}' asks for detector.runtime 'onnx'; run "
               f"`inspector export {recipe.path or recipe.name}` first, or set detector.runtime to 'torch'")
        raise ModelError(msg)
    try:
        description = read_description(path)
        exported_bank = int(description["detector"]["bank_size"])
        if exported_bank != detector.bank_size:
            msg = (f"{path} was exported from a model with {exported_bank} bank patches, but model "
                   f"{version.name} has {detector.bank_size}; export it again (`inspector export`)")
            raise ValueError(msg)
        exported_sha = description.get("weights_sha256")
        if exported_sha and weights_sha256 and exported_sha != weights_sha256:
            msg = (f"{path} was exported with backbone weights sha256 {exported_sha[:12]}..., but model "
                   f"{version.name} runs with {weights_sha256[:12]}...; export it again (`inspector export`)")
            raise ValueError(msg)
        import torch

        # as many CPU threads per operator as torch uses (torch.set_num_threads), not onnxruntime's all cores
        return OrtDetector(path, device=device, detector=detector, intra_op_threads=torch.get_num_threads())
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        msg = f"{path}: cannot run model {version.name} of recipe '{recipe.name}' in onnxruntime: {exc}"
        raise ModelError(msg) from exc
