"""Evaluation on MVTec-AD-layout data: a loader, anomalib's metrics, and one call that runs it all.

The folder layout is the one of MVTec AD (and of VisA and others converted to it)::

    <category>/train/good/*.png|jpg                     defect-free training images
    <category>/test/good/*                              defect-free test images (no masks)
    <category>/test/<defect_type>/*                     defective test images
    <category>/ground_truth/<defect_type>/<stem>_mask.png   binary masks, same size as the image

Metrics come from anomalib (``anomalib.metrics``): image AUROC, pixel AUROC, AUPRO (false-positive
rate limited to 0.3, normalised) and F1. Pixel metrics are computed on anomaly maps and masks
resized so that the shorter side is ``pixel_size`` (256 by default) to bound memory: a category of
700 images at full size would hold hundreds of millions of pixels. Maps are resized with
``cv2.INTER_AREA`` (or linear when enlarging), masks with nearest neighbour.

F1 is reported at the *calibrated* threshold, chosen from good training images only (the
detector's leave-one-out ``train_scores`` through ``models.calibration.calibrate``), which is what
a station would run with; the best F1 over all thresholds is given for reference.

Example:
    >>> category = load_category("data/visa_fryum")
    >>> report = evaluate(lambda: PatchKNN(backbone=backbone), category, shots=16)
    >>> report.to_dict()["image_auroc"]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, runtime_checkable

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from anomalib.data import Batch

__all__ = [
    "IMAGE_SUFFIXES",
    "Category",
    "Detector",
    "EvalReport",
    "TestItem",
    "aupro",
    "best_f1",
    "evaluate",
    "f1_at",
    "image_auroc",
    "load_category",
    "load_image_rgb",
    "load_mask",
    "pixel_auroc",
    "resize_for_pixel_metrics",
    "select_shots",
    "subset_test",
]

logger = logging.getLogger(__name__)

# File endings read as images (OpenCV decodes all of them); compared lower-case.
IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD: Final = "good"               # the MVTec AD folder name of defect-free images
MASK_SUFFIX: Final = "_mask"       # MVTec AD: ground_truth/<type>/<stem>_mask.png
AUPRO_FPR_LIMIT: Final = 0.3       # the MVTec AD convention (Bergmann et al., IJCV 2021)
PIXEL_SIZE: Final = 256            # shorter side of maps/masks for pixel metrics; bounds memory

ProgressFn = Callable[[int, int, str], None]   # (done, total, message)


# --------------------------------------------------------------------------------------------- loader


@dataclass(frozen=True, kw_only=True)
class TestItem:
    """One test image with its ground truth."""

    __test__ = False               # not a pytest test class, despite the name

    path: Path                     # the image file
    label: int                     # 0 good, 1 defective
    defect_type: str               # the folder name under test/ ("good" for good images)
    mask_path: Path | None         # ground_truth/<type>/<stem>_mask.png; None for good images


@dataclass(frozen=True, kw_only=True)
class Category:
    """The images of one category, as listed on disk (sorted by file name)."""

    name: str                      # the category folder name
    root: Path                     # the category folder
    train_good: tuple[Path, ...]   # defect-free training images
    test: tuple[TestItem, ...]     # good and defective test images

    @property
    def defect_types(self) -> tuple[str, ...]:
        """Defect types present in the test set, sorted, without ``good``."""
        return tuple(sorted({t.defect_type for t in self.test if t.label == 1}))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(gt_dir: Path, image: Path) -> Path | None:
    for suffix in (".png", *IMAGE_SUFFIXES):
        for stem in (image.stem + MASK_SUFFIX, image.stem):
            candidate = gt_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_category(root: str | Path) -> Category:
    """List the images of an MVTec-AD-layout category folder.

    Args:
        root: the category folder (holding ``train/``, ``test/`` and ``ground_truth/``).

    Returns:
        The category with its training images and test items, each sorted by file name.

    Raises:
        FileNotFoundError: the folder, ``train/good`` or ``test`` is missing or holds no image,
            or a defective test image has no mask under ``ground_truth/<type>/``.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: no such category folder; expected an MVTec AD layout (train/good, test/<type>)"
        raise FileNotFoundError(msg)
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        msg = f"{root}: missing folder train/{GOOD} with defect-free training images (MVTec AD layout)"
        raise FileNotFoundError(msg)
    train_good = _images_in(train_dir)
    if not train_good:
        msg = f"{train_dir}: holds no image ({', '.join(IMAGE_SUFFIXES)})"
        raise FileNotFoundError(msg)
    test_dir = root / "test"
    if not test_dir.is_dir():
        msg = f"{root}: missing folder test/ with test/{GOOD} and test/<defect_type> subfolders"
        raise FileNotFoundError(msg)

    items: list[TestItem] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect_type = type_dir.name
        for image in _images_in(type_dir):
            if defect_type == GOOD:
                items.append(TestItem(path=image, label=0, defect_type=GOOD, mask_path=None))
                continue
            gt_dir = root / "ground_truth" / defect_type
            mask = _find_mask(gt_dir, image) if gt_dir.is_dir() else None
            if mask is None:
                msg = (
                    f"{image}: defective test image without a mask; expected "
                    f"{gt_dir / (image.stem + MASK_SUFFIX + '.png')}"
                )
                raise FileNotFoundError(msg)
            items.append(TestItem(path=image, label=1, defect_type=defect_type, mask_path=mask))
    if not items:
        msg = f"{test_dir}: holds no test image; expected test/{GOOD}/ and test/<defect_type>/ folders"
        raise FileNotFoundError(msg)
    if not any(t.label == 0 for t in items) or not any(t.label == 1 for t in items):
        logger.warning("%s: the test set lacks good or defective images; AUROC is undefined", root)
    return Category(name=root.name, root=root, train_good=tuple(train_good), test=tuple(items))


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: an image file OpenCV can decode.

    Returns:
        (H, W, 3) uint8 RGB; grayscale files are expanded to three equal channels, alpha is dropped.

    Raises:
        ValueError: the file cannot be read or decoded.
    """
    data = np.fromfile(str(path), dtype=np.uint8)      # np.fromfile + imdecode: non-ASCII paths work
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        msg = f"{path}: cannot decode this file as an image"
        raise ValueError(msg)
    if image.dtype != np.uint8:                        # 16-bit PNG/TIFF: keep the top 8 bits
        image = (image / 257).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask.

    Args:
        path: a mask image; any non-zero pixel is defective.
        shape: (H, W) of its image; a mask of another size is resized (nearest neighbour).

    Returns:
        (H, W) bool defect mask.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        msg = f"{path}: cannot decode this file as a mask image"
        raise ValueError(msg)
    if shape is not None and mask.shape != tuple(shape):
        logger.warning("%s: mask is %s, image is %s; resizing the mask", path, mask.shape, shape)
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def select_shots(paths: Sequence[Path], shots: int | None, *, seed: int = 0) -> list[Path]:
    """A seeded random choice of ``shots`` training images (all of them, in order, for None).

    The choice for a given seed is a prefix-stable permutation: 16 shots are the first 16 of the
    same shuffle that gives 32.
    """
    paths = list(paths)
    if shots is None or shots >= len(paths):
        if shots is not None and shots > len(paths):
            logger.warning("asked for %d shots but only %d training images exist", shots, len(paths))
        return paths
    if shots < 1:
        msg = f"shots must be a positive number of training images or None for all, got {shots}"
        raise ValueError(msg)
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in sorted(order[:shots].tolist())]


def subset_test(items: Sequence[TestItem], n: int | None, *, seed: int = 0) -> list[TestItem]:
    """A seeded, stratified subset of ``n`` test items for quick runs (all of them for None).

    Good images get half of the places, defects the other half, shared out over the defect types
    in proportion to their counts with at least one each, so every type stays represented.
    """
    items = list(items)
    if n is None or n >= len(items):
        return items
    if n < 2:
        msg = f"a test subset needs at least 2 images (one good, one defective), got {n}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.defect_type, []).append(i)
    n_good = min(len(groups.get(GOOD, [])), n // 2)
    defect_types = sorted(t for t in groups if t != GOOD)
    n_defect = n - n_good
    total_defects = sum(len(groups[t]) for t in defect_types)
    quota = {t: max(1, round(n_defect * len(groups[t]) / max(total_defects, 1))) for t in defect_types}
    chosen: list[int] = []
    if n_good:
        chosen += rng.choice(groups[GOOD], size=n_good, replace=False).tolist()
    for t in defect_types:
        k = min(quota[t], len(groups[t]))
        chosen += rng.choice(groups[t], size=k, replace=False).tolist()
    return [items[i] for i in sorted(chosen)]


# -------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class _Batch:
    """The fields anomalib's metrics read (anomalib's ``Batch`` dataclasses carry the same names).

    ``AnomalibMetric.update`` is annotated with anomalib's ``Batch`` but only reads these fields by
    name, so a ``_Batch`` is passed through ``cast("Batch[Any]", ...)``.
    """

    pred_score: torch.Tensor | None = None
    gt_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    gt_mask: torch.Tensor | None = None


def _as_tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype).flatten()


def _unit_range(preds: torch.Tensor) -> torch.Tensor:
    """Scores brought into [0, 1] by a monotone affine map when any lies outside it.

    torchmetrics (under anomalib's metrics) treats scores outside [0, 1] as logits and pushes them through a
    sigmoid, which rounds everything above about 17 (float32) or 37 (float64) to exactly 1.0: ranks, z-scores or
    large distances would tie. A rank metric only needs the order, which the affine map keeps.
    """
    finite = preds[torch.isfinite(preds)]
    if finite.numel() == 0 or (finite.min() >= 0 and finite.max() <= 1 and not torch.isinf(preds).any()):
        return preds
    lo, hi = finite.min(), finite.max()
    # finite scores into [0.25, 0.75], so that an infinite one stays strictly at its end (+inf above every
    # finite score, -inf below), as the sigmoid put it
    span = hi - lo if hi > lo else torch.ones_like(hi)
    return (0.25 + 0.5 * (preds - lo) / span).clamp(0.0, 1.0)


def _check_both_classes(labels: torch.Tensor, what: str) -> bool:
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        logger.warning("%s: needs both good and defective samples; returning NaN", what)
        return False
    return True


def image_auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Image-level AUROC with anomalib's ``AUROC``.

    Args:
        scores: (N,) anomaly scores, higher is more anomalous (any real range).
        labels: (N,) 0 good / 1 defective.

    Returns:
        AUROC in [0, 1], or NaN when one class is missing.
    """
    from anomalib.metrics import AUROC

    preds, target = _unit_range(_as_tensor(scores, torch.float64)), _as_tensor(labels, torch.long)
    if not _check_both_classes(target, "image AUROC"):
        return math.nan
    metric = AUROC(fields=["pred_score", "gt_label"])
    metric.update(cast("Batch[Any]", _Batch(pred_score=preds, gt_label=target)))
    return float(metric.compute())


def resize_for_pixel_metrics(
    anomaly_map: np.ndarray, defect_mask: np.ndarray, *, pixel_size: int = PIXEL_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a map and its mask to the size used for pixel metrics.

    Args:
        anomaly_map: (h, w) float anomaly map of any size (it is resized to the mask's aspect first).
        defect_mask: (H, W) bool ground truth at image size.
        pixel_size: the shorter side of the result.

    Returns:
        (map (H', W') float32, mask (H', W') bool) with min(H', W') == pixel_size.
    """
    height, width = defect_mask.shape
    scale = pixel_size / min(height, width)
    size_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
    amap: np.ndarray = np.asarray(anomaly_map, dtype=np.float32)
    shrink = amap.shape[0] > size_wh[1] or amap.shape[1] > size_wh[0]
    amap = cv2.resize(amap, size_wh, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    mask = cv2.resize(defect_mask.astype(np.uint8), size_wh, interpolation=cv2.INTER_NEAREST) > 0
    return amap, mask


def pixel_auroc(anomaly_maps: Sequence[np.ndarray], defect_masks: Sequence[np.ndarray]) -> float:
    """Pixel-level AUROC with anomalib's ``AUROC`` over all pixels of all images.

    Args:
        anomaly_maps: per image (H, W) float maps (sizes may differ between images).
        defect_masks: per image (H, W) bool masks of the same sizes as the maps.

    Returns:
        AUROC in [0, 1], or NaN when no pixel (or every pixel) is defective.
    """
    from anomalib.metrics import AUROC

    preds = _unit_range(torch.cat([_as_tensor(m, torch.float32) for m in anomaly_maps]))
    target = torch.cat([_as_tensor(m, torch.uint8) for m in defect_masks]).long()
    if not _check_both_classes(target, "pixel AUROC"):
        return math.nan
    metric = AUROC(fields=["anomaly_map", "gt_mask"])
    metric.update(cast("Batch[Any]", _Batch(anomaly_map=preds, gt_mask=target)))
    return float(metric.compute())


def aupro(
    anomaly_maps: Sequence[np.ndarray],
    defect_masks: Sequence[np.ndarray],
    *,
    fpr_limit: float = AUPRO_FPR_LIMIT,
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1].

    anomalib's ``AUPRO`` stacks its inputs into one (B, H, W) tensor, which fails for categories
    whose images differ in size (MTD). So regions are labelled per image with anomalib's own
    ``connected_components_cpu``, made unique across images, flattened, and handed to
    ``AUPRO.compute_pro``; the area is taken as in ``AUPRO.compute``. For same-sized images this
    equals ``AUPRO.compute`` (the tests check it).

    Args:
        anomaly_maps: per image (H, W) float maps.
        defect_masks: per image (H, W) bool masks, same sizes as the maps.
        fpr_limit: upper limit of the false-positive rate.

    Returns:
        AUPRO in [0, 1], or NaN when no image has a defect region.
    """
    from anomalib.metrics import AUPRO
    from anomalib.utils.cv.connected_components import connected_components_cpu
    from torchmetrics.utilities.compute import auc

    labels: list[torch.Tensor] = []
    offset = 0
    for mask in defect_masks:
        cca = connected_components_cpu(torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None])
        cca = cca.long().flatten()
        n_regions = int(cca.max())
        labels.append(torch.where(cca > 0, cca + offset, cca))
        offset += n_regions
    if offset == 0:
        logger.warning("AUPRO: no defect region in the masks; returning NaN")
        return math.nan
    preds = _unit_range(torch.cat([_as_tensor(m, torch.float32) for m in anomaly_maps]))
    metric = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=fpr_limit)
    fpr, pro = metric.compute_pro(cca=torch.cat(labels), preds=preds)
    # float32 sums can land a hair above 1 for a perfect map; clip to the metric's range.
    return min(1.0, float(auc(fpr, pro, reorder=True) / fpr[-1]))


def f1_at(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> float:
    """F1 of "score >= threshold means defective" with anomalib's ``F1Score``.

    Args:
        scores: (N,) anomaly scores (any real range).
        labels: (N,) 0 good / 1 defective.
        threshold: the decision threshold on the same scale as ``scores``.
    """
    from anomalib.metrics import F1Score

    # Decide here and hand 0/1 to the metric: torchmetrics would push raw distances through a
    # sigmoid before comparing them with its own threshold.
    decided = (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.float32)
    metric = F1Score(fields=["pred_score", "gt_label"], threshold=0.5)
    batch = _Batch(pred_score=_as_tensor(decided, torch.float32), gt_label=_as_tensor(labels, torch.long))
    metric.update(cast("Batch[Any]", batch))
    return float(metric.compute())


def best_f1(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[float, float]:
    """The best F1 over all thresholds (anomalib's ``F1Max``), for reference.

    Returns:
        (best F1, the threshold that reaches it, on the scale of ``scores``).
    """
    from anomalib.metrics import F1Max

    raw = np.asarray(scores, dtype=np.float64)
    lo, hi = float(raw.min()), float(raw.max())
    span = hi - lo if hi > lo else 1.0
    # F1Max wants probabilities; min-max scaling to [0, 1] keeps the order and maps back exactly.
    metric = F1Max(fields=["pred_score", "gt_label"])
    scaled = _as_tensor((raw - lo) / span, torch.float64)
    metric.update(cast("Batch[Any]", _Batch(pred_score=scaled, gt_label=_as_tensor(labels, torch.long))))
    value = float(metric.compute())
    return value, lo + float(metric.threshold) * span


# ----------------------------------------------------------------------------------------- evaluate


@runtime_checkable
class Detector(Protocol):
    """What ``evaluate`` needs from a detector (``models.detectors.patch_knn.PatchKNN`` has it).

    ``fit`` takes a list of (H, W, 3) uint8 RGB images; ``predict`` takes a (1, H, W, 3) uint8 RGB
    batch and returns an object with ``pred_score`` (B,) and ``anomaly_map`` (B, H, W) at the input
    size; ``train_scores`` are the leave-one-out scores of the training images after ``fit``.
    """

    def fit(self, images_rgb: Any) -> Any: ...

    def predict(self, images_rgb: Any) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """The outcome of ``evaluate``; ``to_dict()`` is what the CLI and the benchmark write as JSON."""

    category: str
    shots: int | None              # asked-for number of training images (None = all)
    n_train: int                   # training images actually used
    n_test: int
    seed: int
    image_auroc: float
    pixel_auroc: float             # on maps resized to `pixel_size` on the shorter side
    aupro: float                   # FPR <= 0.3, normalised
    f1: float                      # at `threshold`, calibrated on good training images only
    f1_fail: float                 # at the calibrated FAIL threshold (REVIEW counted as PASS)
    threshold: float               # calibrated "not PASS" threshold (the REVIEW one): score >= it
    thresholds: dict[str, Any]     # everything the calibration returned (review, fail, rule, ...)
    best_f1: float                 # over all thresholds, for reference (uses test labels)
    best_f1_threshold: float
    ms_per_image: float            # wall time of predict() per test image, model + post-processing
    fit_s: float                   # wall time of fit()
    per_defect_auroc: dict[str, float]   # image AUROC of each defect type against all good images
    pixel_size: int
    config: dict[str, Any] = field(default_factory=dict)   # the detector's settings, as it reports them
    scores: tuple[float, ...] = ()         # per test image, in the order of the category's test list
    # rates at the calibrated review/fail thresholds (``operating_point``) and the conformal outlook of
    # the good-flag and good-fail rates from the training scores alone (``models.calibration.good_flag_outlook``)
    operating_point: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN stays NaN; ``json.dumps`` writes it as ``NaN``)."""
        out = asdict(self)
        out["scores"] = list(self.scores)
        return out


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _detector_config(detector: Any) -> dict[str, Any]:
    config = getattr(detector, "config", None)
    if config is None:
        return {"detector": type(detector).__name__}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    try:
        return asdict(config)
    except TypeError:
        return {"config": repr(config)}


def _calibrated_threshold(detector: Any) -> tuple[float, dict[str, Any]]:
    """The "not PASS" threshold from the detector's leave-one-out training scores."""
    from models.calibration import calibrate

    train_scores = getattr(detector, "train_scores", None)
    if train_scores is None:
        msg = (
            f"{type(detector).__name__} has no train_scores after fit(); evaluate needs the "
            "leave-one-out scores of the good training images to calibrate a threshold"
        )
        raise RuntimeError(msg)
    train_maps = getattr(detector, "train_maps", None) or None
    if _to_numpy(train_scores).size < 2:     # e.g. the peer fitted on one image: no leave-one-out scores
        return math.nan, {"rule": f"not calibrated: {_to_numpy(train_scores).size} good score(s), 2 needed"}
    thresholds = calibrate(_to_numpy(train_scores), good_maps=train_maps)
    info = _thresholds_dict(thresholds)
    # REVIEW already stops the part, so the decision "defective" starts at the review threshold.
    return float(thresholds.review), info


def _thresholds_dict(thresholds: Any) -> dict[str, Any]:
    if hasattr(thresholds, "to_dict"):
        raw = thresholds.to_dict()
    else:
        try:
            raw = asdict(thresholds)
        except TypeError:
            raw = {"repr": repr(thresholds)}
    return {k: (float(v) if isinstance(v, np.floating | float) else v) for k, v in raw.items()}


def evaluate(
    detector: Detector | Callable[[], Detector],
    category: Category,
    *,
    shots: int | None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    pixel_size: int = PIXEL_SIZE,
    test_items: Sequence[TestItem] | None = None,
) -> EvalReport:
    """Fit a detector on good training images and score the test set.

    Args:
        detector: an unfitted detector, or a factory returning one (called once).
        category: from ``load_category``.
        shots: number of training images, a seeded random choice; None uses all of them.
        seed: seed of the choice of training images.
        progress: called as ``progress(done, total, message)`` after fitting and after each test
            image (total = 1 + number of test images).
        pixel_size: shorter side of maps and masks for the pixel metrics.
        test_items: score only these (e.g. a subset for a quick run); default all of the category's.

    Returns:
        The report; see ``EvalReport``.
    """
    # A class has `fit` and `predict` too, so check for a class before the protocol.
    is_instance = isinstance(detector, Detector) and not isinstance(detector, type)
    model: Detector = detector if is_instance else detector()  # type: ignore[operator,assignment]
    items = list(category.test if test_items is None else test_items)
    if not items:
        msg = f"{category.root}: no test images to evaluate"
        raise ValueError(msg)
    train_paths = select_shots(category.train_good, shots, seed=seed)
    total = 1 + len(items)

    start = time.perf_counter()
    model.fit([load_image_rgb(p) for p in train_paths])
    fit_s = time.perf_counter() - start
    threshold, thresholds = _calibrated_threshold(model)
    if progress is not None:
        progress(1, total, f"fitted on {len(train_paths)} good images")

    scores: list[float] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    predict_s = 0.0
    for i, item in enumerate(items):
        image = load_image_rgb(item.path)
        start = time.perf_counter()
        detection = model.predict(image[None])
        predict_s += time.perf_counter() - start
        scores.append(float(_to_numpy(detection.pred_score).reshape(-1)[0]))
        raw_map = detection.anomaly_map
        amap = _to_numpy(raw_map[0] if isinstance(raw_map, list | tuple) else raw_map)
        amap = amap.reshape(-1, *amap.shape[-2:])[0]
        if item.mask_path is not None:
            mask = load_mask(item.mask_path, image.shape[:2])
        else:
            mask = np.zeros(image.shape[:2], dtype=bool)
        small_map, small_mask = resize_for_pixel_metrics(amap, mask, pixel_size=pixel_size)
        maps.append(small_map)
        masks.append(small_mask)
        if progress is not None:
            progress(2 + i, total, item.path.name)

    labels = np.array([t.label for t in items])
    score_arr = np.array(scores)
    per_defect: dict[str, float] = {}
    good = labels == 0
    for defect_type in sorted({t.defect_type for t in items if t.label == 1}):
        chosen = good | np.array([t.defect_type == defect_type for t in items])
        per_defect[defect_type] = image_auroc(score_arr[chosen], labels[chosen])
    best, best_threshold = best_f1(score_arr, labels)
    from models.calibration import operating_point

    point: dict[str, Any] = {}
    if "fail" in thresholds:
        review, fail = float(thresholds["review"]), float(thresholds["fail"])
        point = operating_point(score_arr, labels, [t.defect_type for t in items], review=review, fail=fail)
        point["expected_good_flag"] = _outlook(model, review)
        point["expected_good_fail"] = _outlook(model, fail)
    return EvalReport(
        category=category.name,
        shots=shots,
        n_train=len(train_paths),
        n_test=len(items),
        seed=seed,
        image_auroc=image_auroc(score_arr, labels),
        pixel_auroc=pixel_auroc(maps, masks),
        aupro=aupro(maps, masks),
        f1=f1_at(score_arr, labels, threshold) if "fail" in thresholds else math.nan,
        f1_fail=f1_at(score_arr, labels, float(thresholds["fail"])) if "fail" in thresholds else math.nan,
        threshold=threshold,
        thresholds=thresholds,
        best_f1=best,
        best_f1_threshold=best_threshold,
        ms_per_image=1000.0 * predict_s / len(items),
        fit_s=fit_s,
        per_defect_auroc=per_defect,
        pixel_size=pixel_size,
        config=_detector_config(model),
        scores=tuple(scores),
        operating_point=point,
    )


def _outlook(detector: Any, threshold: float) -> dict[str, Any]:
    """``good_flag_outlook`` of a threshold from the fitted detector's leave-one-out training scores."""
    from models.calibration import good_flag_outlook

    return good_flag_outlook(_to_numpy(detector.train_scores), threshold).to_dict()
