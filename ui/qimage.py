"""numpy images -> ``QImage``, and the heatmap colouring used by every view.

Runs on the GUI thread. Every ``QImage`` returned here owns its pixels (``.copy()``): a ``QImage``
built on a numpy buffer does not, and would point at freed memory once the array is collected.

Example:
    >>> frame_bgr = np.zeros((56, 56, 3), np.uint8)
    >>> bgr_to_qimage(frame_bgr).size().width()
    56
"""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtGui import QImage

__all__ = ["bgr_to_qimage", "gray_to_qimage", "heatmap_rgba", "heatmap_to_qimage"]


def bgr_to_qimage(image_bgr: np.ndarray) -> QImage:
    """Convert an OpenCV frame to a ``QImage`` that owns its pixels.

    Args:
        image_bgr: (H, W, 3) uint8, BGR as read by OpenCV; (H, W) uint8 grey is accepted too.

    Returns:
        A ``QImage.Format_BGR888`` (or ``Format_Grayscale8``) copy of the frame.

    Raises:
        ValueError: the array is not (H, W) or (H, W, 3) uint8.
    """
    if image_bgr.ndim == 2:
        return gray_to_qimage(image_bgr)
    if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        msg = f"bgr_to_qimage needs an (H, W, 3) uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}"
        raise ValueError(msg)
    image_bgr = np.ascontiguousarray(image_bgr)
    height, width = image_bgr.shape[:2]
    return QImage(image_bgr.data, width, height, image_bgr.strides[0], QImage.Format.Format_BGR888).copy()


def gray_to_qimage(image: np.ndarray) -> QImage:
    """Convert an (H, W) uint8 grey image to a ``QImage.Format_Grayscale8`` that owns its pixels."""
    if image.dtype != np.uint8 or image.ndim != 2:
        msg = f"gray_to_qimage needs an (H, W) uint8 image, got {image.shape} {image.dtype}"
        raise ValueError(msg)
    image = np.ascontiguousarray(image)
    height, width = image.shape
    return QImage(image.data, width, height, image.strides[0], QImage.Format.Format_Grayscale8).copy()


def heatmap_rgba(anomaly_map: np.ndarray, *, vmin: float, vmax: float) -> np.ndarray:
    """Colour an anomaly map (turbo colour map) with an alpha that fades out the normal parts.

    Scores at or below ``vmin`` are fully transparent, so a good part is shown as itself and not
    washed blue; scores at or above ``vmax`` are opaque. The viewer's opacity slider scales the rest.

    Args:
        anomaly_map: (H, W) float32 anomaly scores, any range.
        vmin: score shown transparent (e.g. half the recipe's pixel threshold).
        vmax: score shown fully red and opaque (e.g. the pixel threshold times 1.5).

    Returns:
        (H, W, 4) uint8, RGBA.
    """
    if anomaly_map.ndim != 2:
        msg = f"heatmap_rgba needs an (H, W) anomaly map, got shape {anomaly_map.shape}"
        raise ValueError(msg)
    span = max(float(vmax) - float(vmin), 1e-12)
    unit = np.clip((np.nan_to_num(anomaly_map.astype(np.float32)) - vmin) / span, 0.0, 1.0)
    # turbo up to 0.86 of its range: the hot end is a bright red, not turbo's near-black maroon,
    # so a defect reads as "hot" over dark parts too
    level = (unit * 220).astype(np.uint8)
    colour_bgr = cv2.applyColorMap(level, cv2.COLORMAP_TURBO)
    rgba = np.empty((*anomaly_map.shape, 4), np.uint8)
    rgba[..., :3] = colour_bgr[..., ::-1]
    # sqrt ramp: weak anomalies still show faintly, strong ones cover the part
    rgba[..., 3] = (np.sqrt(unit) * 255).astype(np.uint8)
    return rgba


def heatmap_to_qimage(anomaly_map: np.ndarray, *, vmin: float, vmax: float) -> QImage:
    """`heatmap_rgba` as a ``QImage.Format_RGBA8888`` that owns its pixels."""
    rgba = np.ascontiguousarray(heatmap_rgba(anomaly_map, vmin=vmin, vmax=vmax))
    height, width = rgba.shape[:2]
    return QImage(rgba.data, width, height, rgba.strides[0], QImage.Format.Format_RGBA8888).copy()
