"""Sweeps of the kNN-side settings of PatchKNN from cached features, in one pass per category.

Running the detector once per setting would repeat the kNN search, by far the costliest step once
features are cached. Here the search runs once per test image and block: the per-block dot
products with the bank give the cosine distance of *any* concatenation of blocks
(cos = sum_b q_b.m_b / sqrt(sum_b |q_b|^2 * sum_b |m_b|^2), which is what PatchKNN computes on
concatenated raw features), and the sorted k nearest distances give every k at once. Masking,
the top-% image score and the blur are applied afterwards with PatchKNN's own helpers
(``_foreground.foreground_masks``, ``models.preprocess.anomaly_maps``), so a swept setting scores exactly as
PatchKNN would with that setting (up to fp16 storage of the features).

Issue 11's levers are derived from the same pass: with ``loo=True`` the training images are also
searched leave-one-out (each against the bank without its own patches), which gives every variant's
good-score scale; ``subspace`` adds the PCA residual of every patch (SubspaceAD) for a few variance
fractions, its leave-one-out PCA refitted per training image from the bank's summed moments.
``Setting.pools`` fuses the kNN maps of several poolings (MuSc's r = 1, 3, 5), ``Setting.subspace``
fuses the residual map with the kNN map, each part optionally divided by its leave-one-out scale.

Not covered here (they change the bank): rotations and coreset; those are run through PatchKNN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from benchmarks._features import FeatureStore, neighbourhood_mean
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
from models.preprocess import anomaly_maps, frame_geometry, standardise_brightness, to_model_input

__all__ = ["Setting", "SweepData", "collect", "derive", "fused_patch_maps", "score"]

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
    knn: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)     # variant -> [(h, w, k_max)]
    k_max: int = K_MAX                                                       # distances kept per patch
    fg: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)      # variant -> [(h, w) bool]
    # variant -> (foreground share, border-ring share) of the references' masks
    ref_fg: dict[tuple, tuple[float, float]] = field(default_factory=dict)
    # with collect(loo=True): variant -> [(h, w, k_max)] leave-one-out distances of each training image
    loo_knn: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)
    # variant -> [(h, w) bool] foreground masks of the training images (the mask variants)
    loo_fg: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)
    # with collect(subspace=...): (blocks, variance fraction) -> [(h, w)] PCA residual per test image,
    # and the leave-one-out residuals of the training images; the number of components kept
    residual: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)
    loo_residual: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)
    components: dict[tuple, int] = field(default_factory=dict)


def _pool(feats: torch.Tensor, pool: int) -> torch.Tensor:
    """(h, w, L, D) -> same, each block averaged over a pool x pool neighbourhood (PatchCore)."""
    h, w, n_blocks, d = feats.shape
    return neighbourhood_mean(feats.reshape(1, h, w, n_blocks * d), pool).reshape(h, w, n_blocks, d)


def _features(store: FeatureStore, path, shorter_side: int, brightness: str = "as_is") -> torch.Tensor:
    image = load_image_rgb(path)
    if brightness == "standardise":         # as PatchKNN does (PatchKNNConfig.brightness)
        image = standardise_brightness(image)
    x = to_model_input(image[None], shorter_side=shorter_side)
    return store.get(x)[0].float()                                      # (h, w, 12, D)


def _unit(feats: torch.Tensor, sel: list[int]) -> torch.Tensor:
    """(h, w, L, D) raw -> (h * w, len(sel) * D) float64, the chosen blocks concatenated and L2-normalised."""
    x = feats[:, :, sel].reshape(feats.shape[0] * feats.shape[1], -1).double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class _Subspace:
    """PCA of the bank's unit features (SubspaceAD): the residual of a patch outside the top components.

    The moments are summed per training image, so the leave-one-out PCA of image j is the same
    arithmetic on the sums without j's share (no second pass over the features).
    """

    def __init__(self, parts: list[torch.Tensor]) -> None:
        self.sums = [p.sum(0) for p in parts]
        self.outers = [p.T @ p for p in parts]
        self.counts = [p.shape[0] for p in parts]
        self._eigen: dict[int | None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def basis(self, fraction: float, *, leave_out: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), components (D, c)): the fewest components explaining ``fraction`` of the variance."""
        if leave_out not in self._eigen:                      # one eigh per left-out image, for all fractions
            keep = [i for i in range(len(self.counts)) if i != leave_out]
            n = sum(self.counts[i] for i in keep)
            mean = cast(torch.Tensor, sum(self.sums[i] for i in keep)) / n
            cov = cast(torch.Tensor, sum(self.outers[i] for i in keep)) / n - torch.outer(mean, mean)
            values, vectors = torch.linalg.eigh(cov)                 # ascending
            self._eigen[leave_out] = (mean, values.flip(0).clamp_min(0.0), vectors.flip(1))
        mean, values, vectors = self._eigen[leave_out]
        explained = torch.cumsum(values, 0) / values.sum()
        c = int(torch.searchsorted(explained, torch.tensor(fraction, dtype=explained.dtype))) + 1
        return mean, vectors[:, : min(c, vectors.shape[1])]

    @staticmethod
    def residual(x: torch.Tensor, mean: torch.Tensor, comps: torch.Tensor) -> torch.Tensor:
        """(Q, D) unit features -> (Q,) float32 squared distance to the affine subspace."""
        centred = x - mean
        return ((centred * centred).sum(1) - ((centred @ comps) ** 2).sum(1)).clamp_min(0.0).float()


def _auto_masks(ref_fg: float, ref_border: float) -> bool:
    """PatchKNN's ``masking="auto"`` rule on the references' foreground and border-ring shares."""
    return ref_border <= 0.2 and 0.0 < ref_fg < 1.0


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
    loo: bool = False,
    k_max: int = K_MAX,
    auto_masks_only: bool = False,
    subspace: Sequence[tuple[tuple[int, ...], float]] = (),
    brightness: str = "as_is",
) -> SweepData:
    """Run the kNN search once for every (blocks, pool) variant on every test image.

    Args:
        variants: (blocks (1-based), pool) pairs; pool 1 = raw patches, 3 = 3x3 neighbourhood mean.
        brightness: "standardise" to score the frames as ``PatchKNNConfig(brightness="standardise")`` does;
            "as_is" (the default) as they are. The product's "auto" depends on a masking decision: set it here.
        mask_variants: the variants for which foreground masks are computed too (a PCA per image
            and variant: not cheap on a CPU, so only for a few).
        k_max: nearest distances kept per patch (1 = only the nearest: a max instead of a top-k).
        auto_masks_only: compute the test images' masks only for the mask variants whose references
            turn ``masking="auto"`` on (then only "auto" and "off" can be derived for the others).
        loo: also search every training image leave-one-out (the good-score scale of each variant).
        subspace: (blocks, variance fraction) pairs: PCA residual maps of the test images (and, with
            ``loo``, leave-one-out ones of the training images) on unpooled unit features.
    """
    t0 = time.perf_counter()
    pools = sorted({p for _, p in variants})
    used_blocks = sorted({b for blocks, _ in variants for b in blocks})
    bidx = [b - 1 for b in used_blocks]
    # bank per pool: (M, L, D) raw features of the used blocks
    banks: dict[int, torch.Tensor] = {}
    train_feats = [_features(store, p, shorter_side, brightness)[:, :, bidx] for p in train_paths]
    for pool in pools:
        banks[pool] = torch.cat([_pool(f, pool).reshape(-1, len(bidx), f.shape[-1]) for f in train_feats])
    data = SweepData(category=category.name, items=list(items), geos=[], masks_gt=[], frame_masks=[])
    # reference foreground shares, as PatchKNN._decide_masking computes them (masks of raw features)
    for blocks, pool in variants:
        data.knn[(blocks, pool)] = []
        data.fg[(blocks, pool)] = []
    for blocks, pool in mask_variants:
        sel = [used_blocks.index(b) for b in blocks]
        train_masks = [foreground_masks(f[:, :, sel].reshape(1, *f.shape[:2], -1)) for f in train_feats]
        shares = [mask_fractions(m, border=0.2) for m in train_masks]
        data.loo_fg[(blocks, pool)] = [m[0] for m in train_masks]
        data.ref_fg[(blocks, pool)] = (float(torch.stack([s[0] for s in shares]).mean()),
                                       float(torch.stack([s[1] for s in shares]).mean()))
    test_masks = [v for v in mask_variants if not auto_masks_only or _auto_masks(*data.ref_fg[v])]
    bank_sq = {pool: (bank * bank).sum(-1) for pool, bank in banks.items()}             # (M, L)
    banks_lp = {pool: bank.to(dtype) for pool, bank in banks.items()}
    single = all(len(blocks) == 1 for blocks, _ in variants)
    units_lp = {pool: (bank / bank.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(dtype)
                for pool, bank in banks.items()} if single else {}
    data.k_max = k_max
    offsets = np.cumsum([0] + [f.shape[0] * f.shape[1] for f in train_feats]).tolist()
    pca: dict[tuple[int, ...], _Subspace] = {}
    bases: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for blocks, fraction in subspace:
        sel = [used_blocks.index(b) for b in blocks]
        if blocks not in pca:
            pca[blocks] = _Subspace([_unit(f, sel) for f in train_feats])
        mean, comps = bases[(blocks, fraction)] = pca[blocks].basis(fraction)
        data.components[(blocks, fraction)] = int(comps.shape[1])
        data.residual[(blocks, fraction)] = []
        data.loo_residual[(blocks, fraction)] = []
        if loo:
            for j, f in enumerate(train_feats):
                mean_j, comps_j = pca[blocks].basis(fraction, leave_out=j)
                res = _Subspace.residual(_unit(f, sel), mean_j, comps_j)
                data.loo_residual[(blocks, fraction)].append(res.reshape(f.shape[:2]))

    def search(raw: torch.Tensor, out: dict[tuple, list[torch.Tensor]], skip: tuple[int, int] | None) -> None:
        """kNN distances of one image's patches for every variant, appended to ``out``; ``skip`` = own bank rows."""
        h, w = raw.shape[:2]
        for pool in pools:
            q = _pool(raw, pool).reshape(h * w, len(bidx), -1)
            # bfloat16 products with float32 accumulation (oneDNN): 2x faster on CPUs with
            # avx512_bf16; the cosine error is ~1e-4, far below the distances being ranked (0.05-0.5).
            if single:                  # one block per variant: unit vectors, the cosine is the product itself
                unit = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                dots = [unit[:, j].to(dtype) @ units_lp[pool][:, j].T for j in range(len(bidx))]
            else:
                dots = [(q[:, j].to(dtype) @ banks_lp[pool][:, j].T).float() for j in range(len(bidx))]
            q_sq = (q * q).sum(-1)                                                       # (Q, L)
            for blocks, vpool in variants:
                if vpool != pool:
                    continue
                sel = [used_blocks.index(b) for b in blocks]
                if single:
                    sim = dots[sel[0]]
                else:
                    sim = dots[sel[0]].clone()
                    for j in sel[1:]:
                        sim += dots[j]
                    q_norm = torch.sqrt(q_sq[:, sel].sum(1))[:, None]
                    sim /= (q_norm * torch.sqrt(bank_sq[pool][:, sel].sum(1))[None]).clamp_min(1e-12)
                if skip is not None:
                    sim[:, skip[0] : skip[1]] = -float("inf")
                best = sim.amax(1, keepdim=True) if k_max == 1 else sim.topk(k_max, dim=1).values
                nearest = (1.0 - best.float()).clamp_(0.0, 2.0)
                out.setdefault((blocks, pool), []).append(nearest.reshape(h, w, k_max))
            del dots

    if loo:
        for j, f in enumerate(train_feats):
            search(f, data.loo_knn, (offsets[j], offsets[j + 1]))
        logger.info("%s: %d training images searched leave-one-out (%.0f s)", category.name, len(train_feats),
                    time.perf_counter() - t0)
    for n, item in enumerate(items):
        image = load_image_rgb(item.path)
        h_img, w_img = image.shape[:2]
        data.geos.append(frame_geometry(h_img, w_img, shorter_side=shorter_side, patch_size=14))
        mask = load_mask(item.mask_path, (h_img, w_img)) if item.mask_path else np.zeros((h_img, w_img), bool)
        data.frame_masks.append(mask)
        small = resize_for_pixel_metrics(np.zeros((2, 2), np.float32), mask, pixel_size=pixel_size)[1]
        data.masks_gt.append(small)
        raw = _features(store, item.path, shorter_side, brightness)[:, :, bidx]          # (h, w, L, D)
        h, w = raw.shape[:2]
        search(raw, data.knn, None)
        for blocks, vpool in test_masks:
            sel = [used_blocks.index(b) for b in blocks]
            data.fg[(blocks, vpool)].append(foreground_masks(raw[:, :, sel].reshape(1, h, w, -1))[0])
        for blocks, fraction in subspace:
            sel = [used_blocks.index(b) for b in blocks]
            mean, comps = bases[(blocks, fraction)]
            data.residual[(blocks, fraction)].append(_Subspace.residual(_unit(raw, sel), mean, comps).reshape(h, w))
        if n % 10 == 0:
            logger.info("%s: %d/%d test images searched (%.0f s)", category.name, n + 1, len(items),
                        time.perf_counter() - t0)
    return data


@dataclass(frozen=True, kw_only=True)
class Setting:
    """The kNN-side settings a sweep derives without another search (PatchKNNConfig's names in brackets)."""

    blocks: tuple[int, ...]          # backbone blocks, 1-based, concatenated
    pool: int = 1                    # neighbourhood mean (patch_pooling)
    k: int = 1                       # neighbours averaged (k), at most collect()'s k_max
    top_percent: float = 1.0         # image score = mean of the top % patch scores (top_percent)
    sigma: float = 4.0               # blur of the map (blur_sigma)
    masking: str = "off"             # "off" | "on" | "auto" (masking)
    # issue 11 levers (need collect(loo=True) when ``normalise``):
    pools: tuple[int, ...] = ()      # multi-scale: mean of the kNN maps at these poolings (replaces pool)
    subspace: float | None = None    # fuse the PCA residual kept at this variance fraction
    subspace_weight: float = 0.5     # its weight in the fusion (the kNN part gets the rest)
    normalise: bool = True           # divide each fused part by its leave-one-out good-score scale
    # "map": the parts' patch maps summed as above; "max_z": each part scored as an image on its own,
    # turned into a z-score by its leave-one-out image scores, the largest kept (the map is the first part's);
    # "sum_z": those z-scores summed with ``z_weights`` (one per part), the map the first part's;
    # "sum_z_proportional": the same with each part's spread taken as its leave-one-out mean
    # (``ScaleFusion.from_means``'s rule) instead of their standard deviation
    fusion: str = "map"
    z_weights: tuple[float, ...] = ()


def _loo_scale(maps: list[torch.Tensor], top_percent: float) -> float:
    """Mean leave-one-out image score (top-% mean) of a part: its good-score scale."""
    tops = []
    for m in maps:
        flat = m.reshape(-1)
        tops.append(float(flat.topk(max(int(flat.numel() * top_percent / 100.0), 1)).values.mean()))
    return float(np.mean(tops))


def _parts(data: SweepData, setting: Setting) -> list[tuple[float, list[torch.Tensor], list[torch.Tensor]]]:
    """(weight, test maps, leave-one-out maps) of every part the setting fuses."""
    blocks, k = tuple(setting.blocks), setting.k
    pools = setting.pools or (setting.pool,)
    knn_weight = 1.0 - setting.subspace_weight if setting.subspace is not None else 1.0
    out = []
    for pool in pools:
        key = (blocks, pool)
        if key not in data.knn:
            msg = f"no kNN distances were collected for {key}; add it to the variants of collect()"
            raise ValueError(msg)
        out.append((knn_weight / len(pools), [d[..., :k].mean(-1) for d in data.knn[key]],
                    [d[..., :k].mean(-1) for d in data.loo_knn.get(key, [])]))
    if setting.subspace is not None:
        key_s = (blocks, setting.subspace)
        if key_s not in data.residual:
            msg = f"no PCA residuals were collected for {key_s}; add it to the subspace of collect()"
            raise ValueError(msg)
        out.append((setting.subspace_weight, data.residual[key_s], data.loo_residual[key_s]))
    return out


def fused_patch_maps(data: SweepData, setting: Setting) -> list[torch.Tensor]:
    """(h, w) patch scores of every test image for a setting, before masking: one part's kNN map, or
    the weighted sum of several parts, each divided by its leave-one-out scale and the sum multiplied
    by the first part's scale (so the unit stays that of the plain kNN distance)."""
    parts = _parts(data, setting)
    if len(parts) == 1:
        return parts[0][1]
    scales = [1.0] * len(parts)
    if setting.normalise:
        if any(not loo for _, _, loo in parts):
            msg = "normalise needs the leave-one-out maps: collect(..., loo=True)"
            raise ValueError(msg)
        scales = [_loo_scale(loo, setting.top_percent) for _, _, loo in parts]
    unit = scales[0]
    n = len(parts[0][1])
    return [unit * cast(torch.Tensor, sum(wt * maps[i] / sc for (wt, maps, _), sc in zip(parts, scales, strict=True)))
            for i in range(n)]


def derive(
    data: SweepData, setting: Setting, *, maps: bool = True, full_size: bool = False,
) -> tuple[np.ndarray, list[np.ndarray], bool]:
    """Image scores and anomaly maps of every test image for one setting, as PatchKNN with it would give.

    Args:
        maps: also make the maps (the image score does not need them).
        full_size: maps at each frame's size (as ``PatchKNN.predict``); else at the resized scale.

    Returns:
        (N,) float32 image scores, N (H, W) float32 maps (empty when not ``maps``), whether masking was on.
    """
    key = (tuple(setting.blocks), setting.pools[0] if setting.pools else setting.pool)
    k, masking = setting.k, setting.masking
    if key not in data.knn:
        msg = f"no kNN distances were collected for {key}; add it to the variants of collect()"
        raise ValueError(msg)
    if not 1 <= k <= data.k_max:
        msg = f"k must be in 1..{data.k_max} (collect() kept the {data.k_max} nearest distances), got {k}"
        raise ValueError(msg)
    # masks come from the unpooled features of the blocks, so any pooling's masks serve
    mask_key = key if key in data.ref_fg else next((v for v in data.ref_fg if v[0] == key[0]), key)
    if masking != "off" and mask_key not in data.ref_fg:
        msg = f"no foreground masks were collected for {key}; add it to mask_variants"
        raise ValueError(msg)
    ref_fg, ref_border = data.ref_fg.get(mask_key, (1.0, 1.0))
    active = masking == "on" or (masking == "auto" and _auto_masks(ref_fg, ref_border))
    if active and len(data.fg[mask_key]) != len(data.items):
        msg = f"the test masks of {mask_key} were not collected (collect(auto_masks_only=True) left them out)"
        raise ValueError(msg)

    def image_score(patch: torch.Tensor, fg: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        if active and fg is not None and float(fg.float().mean()) >= 0.5 * ref_fg:   # PatchKNN's fallback rule
            patch = torch.where(fg, patch, torch.zeros_like(patch))
        flat = patch.reshape(-1)
        n_top = max(int(flat.numel() * setting.top_percent / 100.0), 1)
        return float(flat.topk(n_top).values.mean()), patch

    def test_fg(i: int) -> torch.Tensor | None:
        return data.fg[mask_key][i] if active else None

    if setting.fusion in ("max_z", "sum_z", "sum_z_proportional"):
        parts = _parts(data, setting)
        if any(not loo for _, _, loo in parts) or (active and mask_key not in data.loo_fg):
            msg = f"{setting.fusion} fusion needs the leave-one-out maps (and masks): collect(..., loo=True)"
            raise ValueError(msg)
        if setting.fusion != "max_z" and len(setting.z_weights) != len(parts):
            msg = (f"{setting.fusion} fusion needs one weight per part ({len(parts)}), "
                   f"got z_weights={setting.z_weights!r}")
            raise ValueError(msg)
        loo_fg = data.loo_fg.get(mask_key, [None] * len(parts[0][2]))
        stats, z_parts = [], []
        for _, part_maps, loo_maps in parts:
            loo = np.asarray([image_score(m, loo_fg[j])[0] for j, m in enumerate(loo_maps)])
            test = np.asarray([image_score(m, test_fg(i))[0] for i, m in enumerate(part_maps)])
            spread = loo.mean() if setting.fusion == "sum_z_proportional" else loo.std()
            stats.append((float(loo.mean()), max(float(spread), 1e-6)))
            z_parts.append((test - stats[-1][0]) / stats[-1][1])
        z = np.stack(z_parts)
        combined = np.max(z, axis=0) if setting.fusion == "max_z" else np.asarray(setting.z_weights) @ z
        fused = stats[0][0] + stats[0][1] * combined
        z_maps: list[np.ndarray] = []
        for i, m in enumerate(parts[0][1] if maps else []):
            patch = image_score(m, test_fg(i))[1]
            z_maps.append(anomaly_maps(patch[None], data.geos[i], sigma=setting.sigma, full_size=full_size)[0].numpy())
        return fused.astype(np.float32), z_maps, active
    if setting.fusion != "map":
        msg = f"fusion must be 'map', 'max_z', 'sum_z' or 'sum_z_proportional', got {setting.fusion!r}"
        raise ValueError(msg)
    scores: list[float] = []
    out_maps: list[np.ndarray] = []
    for i, patch in enumerate(fused_patch_maps(data, setting)):
        value, patch = image_score(patch, test_fg(i))
        scores.append(value)
        if maps:
            amap = anomaly_maps(patch[None], data.geos[i], sigma=setting.sigma, full_size=full_size)
            out_maps.append(amap[0].numpy())
    return np.asarray(scores, dtype=np.float32), out_maps, active


def score(data: SweepData, *, pixel: bool = True, pixel_size: int = 256, **setting: Any) -> dict[str, float]:
    """Image AUROC (and AUPRO / pixel AUROC when ``pixel``) for one setting, given as ``Setting``'s fields
    (``score(data, blocks=(8,), k=3)``); the scores are ``derive``'s."""
    scores, amaps, active = derive(data, Setting(**setting), maps=pixel)
    labels = np.array([t.label for t in data.items])
    out = {"image_auroc": image_auroc(scores, labels), "masking_active": float(active)}
    if pixel:
        maps = [resize_for_pixel_metrics(amap, data.frame_masks[i], pixel_size=pixel_size)[0]
                for i, amap in enumerate(amaps)]
        out["aupro"] = aupro(maps, data.masks_gt)
        out["pixel_auroc"] = pixel_auroc(maps, data.masks_gt)
    return out
