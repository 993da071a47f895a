"""Calibration scores for a detector taught from ONE good frame, where leave-one-out has nothing to leave out.

With two or more good frames each is scored against a bank without its own patches (leave-one-out)
and those scores set the thresholds (``models.calibration.calibrate``). With one frame there is no
second frame to leave out, so ours leaves out *regions* instead: each patch of the frame is scored
against the frame's other patches, those within ``r`` patches of it (its (2r + 1) x (2r + 1)
neighbourhood, whose receptive fields overlap it) left out, for r = 1, 2 and 3. The image score is the
detector's own (mean of the top ``top_percent`` % patch scores), so the three scores say how far the
frame's most unusual regions are from the rest of the same frame.

What this stands in for, and how well, is measured, not assumed: benchmarks/README.md (issue 11, 1-shot
rows) gives the share of good and defective test images flagged at thresholds set this way. A first try,
scoring shifted and turned copies of the frame against its own bank, gave scores far below those of
other good parts (every good transistor was flagged) and was dropped; the radii 1-3 were looked at on one
transistor image (seed 0) before the table was run, so the 1-shot rows are not held out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final

import numpy as np
import torch

from models.preprocess import FrameGeometry, anomaly_maps

__all__ = ["ONE_SHOT_RADII", "ONE_SHOT_RULE", "region_leave_out_scores"]

logger = logging.getLogger(__name__)

ONE_SHOT_RADII: Final = (1, 2, 3)   # ours: patches left out around each patch, in patches (Chebyshev)
ONE_SHOT_RULE: Final = ("one good image: the good scores come from that image alone, each patch scored "
                        "against the image's other patches with its neighbourhood (radius 1, 2, 3 patches) "
                        "left out, not from other good images")
QUERY_CHUNK: Final = 1024           # query patches per distance block (1024 x h*w floats)


def region_leave_out_scores(
    embedded: torch.Tensor,
    geo: FrameGeometry,
    *,
    image_score: Callable[[torch.Tensor], torch.Tensor],
    keep: torch.Tensor | None = None,
    sigma: float = 4.0,
    radii: tuple[int, ...] = ONE_SHOT_RADII,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image scores and maps of one frame scored against itself with each patch's neighbourhood left out.

    Args:
        embedded: (h, w, D) L2-normalised patch features of the frame (the detector's embedding).
        geo: the frame's geometry (``models.preprocess.frame_geometry``).
        image_score: the detector's (B, h, w) patch scores -> (B,) image scores.
        keep: (h, w) bool, the patches scored (foreground when masking is on); others score 0.
        sigma: blur of the maps (the detector's ``blur_sigma``).
        radii: neighbourhood radii, in patches; one score per radius.

    Returns:
        (len(radii),) float32 scores and as many (h', w') float32 maps at the model's scale, as
        leave-one-out maps are.

        Only radii that leave every patch something to match are used (r < (longer grid side - 1) / 2);
        when fewer than two are left (a grid under 6 patches), none: the frame is too small to calibrate
        from alone, and ``calibrate`` says so.
    """
    h, w, d = embedded.shape
    radii = tuple(r for r in radii if 1 <= r < math.ceil((max(h, w) - 1) / 2))
    if len(radii) < 2:
        logger.info("one-shot calibration: a %d x %d patch grid is too small to leave regions out", h, w)
        return np.empty(0, dtype=np.float32), []
    flat = embedded.reshape(-1, d).float()
    ys = torch.arange(h, device=flat.device).repeat_interleave(w)
    xs = torch.arange(w, device=flat.device).repeat(h)
    nearest = {r: torch.empty(h * w, device=flat.device) for r in radii}
    for start in range(0, h * w, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, h * w)
        dist = 1.0 - flat[start:stop] @ flat.T                     # cosine distance, as the kNN's
        apart = torch.maximum((ys[start:stop, None] - ys[None]).abs(), (xs[start:stop, None] - xs[None]).abs())
        for r in radii:
            nearest[r][start:stop] = dist.masked_fill(apart <= r, float("inf")).min(dim=1).values
    scores: list[float] = []
    maps: list[np.ndarray] = []
    for r in radii:
        patch_scores = nearest[r].clamp_min(0).reshape(1, h, w)
        if keep is not None:
            patch_scores = patch_scores * keep.reshape(1, h, w).to(patch_scores.dtype)
        scores.append(float(image_score(patch_scores)[0]))
        amap = anomaly_maps(patch_scores, geo, sigma=sigma, full_size=False)[0]
        maps.append(amap.cpu().numpy().astype(np.float32, copy=False))
    return np.asarray(scores, dtype=np.float32), maps
