"""Zero-shot anomaly scoring of a batch of images against each other: no training, no good images.

A patch that finds close matches in many other images of the batch is normal, and one that finds
a close match in few or none is anomalous. Defects differ from each other and cover few patches, so
a defect's patch lacks matches in most images even when several images hold one. MuSc (Li et al.,
"MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of the
Unlabeled Images", ICLR 2024) scores this way and reaches 97.8 image AUROC on MVTec AD. This module
follows it (reference code: github.com/xrli-U/MuSc, written anew here):

1. patch features of each image (``DinoBackbone``; ``models.preprocess``: shorter side resized,
   cropped to a multiple of the patch size), kept unnormalised in float16 on the CPU, and one global
   descriptor per image (the L2-normalised mean patch feature); ours: each frame first brought to one
   grey mean and spread where the scene fills the frame (``brightness``, decided on the batch's first
   frames as the few-shot path decides it: transistor 0.918 -> 0.929, magnetic tile 0.815 -> 0.821 image
   AUROC on the full test sets, fryum left as is; benchmarks/README.md, sixteenth look);
2. for each aggregation degree r in ``scales`` (MuSc's LNAMD, r = 1, 3, 5): every patch feature
   averaged over its r x r neighbourhood, L2-normalised;
3. up to ``max_references`` reference images (a seeded random subset when the batch is larger);
4. for each patch of image *i* and each reference image *j != i*: the cosine distance to the
   closest patch of *j* (MuSc's MSM);
5. patch score at r = mean of the smallest ``neighbour_fraction`` (30 %) of those per-image minima;
   the patch score is the mean over the scales;
6. top-patch score of an image = mean of its top ``top_percent`` % patch scores; image score =
   that, re-scored by its neighbours (MuSc's RsCIN, ``rescore``): the similarity-weighted mean of
   the top-patch scores of its k most similar images (itself included) by the global descriptor,
   averaged over k in ``rescore_k``;
7. anomaly map = bilinear upsampling + Gaussian blur, as in ``PatchKNN``.

Verdict rule (``robust_thresholds``, used by ``inspector review --zero-shot``): REVIEW when an image's
re-scored score reaches the batch's median image score + 3 robust sigmas (1.4826 x MAD), FAIL at
+ 6; it assumes most images of the batch are good. A rule fitted to the distribution of all patch
scores (log-normal, REVIEW at its 1 - 1e-4 quantile) was measured and rejected: on 60-image subsets
it flagged 19 % of mvtec_transistor's defects and 0 % of visa_fryum's (3 % in a 32-of-37 defective
transistor batch), against 25 %, 30 % and 25 % for this rule on the same scores, no good image
flagged by either (benchmarks/README.md, zero-shot section).

Cost: 448 px and three scales make this slower than the former 224 px, single-scale scoring. On
one CPU thread (mvtec_transistor, features and mutual scoring), a 14-image batch took 10.4x as long
(3 interleaved repeats) and a 30-image batch 12.8x (one run each; features about 6x, the mutual
scoring 39-54x, and it grows with the batch up to ``max_references``), so large lots want a GPU or
fewer references (benchmarks/README.md). On one H200 a lot scores at 12 ms an image with 64 references
(benchmarks/speed_notes.md).

Memory is bounded for batches of thousands: features are float16 on the CPU (ViT-S at 448 px,
1024 patches: 0.8 MB an image); each scale's reference bank is built once (``max_references`` x
patches x 384 float16; on CUDA it stays on the device) and distances are computed in blocks of at
most ``block_elements`` (16x that on CUDA).

Example:
    >>> scorer = ZeroShotScorer(backbone=backbone, config=ZeroShotConfig())
    >>> scorer.add(images_rgb)                       # list of (H, W, 3) uint8 RGB
    >>> scores = scorer.score()
    >>> scores.pred_score.shape, scorer.anomaly_map(0, scores.patch_scores[0]).shape
    ((N,), (H, W))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from models.backbone import DinoBackbone, resolve_device
from models.detectors._foreground import config_masks, decide_brightness
from models.detectors.patch_knn_config import BRIGHTNESS_MODES, PatchKNNConfig, check_score_options
from models.preprocess import (
    FrameGeometry,
    anomaly_maps,
    check_image,
    frame_geometry,
    standardise_brightness,
    to_model_input,
)

if TYPE_CHECKING:
    from models.evaluation import Category, EvalReport, TestItem

__all__ = [
    "MAD_TO_SIGMA",
    "ZeroShotConfig",
    "ZeroShotScorer",
    "ZeroShotScores",
    "evaluate_zero_shot",
    "patch_scores_to_map",
    "rescore",
    "robust_thresholds",
]

logger = logging.getLogger(__name__)

# Scales the median absolute deviation to the standard deviation of a normal distribution.
MAD_TO_SIGMA: Final = 1.4826


# On CUDA a distance block may be this many times ``block_elements`` (16 x 64 MB = 1 GB of float32):
# fewer, larger matrix products; a GPU has the memory that the CPU default is sized against.
CUDA_BLOCK_FACTOR: Final = 16


def _odd_scales(value: object) -> bool:
    return (isinstance(value, tuple) and len(value) > 0
            and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 and r % 2 == 1 for r in value))


@dataclass(frozen=True, kw_only=True)
class ZeroShotConfig:
    """Options of batch zero-shot scoring, with where each default comes from."""

    # --- input ---
    shorter_side: int = 448  # the few-shot path's (PatchKNNConfig; AnomalyDINO: 448); MuSc uses 518
    # ours: every frame brought to one grey mean and spread before the backbone (models.preprocess.
    # standardise_brightness), as PatchKNNConfig.brightness: "auto" where the scene fills the frame, decided as the
    # few-shot path decides it, on the batch's first frames; "as_is" / "standardise" say it outright
    brightness: str = "auto"

    # --- mutual scoring (MuSc, ICLR 2024) ---
    scales: tuple[int, ...] = (1, 3, 5)  # MuSc r_list: neighbourhood aggregation degrees, scores fused by mean
    # ours: reference images per batch, a seeded random subset above this. 64, not every image (MuSc) nor the
    # former 200: on the full transistor / fryum test sets 64 gave 0.918 / 0.915 image AUROC against 0.911 /
    # 0.907 with every other image as reference, at 1.5 / 2.3x less time (chosen on these dev sets)
    max_references: int = 64
    neighbour_fraction: float = 0.3  # MuSc topmin_max: mean of the smallest 30 % of the per-image minima
    top_percent: float = 1.0  # top-patch score = mean of the top 1 % patch scores (AnomalyDINO; MuSc: max)
    rescore_k: tuple[int, ...] = (1, 2, 3)  # MuSc RsCIN k_list for MVTec AD (VisA: 1, 8, 9); () = off
    blur_sigma: float = 4.0  # Gaussian blur of the upsampled map (AnomalyDINO / anomalib, sigma 4)

    # --- compute ---
    batch_size: int = 8  # frames per backbone call
    block_elements: int = 1 << 24  # largest distance block (query patches x reference patches), 64 MB fp32
    seed: int = 0  # picks the reference subset

    def __post_init__(self) -> None:
        if not _odd_scales(self.scales):
            msg = f"ZeroShotConfig.scales must be a non-empty tuple of odd integers >= 1 (1 = no aggregation), " \
                  f"got {self.scales!r}"
            raise ValueError(msg)
        if not isinstance(self.rescore_k, tuple) or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.rescore_k):
            msg = (f"ZeroShotConfig.rescore_k must be a tuple of integers >= 1 (() = no re-scoring), "
                   f"got {self.rescore_k!r}")
            raise ValueError(msg)
        if self.brightness not in BRIGHTNESS_MODES:
            msg = f"ZeroShotConfig.brightness must be one of {', '.join(BRIGHTNESS_MODES)}, got {self.brightness!r}"
            raise ValueError(msg)
        for name in ("shorter_side", "max_references", "batch_size", "block_elements"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"ZeroShotConfig.{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)
        if not 0.0 < self.neighbour_fraction <= 1.0:
            msg = f"ZeroShotConfig.neighbour_fraction must be in (0, 1], got {self.neighbour_fraction!r}"
            raise ValueError(msg)
        check_score_options("ZeroShotConfig", top_percent=self.top_percent, blur_sigma=self.blur_sigma)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists, as they read back from JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class ZeroShotScores(NamedTuple):
    """What ``ZeroShotScorer.score`` returns, in the order the images were added."""

    pred_score: np.ndarray  # (N,) float32 image scores after re-scoring (cosine distance, 0 = like the others)
    patch_scores: list[np.ndarray]  # N arrays (h_i, w_i) float32, one score per patch
    top_score: np.ndarray  # (N,) float32 mean of each image's top patch scores, before re-scoring


def robust_thresholds(scores: np.ndarray | Sequence[float], *, k_review: float = 3.0,
                      k_fail: float = 6.0) -> tuple[float, float, str]:
    """Review and fail thresholds from a batch's own scores: median + k * MAD (scaled to sigma).

    Most of a batch is assumed good; the median and the median absolute deviation ignore the few
    outliers that the mean and standard deviation would follow.

    Args:
        scores: (N,) image scores of the batch, N >= 1.
        k_review: robust standard deviations above the median for REVIEW.
        k_fail: the same for FAIL (>= ``k_review``).

    Returns:
        ``(review, fail, rule)``: the thresholds and one sentence saying how they were chosen.

    Raises:
        ValueError: no scores, or ``k_fail < k_review``.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        msg = "robust_thresholds needs at least one finite score"
        raise ValueError(msg)
    if k_fail < k_review:
        msg = f"k_fail ({k_fail}) must not be below k_review ({k_review})"
        raise ValueError(msg)
    median = float(np.median(values))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    # All scores equal (or one image): a tiny spread so only strictly higher scores are flagged.
    sigma = max(sigma, 1e-6 * max(abs(median), 1.0))
    review, fail = median + k_review * sigma, median + k_fail * sigma
    rule = (f"zero-shot, no recipe: REVIEW at median + {k_review:g} x robust sigma, FAIL at median + "
            f"{k_fail:g} x robust sigma of the batch's scores (median {median:.4f}, sigma = "
            f"{MAD_TO_SIGMA} x MAD = {sigma:.4f}, {values.size} images)")
    return review, fail, rule


def rescore(scores: np.ndarray, descriptors: np.ndarray | torch.Tensor, ks: Sequence[int],
            *, block_rows: int = 1024) -> np.ndarray:
    """Re-score images by their most similar images (MuSc's RsCIN, "re-scoring with constrained image-level
    neighbourhood").

    For each k: the image's new score is the similarity-weighted mean of the scores of its k most
    similar images by the global descriptor (itself included, weight 1; negative similarities count
    0); the result is the mean over ``ks``. A weighted mean of scores, so the scale is kept (MuSc
    min-max normalises first, which changes no ranking).

    Args:
        scores: (N,) image scores.
        descriptors: (N, D) L2-normalised global descriptors.
        ks: neighbourhood sizes (k = 1 is the image alone); empty = no re-scoring.
        block_rows: rows of the (N, N) similarity matrix computed at once (memory bound).

    Returns:
        (N,) float32 re-scored image scores.
    """
    values = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    if not ks or values.numel() < 2:
        return values.numpy().copy()
    desc = torch.as_tensor(descriptors).float()
    n = values.numel()
    out = torch.zeros(n)
    k_max = min(max(ks), n)
    for r0 in range(0, n, block_rows):
        sim = desc[r0 : r0 + block_rows] @ desc.T                  # (rows, N) cosine similarity
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + r0] = math.inf                            # itself first, whatever the ties
        top_sim, top_idx = sim.topk(k_max, dim=1)
        top_sim[:, 0] = 1.0
        weights = top_sim.clamp(min=0.0)
        for k in ks:
            kk = min(k, n)
            w = weights[:, :kk]
            out[r0 : r0 + sim.shape[0]] += (w * values[top_idx[:, :kk]]).sum(dim=1) / w.sum(dim=1)
    return (out / len(ks)).numpy()


def patch_scores_to_map(
    patch_scores: np.ndarray,
    frame_hw: tuple[int, int],
    *,
    shorter_side: int,
    patch_size: int = 14,
    blur_sigma: float = 4.0,
) -> np.ndarray:
    """An anomaly map at frame size from a frame's patch scores (bilinear upsampling + blur, as ``PatchKNN``).

    Lets a caller that kept only the small patch-score grids (e.g. a resumed review) rebuild the
    maps without the features.

    Args:
        patch_scores: (h, w) float32 patch scores of one frame.
        frame_hw: (H, W) of the frame they were computed on.
        shorter_side: the ``ZeroShotConfig.shorter_side`` used.
        patch_size: the backbone's patch size.
        blur_sigma: the ``ZeroShotConfig.blur_sigma`` used.

    Returns:
        (H, W) float32 anomaly map.

    Raises:
        ValueError: the grid does not match what ``frame_hw`` gives at ``shorter_side``.
    """
    geo = frame_geometry(int(frame_hw[0]), int(frame_hw[1]), shorter_side=shorter_side, patch_size=patch_size)
    grid = np.asarray(patch_scores, dtype=np.float32)
    expected = (geo.crop[0] // patch_size, geo.crop[1] // patch_size)
    if grid.shape != expected:
        msg = (f"patch scores of shape {grid.shape} do not fit a {frame_hw[0]}x{frame_hw[1]} frame at "
               f"shorter_side {shorter_side} (expected {expected})")
        raise ValueError(msg)
    return anomaly_maps(torch.from_numpy(grid)[None], geo, sigma=blur_sigma, full_size=True)[0].numpy()


@dataclass(frozen=True)
class _Entry:
    features: torch.Tensor  # (h * w, D) float16, as the backbone gave them (not normalised), CPU
    descriptor: torch.Tensor  # (D,) float32 L2-normalised mean patch feature
    grid: tuple[int, int]  # (h, w) patches
    geo: FrameGeometry


class ZeroShotScorer:
    """Holds the patch features of a batch of images and scores each against the others.

    Args:
        backbone: the DINOv2 feature extractor.
        config: scoring options.
        device: ``"auto" | "cpu" | "cuda"`` for the backbone and the distance blocks, or None for the
            backbone's device. Features are kept on the CPU in float16 either way.
    """

    def __init__(
        self, *, backbone: DinoBackbone, config: ZeroShotConfig | None = None, device: str | torch.device | None = None
    ) -> None:
        if device is not None:
            backbone = backbone.to(resolve_device(device))
        self._backbone = backbone
        self._config = config if config is not None else ZeroShotConfig()
        self._entries: list[_Entry] = []
        # whether frames are brightness-standardised; for "auto" decided on the first frames added
        self.brightness_active: bool | None = (None if self._config.brightness == "auto"
                                               else self._config.brightness == "standardise")

    @property
    def config(self) -> ZeroShotConfig:
        """The scoring options."""
        return self._config

    @property
    def device(self) -> torch.device:
        """Where the backbone runs."""
        return next(self._backbone.parameters()).device

    def __len__(self) -> int:
        return len(self._entries)

    @torch.inference_mode()
    def add(self, images_rgb: Sequence[np.ndarray]) -> None:
        """Extract and keep the patch features of more images of the batch.

        Args:
            images_rgb: frames, each (H, W, 3) uint8 RGB (or (H, W) grayscale), any sizes; frames of
                one size next to each other share backbone calls.

        Raises:
            ValueError: a frame is not a valid image.
        """
        frames = [check_image(image, len(self._entries) + i) for i, image in enumerate(images_rgb)]
        if self.brightness_active is None and frames:
            self.brightness_active, probed = self._decide_brightness(frames)
            if not self.brightness_active:       # the probed frames' features, as they are, are theirs: kept
                for raw, geo in probed:
                    self._keep(raw, geo)
                frames = frames[len(probed):]
        if self.brightness_active:
            frames = [standardise_brightness(frame) for frame in frames]
        start = 0
        while start < len(frames):
            stop = start + 1
            while (stop < len(frames) and stop - start < self._config.batch_size
                   and frames[stop].shape == frames[start].shape):
                stop += 1
            self._extract(frames[start:stop])
            start = stop

    def _decide_brightness(self, frames: list[np.ndarray]) -> tuple[bool, list[tuple[torch.Tensor, FrameGeometry]]]:
        """Brightness "auto" as the few-shot path decides it (``decide_brightness``): standardised unless the first
        ``BRIGHTNESS_PROBE`` frames, as they are, show a part on a plain background (one backbone pass each).

        Returns:
            (standardise, the probed frames' (1, h, w, D) raw features and geometry, in order).
        """
        cfg = PatchKNNConfig(shorter_side=self._config.shorter_side)      # its masking options and "auto"s
        with torch.inference_mode():
            return decide_brightness(cfg, frames, self._raw, lambda raw: config_masks(raw, cfg))

    def _raw(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, FrameGeometry]:
        """Same-sized frames -> ((B, h, w, D) float32 raw patch features, their geometry)."""
        height, width = frames[0].shape[:2]
        patch = self._backbone.patch_size
        geo = frame_geometry(height, width, shorter_side=self._config.shorter_side, patch_size=patch)
        x = to_model_input(np.stack(frames), shorter_side=self._config.shorter_side, patch_size=patch,
                           device=self.device)
        return self._backbone(x).float(), geo

    def _extract(self, frames: list[np.ndarray]) -> None:
        self._keep(*self._raw(frames))

    def _keep(self, raw: torch.Tensor, geo: FrameGeometry) -> None:
        """Keep (B, h, w, D) raw features as the batch's next entries."""
        b, h, w, d = raw.shape
        descriptors = F.normalize(raw.mean(dim=(1, 2)), dim=-1).cpu()
        feats = raw.reshape(b, h * w, d).to("cpu", torch.float16)
        self._entries.extend(_Entry(features=f.contiguous(), descriptor=g, grid=(h, w), geo=geo)
                             for f, g in zip(feats, descriptors, strict=True))

    def _features_at(self, index: int, r: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(h * w, D) L2-normalised features of image ``index``, each averaged over its r x r neighbourhood.

        MuSc's LNAMD: a patch is described with its context, so a defect larger than a patch is
        judged as a whole; edge patches average the neighbours that exist.
        """
        entry = self._entries[index]
        h, w = entry.grid
        x = entry.features.to(device, torch.float32)
        if r > 1:
            grid = x.T.reshape(1, -1, h, w)
            x = F.avg_pool2d(grid, r, stride=1, padding=r // 2, count_include_pad=False)[0].reshape(-1, h * w).T
        return F.normalize(x, dim=-1).to(dtype)

    def references(self) -> np.ndarray:
        """Indices of the reference images: all, or a seeded random subset of ``max_references``."""
        n = len(self._entries)
        if n <= self._config.max_references:
            return np.arange(n)
        rng = np.random.default_rng(self._config.seed)
        return np.sort(rng.choice(n, size=self._config.max_references, replace=False))

    @torch.inference_mode()
    def score(self, *, progress: Callable[[int, int], None] | None = None) -> ZeroShotScores:
        """Score every image against the reference images (itself excluded), at every scale.

        Args:
            progress: called as ``progress(done, total)`` after each block of images is scored at
                one scale; ``total`` is the number of images times the number of scales.

        Returns:
            ``ZeroShotScores(pred_score (N,), patch_scores [(h_i, w_i)], top_score (N,))``.

        Raises:
            ValueError: fewer than 2 images (there is nothing to compare with).
        """
        n = len(self._entries)
        if n < 2:
            msg = f"zero-shot scoring compares the images of a batch with each other; it needs 2 or more, got {n}"
            raise ValueError(msg)
        cfg = self._config
        scales = cfg.scales
        fused = [torch.zeros(e.features.shape[0]) for e in self._entries]
        for s, r in enumerate(scales):
            def tick(done: int, s: int = s) -> None:
                if progress is not None:
                    progress(s * n + done, len(scales) * n)

            for i, per_patch in enumerate(self._mutual_scores(r, tick)):
                fused[i] += per_patch
        patch_scores: list[np.ndarray] = []
        top = np.zeros(n, dtype=np.float32)
        for i, total in enumerate(fused):
            per_patch = total / len(scales)
            patch_scores.append(per_patch.reshape(self._entries[i].grid).numpy().astype(np.float32))
            n_top = max(int(per_patch.numel() * cfg.top_percent / 100.0), 1)
            top[i] = float(per_patch.topk(n_top).values.mean())
        descriptors = torch.stack([e.descriptor for e in self._entries])
        pred = rescore(top, descriptors, cfg.rescore_k).astype(np.float32)
        return ZeroShotScores(pred_score=pred, patch_scores=patch_scores, top_score=top)

    def _mutual_scores(self, r: int, tick: Callable[[int], None]) -> list[torch.Tensor]:
        """(h_i * w_i,) float32 patch scores of every image at aggregation degree ``r`` (MuSc's MSM)."""
        n = len(self._entries)
        cfg = self._config
        dev = self.device
        refs = self.references()
        n_max = max(self._entries[int(j)].features.shape[0] for j in refs)
        dim = self._entries[0].features.shape[1]
        # Padded references at this scale: (R, n_max, D) float16, a validity mask for the padding. On CUDA
        # they stay on the device (64 references at 448 px: 75 MB) and the per-patch minima too: copying
        # them from the CPU for every block of queries made the GPU wait on the bus.
        cuda = dev.type == "cuda"
        home = dev if cuda else torch.device("cpu")
        ref_feats = torch.zeros(len(refs), n_max, dim, dtype=torch.float16, device=home)
        ref_valid = torch.zeros(len(refs), n_max, dtype=torch.bool, device=home)
        for slot, j in enumerate(refs):
            f = self._features_at(int(j), r, dev, torch.float32).to(home, torch.float16)
            ref_feats[slot, : f.shape[0]] = f
            ref_valid[slot, : f.shape[0]] = True
        ref_slot = {int(j): slot for slot, j in enumerate(refs)}
        work = torch.float16 if cuda else torch.float32  # CPU half matmul is slow
        elements = cfg.block_elements * (CUDA_BLOCK_FACTOR if cuda else 1)
        ref_chunk = max(1, min(len(refs), elements // max(1, 1024 * n_max)))
        max_rows = max(1, elements // (ref_chunk * n_max))

        out: list[torch.Tensor] = []
        i = 0
        while i < n:
            # A group of query images whose patches fit in one block of rows.
            group = [i]
            rows = self._entries[i].features.shape[0]
            while i + len(group) < n and rows + self._entries[i + len(group)].features.shape[0] <= max_rows:
                rows += self._entries[i + len(group)].features.shape[0]
                group.append(i + len(group))
            queries = torch.cat([self._features_at(g, r, dev, work) for g in group])
            owners = torch.cat([torch.full((self._entries[g].features.shape[0],), g) for g in group]).to(home)
            minima = torch.empty(queries.shape[0], len(refs), dtype=torch.float32, device=home)
            for c0 in range(0, len(refs), ref_chunk):
                block = ref_feats[c0 : c0 + ref_chunk].to(dev, work)  # (C, n_max, D); on CUDA already there
                valid = ref_valid[c0 : c0 + ref_chunk].to(dev)
                sim = (queries @ block.reshape(-1, dim).T).float().view(queries.shape[0], block.shape[0], n_max)
                sim.masked_fill_(~valid[None], -math.inf)
                minima[:, c0 : c0 + block.shape[0]] = (1.0 - sim.amax(dim=2)).clamp_(0.0, 2.0).to(home)
            for g in group:
                rows_g = minima[owners == g]
                if g in ref_slot:              # a query image is not its own reference
                    rows_g[:, ref_slot[g]] = math.inf
                n_refs = len(refs) - (1 if g in ref_slot else 0)
                k = max(1, round(cfg.neighbour_fraction * n_refs))
                out.append(rows_g.topk(k, dim=1, largest=False).values.mean(dim=1).cpu())
            i += len(group)
            tick(i)
        return out

    def anomaly_map(self, index: int, patch_scores: np.ndarray) -> np.ndarray:
        """The anomaly map of image ``index`` from its patch scores.

        Args:
            index: position of the image in the order it was added.
            patch_scores: (h, w) float32 patch scores of that image (from ``score``).

        Returns:
            (H, W) float32 map at the image's full size.
        """
        geo = self._entries[index].geo
        grid = torch.as_tensor(np.asarray(patch_scores, dtype=np.float32))[None]
        return anomaly_maps(grid, geo, sigma=self._config.blur_sigma, full_size=True)[0].numpy()


def evaluate_zero_shot(
    backbone: DinoBackbone,
    category: Category,
    *,
    config: ZeroShotConfig | None = None,
    progress: Callable[..., None] | None = None,
    test_items: Sequence[TestItem] | None = None,
    pixel_size: int | None = None,
) -> EvalReport:
    """Zero-shot accuracy on an MVTec-AD-layout category: its test set is the batch.

    No training image is used. Image AUROC is of the re-scored image score (``pred_score``); the
    verdicts (F1, ``operating_point``) are what ``inspector review --zero-shot`` decides: the batch's own
    robust rule on those scores (``robust_thresholds``: REVIEW at median + 3 robust sigma, FAIL at + 6).
    ``top_score_auroc`` in ``thresholds`` is the image AUROC before re-scoring.

    Args:
        backbone: the DINOv2 feature extractor.
        category: from ``models.evaluation.load_category``.
        config: scoring options.
        progress: called as ``progress(done, total, message)``: once per image while extracting,
            then once per scored block, then once per image while computing the pixel metrics.
        test_items: score only these (a subset for a quick run); default all of the category's.
        pixel_size: shorter side of maps and masks for pixel metrics (``models.evaluation.PIXEL_SIZE``).

    Returns:
        ``EvalReport`` with ``n_train=0``, ``shots=None``; ``fit_s`` is the feature extraction time
        and ``ms_per_image`` the whole wall time (features + mutual scoring + maps) per image.
    """
    from models.evaluation import (
        PIXEL_SIZE,
        EvalReport,
        aupro,
        best_f1,
        f1_at,
        image_auroc,
        load_image_rgb,
        load_mask,
        pixel_auroc,
        resize_for_pixel_metrics,
    )

    pixel_size = pixel_size or PIXEL_SIZE
    items = list(category.test if test_items is None else test_items)
    if len(items) < 2:
        msg = f"{category.root}: zero-shot evaluation needs 2 or more test images, got {len(items)}"
        raise ValueError(msg)
    scorer = ZeroShotScorer(backbone=backbone, config=config)
    total = 3 * len(items)

    def tick(done: int, message: str) -> None:
        if progress is not None:
            progress(done, total, message)

    start = time.perf_counter()
    pending: list[np.ndarray] = []
    for i, item in enumerate(items, 1):
        pending.append(load_image_rgb(item.path))
        if len(pending) >= scorer.config.batch_size or i == len(items):
            scorer.add(pending)  # frames of one size next to each other share backbone calls
            pending = []
        tick(i, "extracting features")
    extract_s = time.perf_counter() - start
    result = scorer.score(progress=lambda done, n: tick(len(items) + done, "mutual scoring"))
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for i, item in enumerate(items):
        amap = scorer.anomaly_map(i, result.patch_scores[i])
        mask = (load_mask(item.mask_path, amap.shape) if item.mask_path is not None
                else np.zeros(amap.shape, dtype=bool))
        small_map, small_mask = resize_for_pixel_metrics(amap, mask, pixel_size=pixel_size)
        maps.append(small_map)
        masks.append(small_mask)
        tick(2 * len(items) + i + 1, "anomaly maps")
    seconds = time.perf_counter() - start

    from models.calibration import operating_point

    scores = result.pred_score.astype(np.float64)
    top = result.top_score.astype(np.float64)
    labels = np.array([t.label for t in items])
    review, fail, rule = robust_thresholds(scores)
    point = operating_point(scores, labels, [t.defect_type for t in items], review=review, fail=fail)
    best, best_threshold = best_f1(scores, labels)
    per_defect = {
        t: image_auroc(np.concatenate([scores[labels == 0], scores[[it.defect_type == t for it in items]]]),
                       np.concatenate([np.zeros(int((labels == 0).sum())),
                                       np.ones(sum(it.defect_type == t for it in items))]))
        for t in sorted({it.defect_type for it in items if it.label == 1})
    }
    logger.info("zero-shot %s: %d images in %.1f s (features %.1f s)", category.name, len(items), seconds, extract_s)
    values: dict[str, Any] = {
        "category": category.name, "shots": None, "n_train": 0, "n_test": len(items), "seed": scorer.config.seed,
        "image_auroc": image_auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks),
        "aupro": aupro(maps, masks), "f1": f1_at(scores, labels, review), "f1_fail": f1_at(scores, labels, fail),
        "threshold": review,
        "thresholds": {"review": review, "fail": fail, "pixel": review, "rule": rule,
                       "top_score_auroc": image_auroc(top, labels)},
        "best_f1": best, "best_f1_threshold": best_threshold, "ms_per_image": 1e3 * seconds / len(items),
        "fit_s": extract_s, "per_defect_auroc": per_defect, "pixel_size": pixel_size,
        "config": {"detector": "zero_shot", **scorer.config.to_dict(), "brightness_active": scorer.brightness_active},
        "scores": tuple(float(s) for s in scores),
        "operating_point": point,
    }
    # Only the fields EvalReport has (it grows now and then; a field added with a default is not ours to fill).
    known = {f.name for f in dataclasses.fields(EvalReport)}
    return EvalReport(**{k: v for k, v in values.items() if k in known})
