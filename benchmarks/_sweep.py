"""Sweeps of the kNN-side settings of PatchKNN from cached features, in one pass per category.

Running the detector once per setting would repeat the kNN search, by far the costliest step once
features are cached. Here the search runs once per test image and block: the per-block dot
products with the bank give the cosine distance of *any* concatenation of blocks
(cos = sum_b q_b.m_b / sqrt(sum_b |q_b|^2 * sum_b |m_b|^2), which is what PatchKNN computes on
concatenated raw features), and the sorted k nearest distances give every k at once. Masking,
the top-% image score and the blur are applied afterwards with PatchKNN's own helpers
(``_foreground.foreground_masks``, ``_anomaly_maps``), so a swept setting scores exactly as
PatchKNN would with that setting (up to fp16 storage of the features).

Not covered here (they change the bank): rotations and coreset; those are run through PatchKNN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._features import FeatureStore
from models.detectors._foreground import foreground_masks, mask_fractions
from models.evaluation import (
    Category,
    TestItem,
    aupro,
    image_auroc,
    load_image_rgb,
    load_mask,
    pixel_auroc,
    resize_for_pixel_metrics,
)
from models.preprocess import anomaly_maps, frame_geometry, to_model_input

__all__ = ["SweepData", "collect", "score"]

logger = logging.getLogger(__name__)

K_MAX = 5


@dataclass
class SweepData:
    """Per block set: the k nearest distances of every test patch, plus what masking needs."""

    category: str
    items: list[TestItem]
    geos: list                                   # PatchKNN _Geometry per test image
    masks_gt: list[np.ndarray]                   # (H, W) bool per test image (pixel-metric size)
    frame_masks: list[np.ndarray]                # full-size gt masks
    knn: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)     # variant -> [(h, w, K_MAX)]
    fg: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)      # variant -> [(h, w) bool]
    # variant -> (foreground share, border-ring share) of the references' masks
    ref_fg: dict[tuple, tuple[float, float]] = field(default_factory=dict)


def _pool(feats: torch.Tensor, pool: int) -> torch.Tensor:
    """(h, w, L, D) -> same, each block averaged over a pool x pool neighbourhood (PatchCore)."""
    if pool <= 1:
        return feats
    h, w, n_blocks, d = feats.shape
    x = feats.permute(2, 3, 0, 1).reshape(1, n_blocks * d, h, w)
    x = F.avg_pool2d(x, pool, stride=1, padding=pool // 2, count_include_pad=False)
    return x.reshape(n_blocks, d, h, w).permute(2, 3, 0, 1)


def _features(store: FeatureStore, path, shorter_side: int) -> torch.Tensor:
    x = to_model_input(load_image_rgb(path)[None], shorter_side=shorter_side)
    return store.get(x)[0].float()                                      # (h, w, 12, D)


def collect(
    store: FeatureStore,
    category: Category,
    train_paths: Sequence,
    items: Sequence[TestItem],
    variants: Sequence[tuple[tuple[int, ...], int]],
    *,
    shorter_side: int = 448,
    pixel_size: int = 256,
    mask_variants: Sequence[tuple[tuple[int, ...], int]] = (),
    dtype: torch.dtype = torch.bfloat16,
) -> SweepData:
    """Run the kNN search once for every (blocks, pool) variant on every test image.

    Args:
        variants: (blocks (1-based), pool) pairs; pool 1 = raw patches, 3 = 3x3 neighbourhood mean.
        mask_variants: the variants for which foreground masks are computed too (a PCA per image
            and variant: not cheap on a CPU, so only for a few).
    """
    t0 = time.perf_counter()
    pools = sorted({p for _, p in variants})
    used_blocks = sorted({b for blocks, _ in variants for b in blocks})
    bidx = [b - 1 for b in used_blocks]
    # bank per pool: (M, L, D) raw features of the used blocks
    banks: dict[int, torch.Tensor] = {}
    train_feats = [_features(store, p, shorter_side)[:, :, bidx] for p in train_paths]
    for pool in pools:
        banks[pool] = torch.cat([_pool(f, pool).reshape(-1, len(bidx), f.shape[-1]) for f in train_feats])
    data = SweepData(category=category.name, items=list(items), geos=[], masks_gt=[], frame_masks=[])
    # reference foreground shares, as PatchKNN._decide_masking computes them (masks of raw features)
    for blocks, pool in variants:
        data.knn[(blocks, pool)] = []
        data.fg[(blocks, pool)] = []
    for blocks, pool in mask_variants:
        sel = [used_blocks.index(b) for b in blocks]
        shares = [mask_fractions(foreground_masks(f[:, :, sel].reshape(1, *f.shape[:2], -1)), border=0.2)
                  for f in train_feats]
        data.ref_fg[(blocks, pool)] = (float(torch.stack([s[0] for s in shares]).mean()),
                                       float(torch.stack([s[1] for s in shares]).mean()))
    bank_sq = {pool: (bank * bank).sum(-1) for pool, bank in banks.items()}             # (M, L)
    banks_lp = {pool: bank.to(dtype) for pool, bank in banks.items()}
    for n, item in enumerate(items):
        image = load_image_rgb(item.path)
        h_img, w_img = image.shape[:2]
        data.geos.append(frame_geometry(h_img, w_img, shorter_side=shorter_side, patch_size=14))
        mask = load_mask(item.mask_path, (h_img, w_img)) if item.mask_path else np.zeros((h_img, w_img), bool)
        data.frame_masks.append(mask)
        small = resize_for_pixel_metrics(np.zeros((2, 2), np.float32), mask, pixel_size=pixel_size)[1]
        data.masks_gt.append(small)
        raw = _features(store, item.path, shorter_side)[:, :, bidx]                      # (h, w, L, D)
        h, w = raw.shape[:2]
        for pool in pools:
            q = _pool(raw, pool).reshape(h * w, len(bidx), -1)
            # bfloat16 products with float32 accumulation (oneDNN): 2x faster on CPUs with
            # avx512_bf16; the cosine error is ~1e-4, far below the distances being ranked (0.05-0.5).
            dots = [(q[:, j].to(dtype) @ banks_lp[pool][:, j].T).float() for j in range(len(bidx))]
            q_sq = (q * q).sum(-1)                                                       # (Q, L)
            for blocks, vpool in variants:
                if vpool != pool:
                    continue
                sel = [used_blocks.index(b) for b in blocks]
                dot = dots[sel[0]].clone()
                for j in sel[1:]:
                    dot += dots[j]
                q_norm = torch.sqrt(q_sq[:, sel].sum(1))[:, None]
                denom = q_norm * torch.sqrt(bank_sq[pool][:, sel].sum(1))[None]
                dist = (1.0 - dot / denom.clamp_min(1e-12)).clamp_(0.0, 2.0)
                nearest = dist.topk(K_MAX, dim=1, largest=False).values
                data.knn[(blocks, pool)].append(nearest.reshape(h, w, K_MAX))
                if (blocks, pool) in mask_variants:
                    data.fg[(blocks, pool)].append(foreground_masks(raw[:, :, sel].reshape(1, h, w, -1))[0])
            del dots
        if n % 10 == 0:
            logger.info("%s: %d/%d test images searched (%.0f s)", category.name, n + 1, len(items),
                        time.perf_counter() - t0)
    return data


def score(
    data: SweepData,
    *,
    blocks: tuple[int, ...],
    pool: int = 1,
    k: int = 1,
    top_percent: float = 1.0,
    sigma: float = 4.0,
    masking: str = "off",
    pixel: bool = True,
    pixel_size: int = 256,
) -> dict[str, float]:
    """Image AUROC (and AUPRO / pixel AUROC when ``pixel``) for one setting."""
    key = (tuple(blocks), pool)
    if masking != "off" and key not in data.ref_fg:
        msg = f"no foreground masks were collected for {key}; add it to mask_variants"
        raise ValueError(msg)
    ref_fg, ref_border = data.ref_fg.get(key, (1.0, 1.0))
    active = masking == "on" or (masking == "auto" and ref_border <= 0.2 and 0.0 < ref_fg < 1.0)
    scores, maps = [], []
    for i, knn in enumerate(data.knn[key]):
        patch = knn[..., :k].mean(-1)
        if active:
            fg = data.fg[key][i]
            if float(fg.float().mean()) >= 0.5 * ref_fg:             # PatchKNN's fallback rule
                patch = torch.where(fg, patch, torch.zeros_like(patch))
        flat = patch.reshape(-1)
        n_top = max(int(flat.numel() * top_percent / 100.0), 1)
        scores.append(float(flat.topk(n_top).values.mean()))
        if pixel:
            amap = anomaly_maps(patch[None], data.geos[i], sigma=sigma, full_size=False)[0].numpy()
            maps.append(resize_for_pixel_metrics(amap, data.frame_masks[i], pixel_size=pixel_size)[0])
    labels = np.array([t.label for t in data.items])
    out = {"image_auroc": image_auroc(np.array(scores), labels), "masking_active": float(active)}
    if pixel:
        out["aupro"] = aupro(maps, data.masks_gt)
        out["pixel_auroc"] = pixel_auroc(maps, data.masks_gt)
    return out
