"""Frame geometry: from uint8 frames to model input, and from patch scores back to frame-sized maps.

The published AnomalyDINO recipe: shorter side resized (bicubic, antialiased), ImageNet mean/std,
centre-cropped to a multiple of the patch size (the crop is what anomalib's ``AnomalyDINOModel``
does; DINOv2 itself pads). In torch, so it runs on the GPU as well as the CPU.

This module is the one home of that geometry, both ways:

* in: ``check_image`` / ``as_image_list`` (what a frame may be), ``input_size`` and ``frame_geometry``
  (the arithmetic), ``to_model_input`` (the tensors);
* out: ``crop_maps`` (patch scores -> blurred maps at the model input's size, the part inside the
  ONNX graph), ``uncrop_maps`` (those maps -> the frame's size, edge-replicated over the cropped-off
  border), ``anomaly_maps`` (both), ``frame_to_grid`` (a frame map averaged over the patch grid).

Example:
    >>> geo = frame_geometry(1080, 1920, shorter_side=448)
    >>> geo.resized, geo.crop, geo.offset
    ((448, 796), (448, 784), (0, 6))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_ASPECT_RATIO", "CropGeometry", "FrameGeometry", "anomaly_maps",
           "rotate_frame",
           "as_image_list", "check_image", "crop_geometry", "crop_maps", "frame_geometry", "frame_to_grid",
           "BRIGHTNESS_MEAN", "BRIGHTNESS_SD", "SizedFrames", "StandardisedFrames",
           "standardise_brightness",
           "gaussian_blur", "input_size", "to_model_input", "uncrop_maps"]

# ImageNet statistics, used by DINOv2 (facebookresearch/dinov2, dinov2/data/transforms.py).
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
# A frame longer than this many times its shorter side would blow up to a huge model input once
# the shorter side is resized to 448; such frames need a region of interest first.
MAX_ASPECT_RATIO: Final = 32.0
# ours (issue 11): the grey level mean and spread every frame is brought to by brightness="standardise"
# (PatchKNNConfig.brightness); measured on magnetic tile, whose good images' scores followed their mean grey
# (benchmarks/README.md). Mid-grey with room on both sides: 110 +- 3 x 40 stays inside 0-255
BRIGHTNESS_MEAN: Final = 110.0
BRIGHTNESS_SD: Final = 40.0


def check_image(image: object, index: int) -> np.ndarray:
    """Validate one frame; returns it as (H, W, 3) uint8 (grayscale is stacked to 3 channels).

    Args:
        image: (H, W, 3) uint8 RGB, or (H, W) / (H, W, 1) uint8 grayscale.
        index: its position in the caller's batch, for the message.

    Raises:
        ValueError: not a numpy array, empty, not uint8, not 1 or 3 channels, or more elongated
            than ``MAX_ASPECT_RATIO``; the message names the image and the fix.
    """
    if not isinstance(image, np.ndarray):
        msg = f"image {index} is a {type(image).__name__}; expected a numpy array (H, W, 3) uint8 RGB"
        raise ValueError(msg)
    if image.size == 0:
        msg = f"image {index} is empty (shape {image.shape}); every frame needs at least one pixel"
        raise ValueError(msg)
    if image.dtype != np.uint8:
        msg = (f"image {index} has dtype {image.dtype}; expected uint8 RGB "
               "(convert 16-bit or float frames to 8 bits first)")
        raise ValueError(msg)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.ndim != 3:
        msg = f"image {index} has shape {image.shape}; expected (H, W, 3) RGB or (H, W) grayscale"
        raise ValueError(msg)
    elif image.shape[2] != 3:
        msg = (f"image {index} has {image.shape[2]} channels (shape {image.shape}); expected 3 (RGB); "
               "drop the alpha channel or convert the frame to RGB first")
        raise ValueError(msg)
    h, w = image.shape[:2]
    if max(h, w) > MAX_ASPECT_RATIO * min(h, w):
        msg = (f"image {index} of {h}x{w} pixels is too elongated (more than {MAX_ASPECT_RATIO:g}:1); "
               "crop a region of interest first")
        raise ValueError(msg)
    return image


def as_image_list(images_rgb: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One (H, W, 3) / (H, W) frame, a (B, H, W, 3) batch or a sequence of frames -> checked (H, W, 3) frames.

    Raises:
        ValueError: an array of another rank, or a frame ``check_image`` refuses.
    """
    if isinstance(images_rgb, np.ndarray):
        if images_rgb.ndim == 4:
            frames = list(images_rgb)
        elif images_rgb.ndim in (2, 3):
            frames = [images_rgb]
        else:
            msg = (f"images have shape {images_rgb.shape}; expected (H, W, 3), (B, H, W, 3) "
                   "or a list of (H, W, 3) arrays")
            raise ValueError(msg)
    else:
        frames = list(images_rgb)
    return [check_image(image, i) for i, image in enumerate(frames)]


def standardise_brightness(image: np.ndarray) -> np.ndarray:
    """One gain and one offset for the whole frame (all channels alike), so that its grey levels have mean
    ``BRIGHTNESS_MEAN`` and standard deviation ``BRIGHTNESS_SD``: a frame lit brighter or darker, or with more
    or less contrast, than the good images looks like them (a flat frame is only shifted).

    Args:
        image: (H, W, 3) uint8 RGB, as ``check_image`` returns it.

    Returns:
        (H, W, 3) uint8, clipped to 0-255.
    """
    image = np.ascontiguousarray(image)
    mean, sd = cv2.meanStdDev(image.reshape(-1, 1))    # all channels together, in float64
    spread = max(float(sd[0, 0]), 1.0)
    # the same affine map for every pixel: a 256-entry table (about 3 ms for a 1920x1200 frame)
    table = (np.arange(256, dtype=np.float32) - np.float32(mean[0, 0])) / spread * BRIGHTNESS_SD + BRIGHTNESS_MEAN
    out: np.ndarray = cv2.LUT(image, np.clip(table, 0.0, 255.0).astype(np.uint8))
    return out


class SizedFrames(Protocol):
    """Frames that can be counted and iterated (a list, or a lazy loader with ``__len__``)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[np.ndarray]: ...


class StandardisedFrames:
    """Frames as ``standardise_brightness`` gives them, each checked and converted as it is read (a long fit
    list is not copied; iterating twice converts twice).

    Args:
        frames: a sized collection of frames; ``check_image`` names a bad one by its index.
    """

    def __init__(self, frames: SizedFrames) -> None:
        self._frames = frames

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, image in enumerate(self._frames):
            yield standardise_brightness(check_image(image, i))


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


class FrameGeometry(NamedTuple):
    """Where the model input sits in a frame: resized to ``resized``, then centre-cropped to ``crop``."""

    frame: tuple[int, int]  # (H, W) of the frame
    resized: tuple[int, int]  # (H, W) after resizing the shorter side
    crop: tuple[int, int]  # (H, W) of the centre crop fed to the backbone (multiples of the patch size)
    offset: tuple[int, int]  # (top, left) of the crop inside the resized frame


def frame_geometry(height: int, width: int, *, shorter_side: int, patch_size: int = 14) -> FrameGeometry:
    """How ``to_model_input`` resizes and crops a frame of ``height`` x ``width`` (the one place of that
    arithmetic: the detectors, the ONNX runtime and the benchmarks map their maps back with it).

    Raises:
        ValueError: the frame has no area, or ``shorter_side`` is below one patch.
    """
    h, w = input_size(height, width, shorter_side=shorter_side, patch_size=patch_size)
    scale = shorter_side / min(height, width)
    rh, rw = round(height * scale), round(width * scale)
    return FrameGeometry((int(height), int(width)), (rh, rw), (h, w), ((rh - h) // 2, (rw - w) // 2))


# The names this module had before frame_geometry also carried the frame size; kept for old importers.
CropGeometry = FrameGeometry
crop_geometry = frame_geometry


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
    geo = frame_geometry(height, width, shorter_side=shorter_side, patch_size=patch_size)
    (rh, rw), (ch, cw), (top, left) = geo.resized, geo.crop, geo.offset
    resized = cv2.resize(values.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
    crop = resized[top : top + ch, left : left + cw]
    return cv2.resize(crop, (grid[1], grid[0]), interpolation=cv2.INTER_AREA).astype(np.float32, copy=False)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps; kernel radius 4 sigma, as anomalib's AnomalyMapGenerator.

    Borders reflect (replicate when the map is smaller than the kernel). ``sigma <= 0`` returns ``maps``.
    """
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    h, w = maps.shape[-2:]
    mode = "reflect" if radius < min(h, w) else "replicate"
    out = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))


def crop_maps(patch_scores: torch.Tensor, crop: tuple[int, int], *, sigma: float) -> torch.Tensor:
    """(B, h, w) patch scores -> (B, 1, H, W) float32 maps at the model input's size ``crop``.

    Upsampled bilinearly, then blurred at the model's scale (so sigma 4 means what it means in the
    AnomalyDINO paper). Fixed shapes, no branches on data: this is the map part of the ONNX graph.
    """
    maps = F.interpolate(patch_scores[:, None].float(), size=crop, mode="bilinear", align_corners=False)
    return gaussian_blur(maps, sigma)


def uncrop_maps(maps: torch.Tensor, geo: FrameGeometry, *, full_size: bool = True) -> torch.Tensor:
    """(B, 1, H, W) maps at the crop size -> (B, H', W') at the frame's size (or the resized size).

    The cropped-off border is filled by edge replication, then the resized frame is brought back to
    the frame's size bilinearly (``full_size=False`` stops at the resized size).
    """
    (rh, rw), (ch, cw), (top, left) = geo.resized, geo.crop, geo.offset
    if (rh, rw) != (ch, cw):
        maps = F.pad(maps, (left, rw - cw - left, top, rh - ch - top), mode="replicate")
    if full_size and geo.frame != geo.resized:
        maps = F.interpolate(maps, size=geo.frame, mode="bilinear", align_corners=False)
    return maps[:, 0]


def anomaly_maps(patch_scores: torch.Tensor, geo: FrameGeometry, *, sigma: float, full_size: bool) -> torch.Tensor:
    """(B, h, w) patch scores -> (B, H, W) float32 maps at the frame size (or the resized size).

    ``crop_maps`` then ``uncrop_maps``: upsampled, blurred at the model's scale, padded over the
    cropped-off border, resized to the frame.
    """
    return uncrop_maps(crop_maps(patch_scores, geo.crop, sigma=sigma), geo, full_size=full_size)


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
    geo = frame_geometry(int(batch.shape[-2]), int(batch.shape[-1]), shorter_side=shorter_side,
                         patch_size=patch_size)
    (h, w), (top, left) = geo.crop, geo.offset
    if geo.resized != geo.frame:
        batch = F.interpolate(batch, size=geo.resized, mode="bicubic", antialias=True, align_corners=False)
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


def rotate_frame(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate an (H, W, C) frame about its centre by ``angle`` degrees, same size; corners are filled by
    reflection, not black (the rotated references of a few-shot bank)."""
    if angle % 360 == 0:
        return image
    h, w = image.shape[:2]
    if angle % 90 == 0 and h == w:
        return np.ascontiguousarray(np.rot90(image, k=int(angle // 90) % 4))
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
