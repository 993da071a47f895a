"""Zero-shot foreground masks from the first principal component of a frame's patch features.

AnomalyDINO (Damm et al. 2024, section 3 "masking"; anomalib's ``compute_background_masks``):
patches whose projection on the first principal component exceeds 10 are foreground; if that
keeps 35 % or less of the central crop the component's sign is flipped; then a 3x3 dilation and
a 3x3 closing clean the mask. Done here in torch, batched and on the features' device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
import torch.nn.functional as F

from models.preprocess import SizedFrames, check_image

if TYPE_CHECKING:
    from models.detectors.patch_knn_config import PatchKNNConfig

__all__ = ["BRIGHTNESS_PROBE", "decide_brightness", "decide_masking", "foreground_masks", "mask_fractions"]

logger = logging.getLogger(__name__)


# ours: brightness="auto" with masking="auto" looks at this many of the good frames (one backbone pass each)
BRIGHTNESS_PROBE: Final = 4
# Squarings of the covariance in ``leading_eigenvector``: its power 2**12 = 4096 leaves a second
# eigenvalue of 0.998 of the first at 3e-4 of it; two plain power steps after that polish the result.
SQUARINGS: Final = 12
POLISH_STEPS: Final = 2


def leading_eigenvector(cov: torch.Tensor) -> torch.Tensor:
    """(B, D, D) symmetric positive semi-definite -> (B, D) unit eigenvectors of the largest eigenvalue.

    Repeated squaring (``cov ** 4096``, normalised by its trace at every step) followed by power
    steps: a dozen batched float32 matrix products. On CUDA this replaces ``torch.linalg.eigh``,
    which runs a full cuSOLVER decomposition per frame and took longer than the whole ViT there (an
    H200, torch 2.11: 37 of 42 ms of device time for 4 frames, ``benchmarks/results/gpu_profile_h200.json``).
    On DINOv2 features of VisA fryum frames it agrees with float64 eigh to 1 - |cos| < 1e-7.
    The sign is arbitrary, as eigh's.
    """
    tiny = torch.finfo(torch.float32).tiny
    a = cov.float()
    a = a / a.diagonal(dim1=1, dim2=2).sum(dim=1).clamp_min(tiny)[:, None, None]
    p = a
    for _ in range(SQUARINGS):
        p = p @ p
        p = p / p.diagonal(dim1=1, dim2=2).sum(dim=1).clamp_min(tiny)[:, None, None]
    # cov ** n is ~ v v^T: its column of largest norm is the best-conditioned multiple of v
    column = p.norm(dim=1).argmax(dim=1)
    v = p.gather(2, column[:, None, None].expand(-1, p.shape[1], 1))[..., 0]
    for _ in range(POLISH_STEPS):
        v = (a @ v[..., None])[..., 0]
        v = v / v.norm(dim=1, keepdim=True).clamp_min(tiny)
    return v.to(cov.dtype)


def _principal_projection(features: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N) projections on each frame's first principal component (centred).

    The sign follows scikit-learn's ``svd_flip(u_based_decision=False)``: the component's entry of
    largest magnitude is positive, so results match ``sklearn.decomposition.PCA``. On the CPU the
    component comes from ``torch.linalg.eigh`` (LAPACK), on CUDA from ``leading_eigenvector``.
    """
    centred = features - features.mean(dim=1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred  # (B, D, D); eigh of it is cheaper than an SVD of (N, D)
    if cov.device.type == "cuda":
        first = leading_eigenvector(cov)
    else:
        _, vecs = torch.linalg.eigh(cov)
        first = vecs[..., -1]  # (B, D), eigenvalues ascend
    largest = first.abs().argmax(dim=1, keepdim=True)
    first = first * torch.sign(first.gather(1, largest))
    scores: torch.Tensor = (centred @ first[..., None])[..., 0]
    return scores


def _centre_slices(h: int, w: int, border: float) -> tuple[slice, slice]:
    y0, y1 = int(h * border), int(h * (1 - border))
    x0, x1 = int(w * border), int(w * (1 - border))
    if y1 <= y0 or x1 <= x0:  # grid too small for a border: the centre is the whole grid
        return slice(0, h), slice(0, w)
    return slice(y0, y1), slice(x0, x1)


def foreground_masks(
    features: torch.Tensor,
    *,
    threshold: float = 10.0,
    border: float = 0.2,
    min_centre_fraction: float = 0.35,
    kernel_size: int = 3,
) -> torch.Tensor:
    """Foreground patches of each frame.

    Args:
        features: (B, h, w, D) patch features before L2 normalisation (PCA needs their scale).
        threshold: projection on the first principal component above which a patch is foreground.
        border: fraction of the grid on each side outside the central crop.
        min_centre_fraction: if the mask keeps this share of the central crop or less, flip the sign.
        kernel_size: size of the square dilation and closing kernel.

    Returns:
        (B, h, w) bool, True for foreground patches, on the features' device.
    """
    b, h, w, d = features.shape
    proj = _principal_projection(features.reshape(b, h * w, d).float()).reshape(b, h, w)
    ys, xs = _centre_slices(h, w, border)
    mask = proj > threshold
    centre = mask[:, ys, xs].float().mean(dim=(1, 2))
    flip = centre <= min_centre_fraction
    mask = torch.where(flip[:, None, None], -proj > threshold, mask)
    pad = kernel_size // 2
    m = mask.float()[:, None]
    # max_pool2d pads with -inf, so borders behave as in cv2.dilate/cv2.erode's default border.
    m = F.max_pool2d(m, kernel_size, stride=1, padding=pad)  # dilate
    m = F.max_pool2d(m, kernel_size, stride=1, padding=pad)  # close = dilate ...
    m = -F.max_pool2d(-m, kernel_size, stride=1, padding=pad)  # ... then erode
    return m[:, 0] > 0.5


def mask_fractions(masks: torch.Tensor, *, border: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of foreground patches overall and in the border ring (outside the central crop).

    Args:
        masks: (B, h, w) bool foreground masks.
        border: as in ``foreground_masks``.

    Returns:
        ((B,) float32 overall fraction, (B,) float32 border-ring fraction).
    """
    b, h, w = masks.shape
    ys, xs = _centre_slices(h, w, border)
    ring = torch.ones((h, w), dtype=torch.bool, device=masks.device)
    ring[ys, xs] = False
    overall = masks.float().mean(dim=(1, 2))
    if not ring.any():
        return overall, overall
    return overall, masks[:, ring].float().mean(dim=1)


def config_masks(raw: torch.Tensor, cfg: PatchKNNConfig) -> torch.Tensor:
    """(B, h, w, D) raw features -> (B, h, w) bool foreground masks, with the config's mask options."""
    return foreground_masks(raw, threshold=cfg.mask_pca_threshold, border=cfg.mask_border,
                            min_centre_fraction=cfg.mask_min_centre_fraction, kernel_size=cfg.mask_kernel_size)


def with_fallback(masks: torch.Tensor, cfg: PatchKNNConfig, reference_foreground: float) -> torch.Tensor:
    """(B, h, w) foreground masks -> the patches to score: a frame whose mask is much smaller than the
    references' (a missing or very different part) is scored everywhere, since masking it would hide exactly the
    defect looked for (``mask_fallback_ratio``). Changes ``masks`` in place and returns it."""
    masks[masks.float().mean(dim=(1, 2)) < cfg.mask_fallback_ratio * reference_foreground] = True
    return masks


def decide_masking(ref_masks: list[torch.Tensor], cfg: PatchKNNConfig) -> tuple[bool, float]:
    """Whether test frames are masked, from the references' (h, w) bool masks (``PatchKNNConfig.masking``).

    Returns:
        (masking active, mean foreground share of the references' masks; 1.0 without masks).
    """
    if cfg.masking == "off" or not ref_masks:
        return False, 1.0
    overall = [mask_fractions(m[None], border=cfg.mask_border) for m in ref_masks]
    fg = float(torch.stack([o for o, _ in overall]).mean())
    border = float(torch.stack([b for _, b in overall]).mean())
    # "auto": an object on a plain background leaves the border ring background; a texture does not.
    active = cfg.masking == "on" or (border <= cfg.masking_auto_max_border and 0.0 < fg < 1.0)
    logger.info("patch_knn masking (%s): references keep %.0f %% as foreground, %.0f %% of the border -> %s",
                cfg.masking, 100 * fg, 100 * border, "on" if active else "off")
    return active, fg


def decide_brightness(cfg: PatchKNNConfig, frames: SizedFrames,
                      features: Callable[[list[np.ndarray]], tuple[torch.Tensor, Any]],
                      masks: Callable[[torch.Tensor], torch.Tensor]) -> tuple[bool, list[tuple[torch.Tensor, Any]]]:
    """Whether the frames are brightness-standardised (``PatchKNNConfig.brightness``), before a fit.

    "auto": yes where the scene fills the frame, no for a part on a plain background, as masking would decide
    on the first ``BRIGHTNESS_PROBE`` good frames as they are (``masking`` "on" / "off" says it outright).

    Args:
        frames: the good frames (not yet checked).
        features: same-sized (H, W, 3) uint8 frames -> ((B, h, w, D) raw features, geometry).
        masks: (B, h, w, D) raw features -> (B, h, w) bool foreground masks.

    Returns:
        (standardise, what ``features`` gave for each probed frame, in order: one (1, h, w, D) batch each; empty
        where nothing was probed). Where the frames stay as they are, those are the first frames' features: a
        caller keeps them rather than passing the frames through the backbone again.
    """
    if cfg.brightness != "auto":
        return cfg.brightness == "standardise", []
    if cfg.masking != "auto":
        return cfg.masking == "off", []
    probed = [features([check_image(frame, i)]) for i, frame in zip(range(BRIGHTNESS_PROBE), frames, strict=False)]
    part_on_background, _ = decide_masking([masks(raw)[0] for raw, _ in probed], cfg)
    logger.info("patch_knn brightness (auto): %s", "a part on a plain background -> as is" if part_on_background
                else "the scene fills the frame -> standardised")
    return not part_on_background, probed
