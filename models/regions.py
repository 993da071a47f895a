"""Defect regions: connected areas of an anomaly map at or above the pixel threshold.

Example:
    >>> regions = find_regions(anomaly_map, pixel_threshold=0.42, min_area_px=20, mm_per_px=0.05, min_peak=0.5)
    >>> regions[0].x, regions[0].width, regions[0].area_mm2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import cv2
import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["Region", "defect_mask", "find_regions", "shown_count"]


@dataclass(frozen=True, kw_only=True)
class Region:
    """One connected defect region, in the anomaly map's (full-frame) pixel coordinates."""

    x: int  # left edge of the bounding box
    y: int  # top edge of the bounding box
    width: int  # bounding box width in pixels
    height: int  # bounding box height in pixels
    area_px: int  # pixels at or above the pixel threshold
    area_mm2: float | None  # area_px * mm_per_px**2 when a scale is known
    max_score: float  # highest anomaly score inside the region
    mean_score: float  # mean anomaly score over the region's pixels


def _check_map(anomaly_map: np.ndarray) -> np.ndarray:
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim != 2 or anomaly_map.size == 0:
        msg = f"anomaly_map must be a non-empty (H, W) array, got shape {anomaly_map.shape}"
        raise ValueError(msg)
    return anomaly_map


def defect_mask(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Pixels at or above the threshold.

    Args:
        anomaly_map: (H, W) float anomaly scores.
        pixel_threshold: per-pixel score from calibration (``Thresholds.pixel``).

    Returns:
        (H, W) bool defect mask.
    """
    return _check_map(anomaly_map) >= pixel_threshold


def find_regions(
    anomaly_map: np.ndarray,
    *,
    pixel_threshold: float,
    min_area_px: int = 0,
    mm_per_px: float | None = None,
    merge_gap_px: int = 0,
    min_peak: float | None = None,
) -> list[Region]:
    """Connected regions (8-connectivity) of ``anomaly_map >= pixel_threshold``.

    Args:
        anomaly_map: (H, W) float anomaly scores at the frame's full size.
        pixel_threshold: per-pixel score from calibration (``Thresholds.pixel``).
        min_area_px: regions with fewer pixels are dropped.
        mm_per_px: frame scale (millimetres per pixel side); None leaves ``area_mm2`` None.
        merge_gap_px: fragments less than this many pixels apart (in steps of 2 px) are one region:
            one defect that the threshold cut into pieces. The box, area and scores still come from the pixels at or
            above the threshold only. 0 = plain connected components.
        min_peak: regions whose highest score is below this are dropped, except the strongest of the frame
            (`shown_count`; ``Thresholds.region_peak``); None keeps every region.

    Returns:
        Regions sorted by ``max_score``, highest first.

    Raises:
        ValueError: a map that is not (H, W), a negative ``min_area_px``, a non-positive scale or a ``min_peak``
            that is not a finite number.
    """
    scores = _check_map(anomaly_map).astype(np.float32, copy=False)
    if min_area_px < 0:
        msg = f"min_area_px must be >= 0, got {min_area_px}"
        raise ValueError(msg)
    if mm_per_px is not None and not mm_per_px > 0:
        msg = f"mm_per_px must be a positive number of millimetres per pixel, got {mm_per_px}"
        raise ValueError(msg)
    if merge_gap_px < 0:
        msg = f"merge_gap_px must be >= 0, got {merge_gap_px}"
        raise ValueError(msg)
    if min_peak is not None and not np.isfinite(min_peak):
        msg = f"min_peak must be a finite score or None, got {min_peak}"
        raise ValueError(msg)
    mask = (scores >= pixel_threshold).astype(np.uint8)
    radius = (merge_gap_px - 1) // 2     # grown by r on each side, fragments up to 2r px apart touch
    if radius > 0 and mask.any():
        # label the mask grown on every side, then keep the labels of the real pixels only
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        grown = cv2.dilate(mask, kernel)
        count, labels = cv2.connectedComponents(grown, connectivity=8, ltype=cv2.CV_32S)
        labels = labels * mask
        stats = _component_stats(labels, count)
    else:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    if count <= 1:
        return []
    flat_labels = cast("npt.NDArray[np.int32]", labels.ravel())   # ltype=CV_32S; cv2's stubs say integer | float
    flat_scores = scores.ravel()
    inside = flat_labels > 0
    sums = np.bincount(flat_labels[inside], weights=flat_scores[inside], minlength=count)
    maxima = np.full(count, -np.inf)
    np.maximum.at(maxima, flat_labels[inside], flat_scores[inside])
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area == 0 or area < min_area_px:
            continue
        regions.append(Region(
            x=x, y=y, width=w, height=h, area_px=area,
            area_mm2=area * mm_per_px**2 if mm_per_px is not None else None,
            max_score=float(maxima[label]),
            mean_score=float(sums[label] / area),
        ))
    regions.sort(key=lambda r: r.max_score, reverse=True)
    return regions[:shown_count([r.max_score for r in regions], min_peak)]


def patch_gap_px(map_shape: tuple[int, ...], model_side: int, *, patch_size: int = 14) -> int:
    """One feature patch's side in pixels of a map of ``map_shape`` scored at ``model_side`` (the model input's
    shorter side): the ``merge_gap_px`` at which `find_regions` joins the fragments of one defect (the map's
    resolution is one patch, so fragments closer than that come from neighbouring patches of one defect)."""
    return round(patch_size * min(map_shape[:2]) / model_side)


def shown_count(peaks: Sequence[float], min_peak: float | None) -> int:
    """How many of a frame's regions are shown: those whose peak reaches ``min_peak``, and at least the strongest.

    Hysteresis, as in edge detection: the pixel threshold gives a region its extent, ``min_peak``
    (``Thresholds.region_peak``: the highest value of the good maps) decides which regions are defects, so
    that the weak spots a good part also has are not boxed beside the defect. The strongest region is kept
    whatever its peak, so that a flagged frame always shows where its evidence is.

    Args:
        peaks: the regions' ``max_score``, highest first (``find_regions``'s order).
        min_peak: the region peak; None shows every region.

    Returns:
        The count: the shown regions are the first that many.
    """
    if min_peak is None:
        return len(peaks)
    return max(min(1, len(peaks)), sum(1 for p in peaks if p >= min_peak))


def _component_stats(labels: np.ndarray, count: int) -> np.ndarray:
    """(count, 5) rows of x, y, width, height, area per label, as cv2.connectedComponentsWithStats gives."""
    stats = np.zeros((count, 5), np.int64)
    ys, xs = np.nonzero(labels)
    found = labels[ys, xs]
    stats[:, 4] = np.bincount(found, minlength=count)
    present = stats[:, 4] > 0
    x_min = np.full(count, np.iinfo(np.int64).max)
    y_min = np.full(count, np.iinfo(np.int64).max)
    x_max = np.full(count, -1)
    y_max = np.full(count, -1)
    np.minimum.at(x_min, found, xs)
    np.minimum.at(y_min, found, ys)
    np.maximum.at(x_max, found, xs)
    np.maximum.at(y_max, found, ys)
    stats[present, 0] = x_min[present]
    stats[present, 1] = y_min[present]
    stats[present, 2] = x_max[present] - x_min[present] + 1
    stats[present, 3] = y_max[present] - y_min[present] + 1
    return stats
