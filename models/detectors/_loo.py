"""Leave-one-out calibration scores of a fitted ``PatchKNN``'s good frames (``PatchKNN.fit``).

Each good frame chosen for calibration is scored against the bank without its own patches (its owner's rows
skipped by the search), at the fine scale and, when the second scale is collected, at the coarse one, and its
anomaly map is kept at both scales (the pixel threshold's input). The detector fuses the scales
(``SecondScale.fit_fusion``, ``fuse_maps``) and the aligned global term (``AlignedScoring.fit_fusion``) from these;
a frame whose bank holds only its own patches (nothing of another frame to match) is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from models.preprocess import FrameGeometry, anomaly_maps

__all__ = ["LeaveOneOut", "leave_one_out"]

logger = logging.getLogger(__name__)


class PatchScores(Protocol):
    """``PatchKNN._patch_scores``: (1, h, w, D) raw features -> (1, h, w) patch scores."""

    def __call__(self, raw: torch.Tensor, *, owner: int | None = ..., coarse: bool = ...,
                 masks: torch.Tensor | None = ...) -> torch.Tensor: ...


class LeaveOneOut(NamedTuple):
    owners: list[int]          # the frames scored, in order
    fine: np.ndarray           # (N,) float32 image scores at the fine scale
    coarse: list[float]        # (N,) at the second scale; empty when it is not collected
    maps: list[np.ndarray]     # (h, w) float32 anomaly maps at the patch grid's resolution
    coarse_maps: list[np.ndarray]   # the same at the second scale; empty when it is not collected


def leave_one_out(
    items: Sequence[tuple[int, torch.Tensor, FrameGeometry]],
    *,
    patch_scores: PatchScores,
    scored_masks: Callable[[torch.Tensor], torch.Tensor] | None,
    image_score: Callable[[torch.Tensor], torch.Tensor],
    with_coarse: bool,
    blur_sigma: float,
) -> LeaveOneOut:
    """Score ``items`` ((owner, (h, w, D) raw features, geometry) per frame) each against the bank without it.

    ``scored_masks``: the patches scored when masking (None: every patch); ``image_score``: (B, h, w) patch scores
    -> (B,) image scores; ``with_coarse``: score the second scale too.
    """
    owners: list[int] = []
    fine: list[float] = []
    coarse: list[float] = []
    maps: list[np.ndarray] = []
    coarse_maps: list[np.ndarray] = []
    for owner, raw, geo in items:
        masks = scored_masks(raw[None]) if scored_masks is not None else None
        scores = patch_scores(raw[None], owner=owner, masks=masks)
        if not torch.isfinite(scores).all():  # the bank holds only this frame's patches
            continue
        owners.append(owner)
        fine.append(float(image_score(scores)[0]))
        maps.append(_map(scores, geo, blur_sigma))
        if with_coarse:
            coarse_scores = patch_scores(raw[None], owner=owner, coarse=True, masks=masks)
            coarse.append(float(image_score(coarse_scores)[0]))
            coarse_maps.append(_map(coarse_scores, geo, blur_sigma))
    if fine:
        logger.info("patch_knn leave-one-out scores of %d frame(s): mean %.4f, max %.4f",
                    len(fine), float(np.mean(fine)), float(np.max(fine)))
    else:
        logger.info("patch_knn: no leave-one-out scores (%d frame(s) asked, none with another frame to match)",
                    len(items))
    return LeaveOneOut(owners, np.asarray(fine, dtype=np.float32), coarse, maps, coarse_maps)


def _map(patch_scores: torch.Tensor, geo: FrameGeometry, blur_sigma: float) -> np.ndarray:
    """(1, h, w) patch scores -> the (h', w') float32 anomaly map at the model's scale."""
    return anomaly_maps(patch_scores, geo, sigma=blur_sigma, full_size=False)[0].cpu().numpy().astype(np.float32,
                                                                                                     copy=False)
