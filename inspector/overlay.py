"""Heatmap overlays: an anomaly map coloured and blended over the frame, defect regions outlined.

Used by the archive, the CLI demo and the batch-review report; the GUI does its own blending but may
call these. Pure functions of numpy arrays, safe on any thread.

Example:
    >>> overlay = render_overlay(frame_bgr, anomaly_map, vmin=0.5 * pixel_threshold,
    ...                          vmax=1.5 * pixel_threshold, regions=result.regions)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import cv2
import numpy as np

from inspector.results import DefectRegion

__all__ = ["DEFAULT_COLORMAP", "REGION_COLOR_BGR", "heatmap_bgr", "location_heat_image", "normalise_map",
           "render_overlay", "thumbnail"]

# Turbo: perceptually smoother than Jet and readable by most colour-blind operators (Google AI blog, 2019).
DEFAULT_COLORMAP: Final = cv2.COLORMAP_TURBO
# Regions are outlined in magenta: it does not occur in Turbo, so boxes stay visible over any heat.
REGION_COLOR_BGR: Final = (255, 0, 255)


def normalise_map(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Scale an anomaly map to [0, 1] between ``vmin`` and ``vmax`` (clipped; NaN -> 0).

    Args:
        anomaly_map: (H, W) float anomaly scores.
        vmin: score shown as the cold end (e.g. half the pixel threshold).
        vmax: score shown as the hot end.

    Returns:
        (H, W) float32 in [0, 1].

    Raises:
        ValueError: the map is not 2-D, or ``vmax <= vmin``.
    """
    if anomaly_map.ndim != 2:
        msg = f"anomaly_map must be (H, W), got shape {anomaly_map.shape}"
        raise ValueError(msg)
    if not vmax > vmin:
        msg = f"heatmap range is empty: vmin={vmin} must be below vmax={vmax}"
        raise ValueError(msg)
    scaled = (anomaly_map.astype(np.float32) - np.float32(vmin)) / np.float32(vmax - vmin)
    unit: np.ndarray = np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    return unit


def heatmap_bgr(
    anomaly_map: np.ndarray, vmin: float, vmax: float, *, colormap: int = DEFAULT_COLORMAP
) -> np.ndarray:
    """Colour an anomaly map.

    Args:
        anomaly_map: (H, W) float anomaly scores.
        vmin: score at the cold end of the colour map.
        vmax: score at the hot end.
        colormap: an OpenCV colour map (``cv2.COLORMAP_TURBO`` by default, ``cv2.COLORMAP_JET`` works too).

    Returns:
        (H, W, 3) uint8 BGR.
    """
    levels = (normalise_map(anomaly_map, vmin, vmax) * 255.0).round().astype(np.uint8)
    return cv2.applyColorMap(levels, colormap)


def render_overlay(
    image_bgr: np.ndarray,
    anomaly_map: np.ndarray | None,
    *,
    vmin: float,
    vmax: float,
    regions: Sequence[DefectRegion] = (),
    alpha: float = 0.45,
    colormap: int = DEFAULT_COLORMAP,
    region_color: tuple[int, int, int] = REGION_COLOR_BGR,
) -> np.ndarray:
    """Blend the coloured anomaly map over the frame and outline the defect regions.

    Pixels scoring at or below ``vmin`` keep the frame's own colours (so a good part looks like
    itself); above it the heat colour is blended with weight ``alpha``. A map of another size than the
    frame (e.g. model resolution) is resized to the frame bilinearly first.

    Args:
        image_bgr: (H, W, 3) uint8 BGR frame; not modified.
        anomaly_map: (h, w) float anomaly scores, or None for the regions alone.
        vmin: score at the cold end (e.g. 0.5 * the pixel threshold).
        vmax: score at the hot end.
        regions: defect regions in frame pixel coordinates, outlined with rectangles.
        alpha: weight of the heat colour in [0, 1].
        colormap: an OpenCV colour map.
        region_color: BGR colour of the region outlines.

    Returns:
        (H, W, 3) uint8 BGR, a new array.

    Raises:
        ValueError: ``image_bgr`` is not (H, W, 3) uint8, ``alpha`` is outside [0, 1], or the range is empty.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        msg = f"image_bgr must be (H, W, 3) uint8 BGR, got shape {image_bgr.shape} {image_bgr.dtype}"
        raise ValueError(msg)
    if not 0.0 <= alpha <= 1.0:
        msg = f"alpha must be in [0, 1], got {alpha}"
        raise ValueError(msg)
    height, width = image_bgr.shape[:2]
    out = image_bgr.copy()
    if anomaly_map is not None:
        if anomaly_map.ndim != 2:
            msg = f"anomaly_map must be (H, W), got shape {anomaly_map.shape}"
            raise ValueError(msg)
        if anomaly_map.shape != (height, width):
            anomaly_map = cv2.resize(
                anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
            )
        level = normalise_map(anomaly_map, vmin, vmax)
        heat = cv2.applyColorMap((level * 255.0).round().astype(np.uint8), colormap)
        weight = np.where(level > 0.0, np.float32(alpha), np.float32(0.0))[..., None]
        out = (out.astype(np.float32) * (1.0 - weight) + heat.astype(np.float32) * weight).round()
        out = out.clip(0, 255).astype(np.uint8)
    thickness = max(1, round(min(height, width) / 200))
    for region in regions:
        top_left = (int(region.x), int(region.y))
        bottom_right = (int(region.x + region.width - 1), int(region.y + region.height - 1))
        cv2.rectangle(out, top_left, bottom_right, region_color, thickness, lineType=cv2.LINE_8)
    return out


def location_heat_image(reference_bgr: np.ndarray, counts: np.ndarray, *, alpha: float = 0.55) -> np.ndarray:
    """The location map as a heat image over a reference good image (both the ROI's size).

    Args:
        reference_bgr: (H, W, 3) uint8 BGR good image of the ROI.
        counts: (rows, cols) counts (``LocationMap.counts[type]`` or ``.total()``).
        alpha: opacity of the heat where there are defects (none where there are none).

    Returns:
        (H, W, 3) uint8 BGR.
    """
    h, w = reference_bgr.shape[:2]
    density = cv2.resize(counts.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
    density = cv2.GaussianBlur(density, (0, 0), sigmaX=max(1.0, w / counts.shape[1] / 2))
    peak = float(density.max())
    if peak <= 0:
        return reference_bgr.copy()
    norm = density / peak
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * np.clip(norm * 3, 0, 1))[..., None]
    blended: np.ndarray = (reference_bgr * (1 - weight) + heat * weight).astype(np.uint8)
    return blended


def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` shrunk (area interpolation) so that its longer side is at most ``side`` px; a smaller one as is."""
    height, width = image.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)
