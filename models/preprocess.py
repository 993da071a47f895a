"""From uint8 frames to model input, in torch so it runs on the GPU as well as the CPU.

The published AnomalyDINO recipe: shorter side resized (bicubic, antialiased), ImageNet mean/std,
centre-cropped to a multiple of the patch size (the crop is what anomalib's ``AnomalyDINOModel``
does; DINOv2 itself pads).
"""

from __future__ import annotations

from typing import Final, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CropGeometry", "crop_geometry", "frame_to_grid", "input_size",
           "to_model_input"]

# ImageNet statistics, used by DINOv2 (facebookresearch/dinov2, dinov2/data/transforms.py).
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)


def input_size(height: int, width: int, *, shorter_side: int, patch_size: int = 14) -> tuple[int, int]:
    """(H, W) of the model input for a frame of ``height`` x ``width``.

    The shorter side becomes ``shorter_side``, the longer keeps the aspect ratio, then both are cut
    down to a multiple of ``patch_size``.
    """
    if height < 1 or width < 1:
        msg = f"image of {height}x{width} pixels has no area"
        raise ValueError(msg)
    scale = shorter_side / min(height, width)
    h, w = round(height * scale), round(width * scale)
    h, w = h - h % patch_size, w - w % patch_size
    if h < patch_size or w < patch_size:
        msg = f"shorter_side {shorter_side} is smaller than one {patch_size}-px patch"
        raise ValueError(msg)
    return h, w


class CropGeometry(NamedTuple):
    """Where the model input sits in a frame: resized to ``resized``, then centre-cropped."""

    resized: tuple[int, int]  # (H, W) after resizing the shorter side
    crop: tuple[int, int]  # (H, W) of the centre crop fed to the backbone (multiples of the patch size)
    offset: tuple[int, int]  # (top, left) of the crop inside the resized frame


def crop_geometry(height: int, width: int, *, shorter_side: int, patch_size: int = 14) -> CropGeometry:
    """How ``to_model_input`` resizes and crops a frame of ``height`` x ``width`` (same arithmetic)."""
    h, w = input_size(height, width, shorter_side=shorter_side, patch_size=patch_size)
    scale = shorter_side / min(height, width)
    rh, rw = round(height * scale), round(width * scale)
    return CropGeometry((rh, rw), (h, w), ((rh - h) // 2, (rw - w) // 2))


def frame_to_grid(
    values: np.ndarray, grid: tuple[int, int], *, shorter_side: int, patch_size: int = 14
) -> np.ndarray:
    """Average a per-pixel frame map over the backbone's patch grid.

    Args:
        values: (H, W) float map at the frame's full size (e.g. a region's weights).
        grid: (h, w) of the patch grid (the crop size divided by the patch size).
        shorter_side: as given to ``to_model_input``.
        patch_size: the backbone's patch size.

    Returns:
        (h, w) float32: the mean of ``values`` over each patch's pixels (area interpolation).
    """
    height, width = values.shape
    geo = crop_geometry(height, width, shorter_side=shorter_side, patch_size=patch_size)
    (rh, rw), (ch, cw), (top, left) = geo
    resized = cv2.resize(values.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
    crop = resized[top : top + ch, left : left + cw]
    return cv2.resize(crop, (grid[1], grid[0]), interpolation=cv2.INTER_AREA).astype(np.float32, copy=False)


def to_model_input(
    images_rgb: np.ndarray | torch.Tensor | list[np.ndarray],
    *,
    shorter_side: int,
    patch_size: int = 14,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resize, normalise and crop a batch of RGB frames of one size.

    Args:
        images_rgb: (H, W, 3) or (B, H, W, 3) uint8 RGB, or a list of same-sized (H, W, 3) arrays.
        shorter_side: target length of the shorter side in pixels.
        patch_size: the crop makes H and W multiples of it.
        device: where the work happens (the upload is of uint8, 4x smaller than float).
        dtype: dtype of the returned tensor.

    Returns:
        (B, 3, h, w) normalised tensor on ``device``; (h, w) is ``input_size(H, W, ...)``.
    """
    if isinstance(images_rgb, list):
        images_rgb = np.stack(images_rgb)
    batch = torch.as_tensor(images_rgb)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != torch.uint8:
        msg = f"expected (B, H, W, 3) uint8 RGB images, got shape {tuple(batch.shape)} {batch.dtype}"
        raise ValueError(msg)
    batch = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    height, width = batch.shape[-2:]
    h, w = input_size(height, width, shorter_side=shorter_side, patch_size=patch_size)
    scale = shorter_side / min(height, width)
    rh, rw = round(height * scale), round(width * scale)
    if (rh, rw) != (height, width):
        batch = F.interpolate(batch, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (rh - h) // 2, (rw - w) // 2
    batch = batch[..., top : top + h, left : left + w]
    mean, std = _imagenet_stats(batch.device)
    return ((batch - mean) / std).to(dtype)


_STATS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) mean and std on ``device``, made once per device: no host-to-device copy per call
    (a CUDA graph cannot capture one, and it costs a synchronisation on every frame)."""
    if device not in _STATS:
        _STATS[device] = (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                          torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))
    return _STATS[device]
