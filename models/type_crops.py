"""A defect region's crop re-embedded by the detector's backbone (``DefectTypeConfig.crop_side``).

A defect that covers 1-3 patches at the frame's resolution covers 4-12 across a crop of its surroundings
resized to ``crop_side`` (224 px by default): the crop's patches inside the region, pooled as the frame's
are (weighted mean and maximum), describe its shape. ``models.defect_types`` joins that part to the
region's embedding and re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import cv2
import numpy as np

__all__ = ["CROP_MARGIN", "CROP_MIN_SHARE", "MAX_CROP_SIDE", "MIN_CROP_SIDE", "crop_embedder", "crop_weights",
           "region_crop_box", "region_crop_descriptor"]


CROP_MARGIN: Final = 0.5       # ours: the crop is the region's box plus half its longer side on each side
CROP_MIN_SHARE: Final = 0.125  # ours: a crop spans at least 1/8 of the frame's shorter side (context for a dot)
# the crop pass's side (``DefectTypeConfig.crop_side``), here without torch: a recipe's check reads them
MIN_CROP_SIDE: Final = 56      # a crop of 4 x 4 patches; smaller sees less than the frame did
MAX_CROP_SIDE: Final = 896     # ours: a typo guard (one crop at 896 px costs about four 448-px frame passes)


def region_crop_box(
    box: tuple[int, int, int, int], frame_size: tuple[int, int], *, margin: float = CROP_MARGIN,
    min_share: float = CROP_MIN_SHARE,
) -> tuple[int, int, int]:
    """The square window of the frame around a region that is re-embedded at a higher resolution.

    Args:
        box: (x, y, width, height) of the region in the frame's pixels.
        frame_size: (H, W) of the frame.
        margin: the box's longer side times this is added on each side.
        min_share: the window's side is at least this share of the frame's shorter side.

    Returns:
        (x, y, side): the window's top-left corner and side, inside the frame (shifted in, never
        larger than the frame's shorter side).
    """
    x, y, w, h = box
    height, width = frame_size
    shorter = min(height, width)
    side = int(round(max(max(w, h) * (1.0 + 2.0 * margin), min_share * shorter)))
    side = max(1, min(side, shorter))
    x0 = int(round(x + w / 2 - side / 2))
    y0 = int(round(y + h / 2 - side / 2))
    return min(max(0, x0), width - side), min(max(0, y0), height - side), side


def crop_weights(weights: np.ndarray, window: tuple[int, int, int], grid: tuple[int, int]) -> np.ndarray:
    """A region's per-pixel weights (``region_weights``) averaged over a crop's patch grid.

    Args:
        weights: (H, W) float32 at the frame's size.
        window: (x, y, side) from ``region_crop_box``.
        grid: (h, w) patch grid of the crop's embedding.

    Returns:
        (h, w) float32; when the region covers no patch (thinner than the resampling), the patch
        under its centre gets weight 1.
    """
    x, y, side = window
    crop = weights[y:y + side, x:x + side].astype(np.float32)
    out = cv2.resize(crop, (grid[1], grid[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
    if not np.any(out > 0):
        ys, xs = np.nonzero(crop)
        cy, cx = (float(ys.mean()), float(xs.mean())) if ys.size else (side / 2, side / 2)
        out[min(grid[0] - 1, int(cy / side * grid[0])), min(grid[1] - 1, int(cx / side * grid[1]))] = 1.0
    return out


def crop_embedder(detector: Any) -> Callable[[Sequence[np.ndarray], int], np.ndarray] | None:
    """The detector's backbone as a crop embedding function, for ``region_crop_descriptor``.

    Args:
        detector: a ``PatchKNN`` (anything with ``core.extract``, ``backbone.patch_size`` and ``device``).

    Returns:
        ``embed(crops, side)``: square (s, s, 3) uint8 RGB crops (sides may differ) -> (n, h, w, D) float32
        L2-normalised patch features, every crop resized to ``side`` and run in one batch under the
        detector's precision; None when the detector has no torch backbone (an exported model).
    """
    core, backbone = getattr(detector, "core", None), getattr(detector, "backbone", None)
    if core is None or not hasattr(core, "extract") or backbone is None:
        return None

    def embed(crops: Sequence[np.ndarray], side: int) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from models.preprocess import to_model_input

        with torch.inference_mode():
            x = torch.cat([to_model_input(np.ascontiguousarray(c), shorter_side=side,
                                          patch_size=backbone.patch_size, device=detector.device) for c in crops])
            out: np.ndarray = F.normalize(core.extract(x).float(), dim=-1).cpu().numpy()
        return out

    return embed


def region_crop_descriptor(
    frame_rgb: np.ndarray,
    regions: Sequence[tuple[tuple[int, int, int, int], np.ndarray]],
    embed: Callable[[Sequence[np.ndarray], int], np.ndarray],
    *,
    side: int,
) -> list[np.ndarray]:
    """Each region's crop re-embedded: the two poolings of ``region_embedding`` over the crop's patches.

    Args:
        frame_rgb: (H, W, 3) uint8 RGB pixels the regions' maps were made from.
        regions: per region, its box (x, y, width, height) in the frame and its (H, W) ``region_weights``.
        embed: ``crop_embedder``'s function.
        side: the crop's side fed to the backbone (``DefectTypeConfig.crop_side``).

    Returns:
        One (2 D,) float32 unit vector per region: the anomaly-weighted mean and the maximum of the
        crop's patch features inside the region (``crop_weights``), each L2-normalised, joined.
    """
    if not regions:
        return []
    windows = [region_crop_box(box, frame_rgb.shape[:2]) for box, _ in regions]
    crops = [frame_rgb[y:y + s, x:x + s] for x, y, s in windows]
    features = embed(crops, side)
    out = []
    for (_, weights), window, feats in zip(regions, windows, features, strict=True):
        grid = crop_weights(weights, window, feats.shape[:2])
        inside = grid > 0
        patches = feats[inside].astype(np.float32, copy=False)
        out.append(_unit(np.concatenate([_unit(grid[inside] @ patches), _unit(patches.max(axis=0))])))
    return out


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        msg = "a region embedding is zero or not finite; the patch features hold NaN or nothing"
        raise ValueError(msg)
    return (vector / norm).astype(np.float32)
