"""Few-shot defect typing: which kind of defect a region is, from a few labelled examples.

A region's embedding joins two poolings of the detector's L2-normalised DINOv2 patch features inside
the region: their mean, each patch weighted by how much of it the region covers times its anomaly
score (the most anomalous patches say the most about the defect), and their element-wise maximum
(what the region holds at all, however small a share of it), each L2-normalised, then the whole.
With the detector's good bank (``residual``, the default), the same two poolings of each patch minus
its nearest good patch are joined too: what differs there, not what the part looks like there.
The classifier keeps every labelled embedding (no training loop: a label added in review is used by
the next call) and types a region by its nearest labelled examples (mean of the ``k`` nearest per
type) in cosine distance, after centring all embeddings on the mean of the labelled ones (what the
defects of this part share says nothing about their kind). A region farther from its type's
examples than they are from each other (each example's leave-one-out distance to the rest of its
type, the largest, times ``reject_factor``) is ``UNKNOWN``: a new kind of defect is a signal, not noise.
With ``colour_weight`` (the default), the region's colour and shape statistics against a ring around it
(``region_colour``: what a burn or a colour spot is, which block-8 features see only faintly) ride along
at the end of the embedding; the classifier z-scores them on the labelled examples and joins them with
that weight. With ``spread_alpha`` (the default), the labels are spread (label spreading) over a graph of the
labelled examples, the unlabelled regions seen before (``add_unlabelled``) and the regions typed: a type's
cluster is seen through the regions nobody labelled. With ``crop_side`` (the default, 224 px), the region's
square crop of the frame is passed through the same backbone once more (``crop_embedder``,
``region_crop_descriptor``): a defect that covers 1-3 patches at the frame's resolution covers 4-12 across
its crop, so the crop's two poolings inside the region see its shape; they join the feature part (each half
L2-normalised, then the whole).
Only a frame's ``crop_regions`` largest regions are cropped (cost); the others' frame pooling stands in.
With ``scope`` "frame" (the default), a frame's regions are described together (``frame_weights``) and
share one embedding and one type; "region" describes each on its own.

Example:
    >>> detection = detector.predict(frame_rgb, with_features=True)
    >>> weights = region_weights(detection.anomaly_map[0], box=(x, y, w, h), pixel_threshold=0.3)
    >>> emb = region_embedding(detection.patch_features[0], weights, shorter_side=448)
    >>> classifier = DefectTypeClassifier()
    >>> classifier.add(emb, "scratch")
    >>> classifier.predict(emb)
    TypePrediction(defect_class='scratch', confidence=0.99995..., distance=0.0)
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import cv2
import numpy as np

from models.preprocess import frame_to_grid
from models.type_crops import (
    CROP_MARGIN,
    CROP_MIN_SHARE,
    MAX_CROP_SIDE,
    MIN_CROP_SIDE,
    _unit,
    crop_embedder,
    crop_weights,
    region_crop_box,
    region_crop_descriptor,
)

__all__ = [
    "CROP_MARGIN",
    "CROP_MIN_SHARE",
    "MAX_CROP_SIDE",
    "MIN_CROP_SIDE",
    "UNKNOWN",
    "DefectTypeClassifier",
    "DefectTypeConfig",
    "TypePrediction",
    "crop_embedder",
    "crop_weights",
    "frame_weights",
    "label_spreading",
    "nearest_good_patches",
    "region_colour",
    "region_crop_box",
    "region_crop_descriptor",
    "region_embedding",
    "region_weights",
]

UNKNOWN: Final = "unknown"  # the predicted type of a region far from every labelled example
COLOUR_DIMS: Final = 10      # length of ``region_colour``: the tail of an embedding made with ``colour``
COLOUR_MIN_EXAMPLES: Final = 4  # ours: fewer labelled examples give no spread to z-score the colour part on


@dataclass(frozen=True, kw_only=True)
class DefectTypeConfig:
    """Options of the few-shot defect typer (region descriptor and classifier), with where each default comes from."""

    # The defaults below were chosen on cached features of the three multi-type dev categories, 5
    # labelled images per type, 20 seeded draws (benchmarks/type_variants.py --grid final, see
    # benchmarks/README.md "Defect typing"): together +0.07 mean accuracy, every category better.
    # ours: also describe each region patch minus its nearest patch of the detector's good bank
    # (``region_embedding(nearest_good=...)``): what differs, not what the part looks like there
    residual: bool = True
    k: int = 2  # ours: mean distance to the 2 nearest labelled examples of a type (1 and 3 measured lower)
    # ours: subtract the labelled examples' mean before the cosine (what every defect of the part
    # shares says nothing about its kind; it also makes the confidence meaningful)
    centre: bool = True
    temperature: float = 0.05  # ours: softmax temperature over cosine distances for the confidence
    # ours, conformal per type: "unknown" when the distance to the predicted type is above reject_factor
    # times the reject_quantile of that type's leave-one-out distances (each labelled example's distance
    # to the rest of its type). 1.25 x the largest: a type never labelled comes out unknown 2-8 % of
    # the time, labelled types 0-4 % (1.0: 10-18 % against 5-10 %, at -0.02 accuracy)
    reject_factor: float = 1.25
    reject_quantile: float = 1.0  # ours: 1.0 = the largest leave-one-out distance (conformal, n <= 5)
    reject_distance: float | None = None  # a fixed cosine distance instead of the rule above
    default_reject_distance: float = 0.5  # ours: for a type with one example while no type has two
    # ours: weight of the region's colour statistics (``region_colour``, z-scored on the labelled examples)
    # joined to the feature part; 0 = features only. 0.2 was best of 0.1-0.8 on transistor and fryum
    # (selection draws 100-119: +0.014 mean; report draws 0-4: +0.027; benchmarks/README.md, typing
    # second pass); magnetic tile (grey) was measured after the choice, in the product
    colour_weight: float = 0.2
    # ours: the region's crop (``region_crop_box``) re-embedded at this side, its patches inside the region
    # pooled and joined to the feature part; 0 = off (no second backbone pass). 224 with block 8, the
    # detector's block, was best of blocks 8/10/12 and 8+12 (transistor); on all three dev categories,
    # 5 labels per type, beside the colour part: +0.021 mean top-1 on selection draws 100-119, +0.014 on
    # report draws 0-4, no category lower (benchmarks/README.md, typing fifth pass). Costs one backbone
    # pass at this side per REVIEW/FAIL frame (its ``crop_regions`` largest regions in one batch).
    crop_side: int = 224
    # ours: at most this many regions of a frame (the largest) get the crop pass; the others' crop part is
    # their own frame pooling (``region_embedding(crop="frame")``), so every region keeps one layout. Bounds
    # a FAIL frame's cost on the CPU: with every region cropped, a fryum with 14 regions took 1.6-2.5 s
    # against 1.0-1.2 s without the crop pass (2 cores), and a PLC's deadline would see it; one crop costs
    # 0.13x the frame's backbone pass. The typing benchmark types each image's largest region: the gain
    # measured is that of the largest, which is always cropped
    crop_regions: int = 1
    # ours: "frame": a frame's regions described together (``frame_weights``; the largest's crop), every region
    # takes that embedding and type (a defect falls into 4-5.5 regions per image on the dev categories; a label
    # classifies every region of an inspection); "region": each on its own. With labels on every region, draws
    # 0-19: the largest 0.638 -> 0.664 mean top-1, the other regions 0.430 -> 0.636 (benchmarks/README.md,
    # typing sixth pass). A frame with two kinds of defect gets one type; a reviewer can set a region's by hand
    scope: str = "frame"
    # ours: label spreading (Zhou et al. 2004) over the labelled examples, the unlabelled regions the typer has
    # seen (``add_unlabelled``: the recipe's earlier regions, at most ``pool_size``) and the regions typed in the
    # call: a k-NN graph (``spread_k``) of cosine similarities in the classifier's space, clipped at 0 and cubed;
    # the class is the spread score's argmax (the ``unknown`` rule stays the k-NN's). 0 = the k-NN alone. Chosen
    # among alpha 0.2-0.99 and k 5-20 on selection draws 100-119 of the three dev categories (mean top-1 0.697 ->
    # 0.721, every category up); report draws 0-4: 0.660 -> 0.691; with 40 good parts' embeddings in every pool
    # (false alarms) 0.697 -> 0.703 and 0.660 -> 0.688 (benchmarks/README.md, typing seventh pass)
    spread_alpha: float = 0.8
    spread_k: int = 5
    # ours: the newest unlabelled embeddings kept. A typed frame pays the graph: 0.8 / 6.5 / 11.6 / 37 ms with 0 /
    # 100 / 200 / 500 of them (40 labelled, 2314-long embeddings, CPU 2 threads; against about 770 ms for the frame's
    # 448-px backbone pass). The dev categories' pools were their 20-60 typed images: larger ones are not measured
    pool_size: int = 200

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            msg = f"DefectTypeConfig.k must be an integer >= 1, got {self.k!r}"
            raise ValueError(msg)
        for name in ("temperature", "reject_factor", "default_reject_distance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                msg = f"DefectTypeConfig.{name} must be a finite number > 0, got {value!r}"
                raise ValueError(msg)
        if not isinstance(self.crop_side, int) or isinstance(self.crop_side, bool) or not (
                self.crop_side == 0 or MIN_CROP_SIDE <= self.crop_side <= MAX_CROP_SIDE):
            msg = (f"DefectTypeConfig.crop_side must be 0 (off) or a whole number of pixels from {MIN_CROP_SIDE} "
                   f"to {MAX_CROP_SIDE}, got {self.crop_side!r}")
            raise ValueError(msg)
        if not isinstance(self.crop_regions, int) or isinstance(self.crop_regions, bool) or self.crop_regions < 1:
            msg = f"DefectTypeConfig.crop_regions must be a whole number >= 1, got {self.crop_regions!r}"
            raise ValueError(msg)
        if not (math.isfinite(self.spread_alpha) and 0.0 <= self.spread_alpha < 1.0):
            msg = f"DefectTypeConfig.spread_alpha must be in [0, 1) (0 = off), got {self.spread_alpha!r}"
            raise ValueError(msg)
        for name in ("spread_k", "pool_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"DefectTypeConfig.{name} must be a whole number >= 1, got {value!r}"
                raise ValueError(msg)
        if self.scope not in ("frame", "region"):
            msg = f"DefectTypeConfig.scope must be 'frame' or 'region', got {self.scope!r}"
            raise ValueError(msg)
        if not (math.isfinite(self.colour_weight) and self.colour_weight >= 0):
            msg = f"DefectTypeConfig.colour_weight must be a finite number >= 0, got {self.colour_weight!r}"
            raise ValueError(msg)
        if not 0.0 < self.reject_quantile <= 1.0:
            msg = f"DefectTypeConfig.reject_quantile must be in (0, 1], got {self.reject_quantile!r}"
            raise ValueError(msg)
        if self.reject_distance is not None and not (math.isfinite(self.reject_distance)
                                                     and self.reject_distance > 0):
            msg = f"DefectTypeConfig.reject_distance must be None or a number > 0, got {self.reject_distance!r}"
            raise ValueError(msg)


@dataclass(frozen=True, kw_only=True)
class TypePrediction:
    """The type of one region."""

    defect_class: str  # a labelled class, or UNKNOWN
    confidence: float  # [0, 1]: the class's share of the softmax over classes (one: and unknown); 0 for UNKNOWN
    # cosine distance to the nearest example of the predicted type (0 = identical; centred on the labelled
    # examples' mean when the classifier centres); inf with none labelled
    distance: float


def region_weights(
    anomaly_map: np.ndarray, *, box: tuple[int, int, int, int], pixel_threshold: float
) -> np.ndarray:
    """Per-pixel weights of one region: its anomaly score where at or above the threshold in its box.

    Args:
        anomaly_map: (H, W) float32 anomaly scores at the frame's (or ROI's) full size.
        box: (x, y, width, height) of the region in the map's pixels.
        pixel_threshold: the pixel threshold that made the region.

    Returns:
        (H, W) float32, 0 outside the region. When no pixel of the box reaches the threshold (a
        region given by hand), the box's own scores are used.
    """
    out = np.zeros(anomaly_map.shape, dtype=np.float32)
    window, values = _box_weights(anomaly_map, box, pixel_threshold)
    out[window] = values
    return out


def frame_weights(
    anomaly_map: np.ndarray, *, boxes: Sequence[tuple[int, int, int, int]], pixel_threshold: float
) -> np.ndarray:
    """Per-pixel weights of a frame's regions together (``DefectTypeConfig.scope`` "frame").

    Args:
        anomaly_map: (H, W) float32 anomaly scores at the frame's (or ROI's) full size.
        boxes: (x, y, width, height) of each region in the map's pixels (at least one).
        pixel_threshold: the pixel threshold that made the regions.

    Returns:
        (H, W) float32: the largest of the regions' ``region_weights`` at each pixel.
    """
    if not boxes:
        msg = "frame_weights needs at least one region box"
        raise ValueError(msg)
    out = np.zeros(anomaly_map.shape, dtype=np.float32)
    for box in boxes:          # each box's window only: no frame-sized array per region
        window, values = _box_weights(anomaly_map, box, pixel_threshold)
        np.maximum(out[window], values, out=out[window])
    return out


def _box_weights(
    anomaly_map: np.ndarray, box: tuple[int, int, int, int], pixel_threshold: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """``region_weights`` inside the box only: (the box's window of the map, its weights there)."""
    x, y, w, h = box
    height, width = anomaly_map.shape
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + max(w, 1)), min(height, y + max(h, 1))
    if x1 <= x0 or y1 <= y0:
        msg = f"region box {box} lies outside the {width}x{height} anomaly map"
        raise ValueError(msg)
    inside = anomaly_map[y0:y1, x0:x1].astype(np.float32)
    above = inside >= pixel_threshold
    values = np.where(above, inside, 0.0) if above.any() else np.maximum(inside, 1e-6)
    return (slice(y0, y1), slice(x0, x1)), values.astype(np.float32, copy=False)


def region_embedding(
    patch_features: np.ndarray,
    weights: np.ndarray,
    *,
    shorter_side: int,
    patch_size: int = 14,
    nearest_good: Callable[[np.ndarray], np.ndarray] | None = None,
    colour: np.ndarray | None = None,
    crop: np.ndarray | Literal["frame"] | None = None,
) -> np.ndarray:
    """The region's embedding: its patches' weighted mean and maximum, each L2-normalised, joined.

    Args:
        patch_features: (h, w, D) float32 L2-normalised patch features of the frame
            (``Detection.patch_features``).
        weights: (H, W) float32 per-pixel weights at the frame's full size (``region_weights``).
        shorter_side: the detector's ``shorter_side`` (how the frame was resized for the model).
        patch_size: the backbone's patch size.
        nearest_good: maps the region's (m, D) patch features to their nearest good patches (m, D)
            (the detector's memory bank); when given, the same two poolings of each patch minus its
            nearest good patch (what differs, not what the part looks like there) are joined too.
        colour: the region's ``region_colour`` (``COLOUR_DIMS``,), appended as it is after the unit
            feature part (the classifier scales it; ``DefectTypeConfig.colour_weight``).
        crop: the region's ``region_crop_descriptor`` (2 D,) unit vector, joined to the frame's part
            (each unit, then the whole L2-normalised) before ``colour``; ``"frame"``: the region was not
            cropped (``DefectTypeConfig.crop_regions``) and its frame patches' two poolings stand in.

    Returns:
        (2 D,) float32 unit vector, (4 D,) with ``nearest_good``; 2 D more with ``crop``; ``COLOUR_DIMS``
        more with ``colour`` (after the unit feature part).
    """
    h, w, _ = patch_features.shape
    grid = frame_to_grid(weights, (h, w), shorter_side=shorter_side, patch_size=patch_size)
    if not np.any(grid > 0):
        # the region lies in the strip that the centre crop cut off: use its nearest patch
        ys, xs = np.nonzero(weights)
        cy, cx = (float(ys.mean()), float(xs.mean())) if ys.size else (0.0, 0.0)
        gy = min(h - 1, int(cy / weights.shape[0] * h))
        gx = min(w - 1, int(cx / weights.shape[1] * w))
        grid = np.zeros((h, w), np.float32)
        grid[gy, gx] = 1.0
    inside = grid > 0
    patches = patch_features[inside].astype(np.float32, copy=False)        # (m, D)
    share = grid[inside]
    parts = [_unit(share @ patches), _unit(patches.max(axis=0))]
    if nearest_good is not None:
        residual = patches - np.asarray(nearest_good(patches), dtype=np.float32)
        parts += [_unit_or_zero(share @ residual), _unit_or_zero(residual.max(axis=0))]
    features = _unit(np.concatenate(parts))
    if isinstance(crop, str):
        if crop != "frame":
            msg = f"crop must be a descriptor, 'frame' or None, got {crop!r}"
            raise ValueError(msg)
        features = _unit(np.concatenate([features, _unit(np.concatenate(parts[:2]))]))
    elif crop is not None:
        extra = np.asarray(crop, dtype=np.float32).reshape(-1)
        if extra.shape != (2 * patches.shape[1],):
            msg = (f"a region's crop descriptor must have {2 * patches.shape[1]} numbers (two poolings of "
                   f"{patches.shape[1]}-long features), got {extra.shape[0]}")
            raise ValueError(msg)
        features = _unit(np.concatenate([features, _unit(extra)]))
    if colour is None:
        return features
    tail = np.asarray(colour, dtype=np.float32).reshape(-1)
    if tail.shape != (COLOUR_DIMS,) or not np.all(np.isfinite(tail)):
        msg = f"region colour statistics must be {COLOUR_DIMS} finite numbers, got shape {tail.shape}"
        raise ValueError(msg)
    return np.concatenate([features, tail])


def region_colour(frame_rgb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Colour and shape statistics of a region against its surroundings (a ring around it).

    Args:
        frame_rgb: (H, W, 3) uint8 RGB frame.
        weights: (H, W) float32 region weights (``region_weights``); > 0 inside the region.

    Returns:
        (10,) float32: CIELAB mean of the region minus that of the ring (L, a, b; /255), the region's
        and the ring's L standard deviation (/255), the region's own mean L, a, b (/255), log of the
        region's area as a share of the frame, and log elongation (the ratio of its principal axes).
    """
    mask = weights > 0
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        msg = "region_colour: the region has no pixel"
        raise ValueError(msg)
    height, width = mask.shape
    span = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1
    pad = max(3, span // 4)                              # ours: a ring a quarter of the region's size wide
    y0, y1 = max(0, int(ys.min()) - pad), min(height, int(ys.max()) + pad + 1)
    x0, x1 = max(0, int(xs.min()) - pad), min(width, int(xs.max()) + pad + 1)
    inside = mask[y0:y1, x0:x1].astype(np.uint8)
    # the ring: pixels within `pad` of the region (a distance transform: linear time, whatever the pad)
    ring = cv2.distanceTransform((inside == 0).astype(np.uint8), cv2.DIST_L2, 3) <= pad
    ring &= inside == 0
    lab = cv2.cvtColor(np.ascontiguousarray(frame_rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
    region_px = lab[inside > 0]
    ring_px = lab[ring] if ring.any() else region_px
    cov = np.cov(np.stack([xs.astype(np.float64), ys.astype(np.float64)])) if ys.size > 1 else np.eye(2)
    axes = np.sort(np.linalg.eigvalsh(cov + 1e-6 * np.eye(2)))
    return np.concatenate([
        region_px.mean(axis=0) - ring_px.mean(axis=0),
        [region_px[:, 0].std(), ring_px[:, 0].std()],
        region_px.mean(axis=0),
        [math.log(ys.size / float(height * width)), 0.5 * math.log(axes[1] / axes[0])],
    ]).astype(np.float32)


def nearest_good_patches(memory_bank: Any, *, chunk: int = 65536) -> Callable[[np.ndarray], np.ndarray]:
    """A lookup of the nearest good patch (cosine) in a detector's memory bank, for ``region_embedding``.

    Args:
        memory_bank: (N, D) L2-normalised good patch features (``PatchKNN.memory_bank``: a torch
            tensor on the detector's device, or a numpy array).
        chunk: bank rows compared at once (bounds the memory of the (m, chunk) similarity block).

    Returns:
        ``lookup(patches)``: (m, D) float32 unit patch features -> (m, D) float32 nearest bank rows.
    """
    import torch

    bank = memory_bank if isinstance(memory_bank, torch.Tensor) else torch.from_numpy(np.asarray(memory_bank))
    if bank.ndim != 2 or bank.shape[0] == 0:
        msg = f"the good bank must be a non-empty (N, D) array, got shape {tuple(bank.shape)}"
        raise ValueError(msg)

    def lookup(patches: np.ndarray) -> np.ndarray:
        if patches.shape[1] != bank.shape[1]:
            msg = f"patch features of length {patches.shape[1]} do not match the good bank's {bank.shape[1]}"
            raise ValueError(msg)
        with torch.inference_mode():
            query = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)).to(bank.device)
            best = torch.full((len(query),), -math.inf, device=bank.device)
            index = torch.zeros(len(query), dtype=torch.int64, device=bank.device)
            for start in range(0, bank.shape[0], chunk):
                sims = query @ bank[start : start + chunk].float().T
                value, where = sims.max(dim=1)
                better = value > best
                best = torch.where(better, value, best)
                index = torch.where(better, where + start, index)
            out: np.ndarray = bank[index].float().cpu().numpy()
        return out

    return lookup


def label_spreading(labelled: np.ndarray, labels: np.ndarray, unlabelled: np.ndarray, n_classes: int, *,
                    alpha: float, k: int) -> np.ndarray:
    """(U, C) class scores of the ``unlabelled`` rows by label spreading (Zhou et al. 2004): F = (I - alpha S)^-1 Y
    over a symmetric ``k``-nearest-neighbour graph of all rows (unit vectors; cosine similarity clipped at 0 and
    cubed, as Iscen et al. 2019), S its degree-normalised weights, Y the labels' one-hot rows."""
    x = np.concatenate([labelled, unlabelled]).astype(np.float32)
    sim = np.clip((x @ x.T).astype(np.float64), 0.0, None) ** 3
    np.fill_diagonal(sim, 0.0)
    k = max(1, min(k, len(x) - 1))
    keep = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    rows = np.arange(len(x))[:, None]
    w = np.zeros_like(sim)
    w[rows, keep] = sim[rows, keep]
    w = w + w.T
    degree = w.sum(axis=1)
    degree[degree <= 0] = 1.0
    s = w / np.sqrt(degree[:, None] * degree[None, :])
    y = np.zeros((len(x), n_classes))
    y[np.arange(len(labelled)), labels] = 1.0
    scores: np.ndarray = np.linalg.solve(np.eye(len(x)) - alpha * s, y)[len(labelled):]
    return scores


def _unit_or_zero(vector: np.ndarray) -> np.ndarray:
    """``vector`` L2-normalised; a zero vector (a patch identical to a good one) stays zero."""
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0.0 and math.isfinite(norm) else np.zeros_like(vector)


class DefectTypeClassifier:
    """Nearest labelled examples in cosine distance, with an "unknown" rejection by distance.

    Thread-safe: the inspection worker calls `predict` while a reviewer's label calls `add`.
    """

    def __init__(self, *, config: DefectTypeConfig | None = None) -> None:
        self._config = config if config is not None else DefectTypeConfig()
        self._lock = threading.Lock()
        self._vectors = np.empty((0, 0), dtype=np.float32)
        self._labels: list[str] = []
        self._reject: np.ndarray | None = None  # cached (C,) rejection distances; None = recompute
        self._pool: collections.deque[np.ndarray] = collections.deque(maxlen=self._config.pool_size)

    @property
    def config(self) -> DefectTypeConfig:
        """The classifier's options."""
        return self._config

    @property
    def classes(self) -> tuple[str, ...]:
        """Labelled classes, sorted."""
        with self._lock:
            return tuple(sorted(set(self._labels)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._labels)

    @property
    def can_judge(self) -> bool:
        """Some type has two examples, whose spread says what "near" is (a lone example typed every region as it, at
        100 %; one of each of two types, every region ``unknown``): the station guesses only then."""
        with self._lock:
            return max(collections.Counter(self._labels).values(), default=0) >= 2

    @property
    def embedding_length(self) -> int | None:
        """The length of the labelled embeddings (None before the first)."""
        with self._lock:
            return int(self._vectors.shape[1]) if self._labels else None

    def add(self, embedding: np.ndarray, defect_class: str) -> None:
        """Add one labelled example; the next `predict` uses it.

        Raises:
            ValueError: an empty class name, the reserved name ``unknown``, or an embedding of
                another length than the ones already held.
        """
        self.add_many([embedding], [defect_class])

    def add_many(self, embeddings: Sequence[np.ndarray] | np.ndarray, classes: Iterable[str]) -> None:
        """Add labelled examples in one go (e.g. loaded from the store)."""
        labels = list(classes)
        vectors = [np.asarray(e, dtype=np.float32).reshape(-1) for e in embeddings]
        if len(vectors) != len(labels):
            msg = f"{len(vectors)} embeddings but {len(labels)} classes; give one class per embedding"
            raise ValueError(msg)
        for label in labels:
            if not label.strip() or label == UNKNOWN:
                msg = f"defect class {label!r} cannot be learned: give a non-empty name other than {UNKNOWN!r}"
                raise ValueError(msg)
        if not vectors:
            return
        stacked = np.stack([self._normalised(v) for v in vectors])
        with self._lock:
            if self._labels and stacked.shape[1] != self._vectors.shape[1]:
                msg = (f"embedding of length {stacked.shape[1]} does not match the labelled examples' "
                       f"{self._vectors.shape[1]}; were they made with another backbone?")
                raise ValueError(msg)
            self._vectors = stacked if not self._labels else np.concatenate([self._vectors, stacked])
            self._labels.extend(labels)
            self._reject = None

    def add_unlabelled(self, embeddings: Sequence[np.ndarray] | np.ndarray) -> int:
        """Keep unlabelled region embeddings (the newest ``pool_size``) for label spreading; returns how many were
        taken (those of another length than the labelled examples', or another layout, are not)."""
        taken = 0
        for embedding in embeddings:
            vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
            if not self.accepts(vector):
                continue
            with self._lock:
                if self._labels and len(vector) != self._vectors.shape[1]:
                    continue
                if self._pool and len(self._pool[-1]) != len(vector):
                    self._pool.clear()           # a new descriptor: the old ones cannot join its graph
                self._pool.append(self._normalised(vector))
            taken += 1
        return taken

    def unlabelled(self) -> list[np.ndarray]:
        """A copy of the unlabelled embeddings held, oldest first (as held: the feature part unit)."""
        with self._lock:
            return [v.copy() for v in self._pool]

    @property
    def n_unlabelled(self) -> int:
        """Unlabelled embeddings held for label spreading."""
        with self._lock:
            return len(self._pool)

    def accepts(self, embedding: np.ndarray) -> bool:
        """Whether ``add`` and ``predict`` take this embedding's layout (the colour tail when ``colour_weight``)."""
        try:
            self._normalised(np.asarray(embedding, dtype=np.float32).reshape(-1))
        except ValueError:
            return False
        return True

    def rejection_distances(self) -> dict[str, float]:
        """Per labelled type, the distance beyond which a region typed so is ``unknown`` (see ``DefectTypeConfig``)."""
        with self._lock:
            if not self._labels:
                return {}
            return dict(zip(sorted(set(self._labels)), self._rejection_locked().tolist(), strict=True))

    def predict(self, embedding: np.ndarray) -> TypePrediction:
        """Type one region embedding ((D,) float32; normalised here).

        Returns:
            ``TypePrediction``; ``unknown`` with confidence 0 when no example is labelled yet or the
            nearest one is beyond the rejection distance.
        """
        return self.predict_many(np.asarray(embedding, dtype=np.float32)[None])[0]

    def predict_many(self, embeddings: np.ndarray) -> list[TypePrediction]:
        """Type (N, D) region embeddings."""
        queries = np.stack([self._normalised(e) for e in np.asarray(embeddings, dtype=np.float32)])
        with self._lock:
            if not self._labels:
                return [TypePrediction(defect_class=UNKNOWN, confidence=0.0, distance=math.inf)
                        for _ in queries]
            if queries.shape[1] != self._vectors.shape[1]:
                msg = (f"embedding of length {queries.shape[1]} does not match the labelled examples' "
                       f"{self._vectors.shape[1]}")
                raise ValueError(msg)
            names = sorted(set(self._labels))
            labels = np.asarray([names.index(label) for label in self._labels])
            spreads = self._config.spread_alpha > 0
            pool = [v for v in self._pool if len(v) == queries.shape[1]] if spreads else []
            both = np.concatenate([np.stack(pool), queries]) if pool else queries
            vectors, compared = self._centred(*self._with_colour(self._vectors, both))
            queries = compared[len(pool):]
            reject = self._rejection_locked()                            # (C,) per type
        dists = 1.0 - queries @ vectors.T                                # (N, M) cosine distances
        per_class = np.stack([self._class_distance(dists[:, labels == c]) for c in range(len(names))], axis=1)
        logits = -per_class / self._config.temperature
        if len(names) == 1:   # a softmax over one type is 1: "unknown" at its rejection distance is the alternative
            logits = np.concatenate([logits, np.full_like(logits, -float(reject[0]) / self._config.temperature)], 1)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        alpha = self._config.spread_alpha
        spread = None
        if alpha > 0 and len(names) > 1 and len(compared) > 1:         # something unlabelled besides the query
            spread = label_spreading(vectors, labels, compared, len(names), alpha=alpha,
                                     k=self._config.spread_k)[len(pool):]
        out = []
        for i, (row, prob) in enumerate(zip(per_class, probs, strict=True)):
            best = int(np.argmin(row))
            nearest = float(row[best])
            if nearest > reject[best]:
                out.append(TypePrediction(defect_class=UNKNOWN, confidence=0.0, distance=nearest))
                continue
            if spread is not None and spread[i].max() > 0:
                best = int(np.argmax(spread[i]))
            # the confidence stays the k-NN's softmax, of the class given: low where the spreading overruled it
            out.append(TypePrediction(defect_class=names[best], confidence=float(prob[best]),
                                      distance=float(row[best])))
        return out

    def _normalised(self, embedding: np.ndarray) -> np.ndarray:
        """One embedding as held: unit; with ``colour_weight``, the feature part unit and the colour tail as is.

        Raises:
            ValueError: zero or non-finite features, or (with ``colour_weight``) no colour tail after them.
        """
        if self._config.colour_weight <= 0:
            return _unit(embedding)
        head, tail = embedding[:-COLOUR_DIMS], embedding[-COLOUR_DIMS:]
        norm = float(np.linalg.norm(head)) if len(embedding) > COLOUR_DIMS else 0.0
        if not (abs(norm - 1.0) < 1e-5 and np.all(np.isfinite(tail))):   # float32 rounding of a unit part
            msg = (f"embedding of length {len(embedding)} has no colour statistics after a unit feature part; "
                   "make it with region_embedding(colour=region_colour(...)) or set colour_weight 0")
            raise ValueError(msg)
        return np.concatenate([_unit(head), tail]).astype(np.float32)

    def _with_colour(self, vectors: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Held form -> compared form: the colour tail z-scored on the labelled examples, times
        ``colour_weight / sqrt(COLOUR_DIMS)``, joined to the feature part, the whole unit again.

        Below ``COLOUR_MIN_EXAMPLES`` labelled examples the tail is dropped (no spread to scale it by).
        """
        weight = self._config.colour_weight
        if weight <= 0:
            return vectors, queries
        head_v, head_q = vectors[:, :-COLOUR_DIMS], queries[:, :-COLOUR_DIMS]
        if len(vectors) < COLOUR_MIN_EXAMPLES:
            return head_v, head_q
        tail_v = vectors[:, -COLOUR_DIMS:].astype(np.float64)
        mean, spread = tail_v.mean(axis=0), tail_v.std(axis=0) + 1e-3
        scale = weight / math.sqrt(COLOUR_DIMS)

        def joined(head: np.ndarray, tail: np.ndarray) -> np.ndarray:
            both = np.concatenate([head, (scale * (tail - mean) / spread).astype(np.float32)], axis=1)
            out: np.ndarray = (both / np.linalg.norm(both, axis=1, keepdims=True)).astype(np.float32)
            return out

        return joined(head_v, tail_v), joined(head_q, queries[:, -COLOUR_DIMS:].astype(np.float64))

    def _centred(self, vectors: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both moved by minus the labelled examples' mean and renormalised (when ``config.centre``).

        Not with one example, all alike, or one type (its examples share the type itself). Called with the lock held.
        """
        if not self._config.centre or len(vectors) < 2 or len(set(self._labels)) < 2:
            return vectors, queries
        mean = vectors.mean(axis=0)
        moved_v, moved_q = vectors - mean, queries - mean
        norms_v = np.linalg.norm(moved_v, axis=1, keepdims=True)
        norms_q = np.linalg.norm(moved_q, axis=1, keepdims=True)
        if not (np.all(norms_v > 1e-6) and np.all(norms_q > 1e-6)):
            return vectors, queries
        return (moved_v / norms_v).astype(np.float32), (moved_q / norms_q).astype(np.float32)

    def _class_distance(self, dists: np.ndarray) -> np.ndarray:
        """(N, m) distances to one class's examples -> (N,) mean of the k nearest."""
        k = min(self._config.k, dists.shape[1])
        nearest: np.ndarray = np.sort(dists, axis=1)[:, :k].mean(axis=1)
        return nearest

    def _rejection_locked(self) -> np.ndarray:
        """(C,) rejection distance of each labelled type, in the order of the sorted class names.

        Conformal per type: each example's leave-one-out distance to the rest of its type (in the
        classifier's own distance: centred when configured, mean of the k nearest), the
        ``reject_quantile`` of them, times ``reject_factor``. A type with a single example takes the
        same quantile over all types' leave-one-out distances, or ``default_reject_distance`` while no
        type has two.
        """
        cfg = self._config
        names = sorted(set(self._labels))
        if cfg.reject_distance is not None:
            return np.full(len(names), cfg.reject_distance)
        if self._reject is None or len(self._reject) != len(names):
            vectors, _ = self._centred(*self._with_colour(self._vectors, self._vectors[:1]))
            labels = np.asarray(self._labels)
            per_type: dict[str, list[float]] = {}
            for name in names:
                members = vectors[labels == name]
                if len(members) < 2:
                    continue
                d = 1.0 - members @ members.T
                others = d[~np.eye(len(members), dtype=bool)].reshape(len(members), -1)   # each to the rest
                per_type[name] = self._class_distance(others).tolist()
            pooled = [v for values in per_type.values() for v in values]
            fallback = (cfg.reject_factor * float(np.quantile(pooled, cfg.reject_quantile)) if pooled
                        else cfg.default_reject_distance)
            self._reject = np.asarray([cfg.reject_factor * float(np.quantile(per_type[n], cfg.reject_quantile))
                                       if n in per_type else fallback for n in names])
        return self._reject
