"""Few-shot patch-kNN anomaly detection on DINOv2 features (AnomalyDINO, and options beyond it).

The published recipe (Damm et al., "AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection
with DINOv2", WACV 2025; anomalib's ``AnomalyDINOModel``):

1. shorter side resized to 448 (bicubic, antialiased), ImageNet normalisation, crop to a multiple
   of 14 (``models.preprocess``);
2. patch tokens of the backbone's blocks, L2-normalised; the memory bank holds every patch of
   every good image, each also rotated by 0, 45, ..., 315 degrees when there are few shots;
3. optional zero-shot foreground masking of the test image (``_foreground``); masked-out patches
   score 0;
4. patch score = cosine distance to the nearest bank patch; image score = mean of the top 1 %
   patch scores; anomaly map = bilinear upsampling + Gaussian blur (sigma 4).

Beyond the paper (all options of ``PatchKNNConfig``, off or neutral by default unless said):
k-center greedy coreset for large banks (PatchCore), blocked kNN in bounded memory, k > 1
neighbours, PatchCore's neighbourhood pooling of features, a search radius around each patch's
position for aligned parts (missing or misplaced components), an ``"auto"`` rule for masking and
rotations (on by default), a fallback when a test frame's mask is nearly empty (a missing part must
not pass because everything was masked out; on by default), leave-one-out scores of the training
images for calibration, a coarser second scale whose image score joins the patch score (``_scales``; on
by default), patches compared in the good patches' whitened feature space (``_whitening``; a teach-step choice),
distances in units of the good bank's own spread (``_spread``; off by default), and tiling of high-resolution
frames (``patch_knn_tiled``; off by default).

Example:
    >>> backbone = create_backbone("vit_small_patch14_dinov2", state_dict=weights.state_dict)
    >>> detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(masking="off"))
    >>> detector.fit(good_images_rgb)
    >>> detection = detector.predict(frame_rgb)
    >>> detection.pred_score.shape, detection.anomaly_map.shape
    ((1,), (1, H, W))
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from models.backbone import DinoBackbone, resolve_device
from models.detectors import patch_knn_state
from models.detectors._aligned import AlignedScoring, grid_positions
from models.detectors._fastpath import GraphCache, PinnedStaging
from models.detectors._foreground import config_masks, decide_brightness, decide_masking, with_fallback
from models.detectors._knn import compute_dtype, greedy_coreset, knn_distances
from models.detectors._loo import leave_one_out
from models.detectors._scales import SecondScale
from models.detectors._spread import SpreadScale
from models.detectors._views import extract_views
from models.detectors.one_shot import region_leave_out_scores
from models.detectors.patch_knn_config import PatchKNNConfig
from models.detectors.patch_knn_core import CoreOptions, PatchKNNCore
from models.detectors.patch_knn_tiled import TiledScoring, tiles_sorted
from models.detectors.registry import register_detector
from models.preprocess import (
    FrameGeometry,
    SizedFrames,
    StandardisedFrames,
    as_image_list,
    check_image,
    frame_geometry,
    standardise_brightness,
    to_model_input,
    uncrop_maps,
)

__all__ = ["Detection", "PatchKNN", "PatchKNNConfig"]

logger = logging.getLogger(__name__)

class Detection(NamedTuple):
    """What ``PatchKNN.predict`` returns.

    ``anomaly_map`` is one (B, H, W) array when all input frames have the same size, and a list of
    B (H_i, W_i) arrays when they differ.
    """

    pred_score: np.ndarray  # (B,) float32 image anomaly scores (cosine distance, 0 = normal)
    anomaly_map: np.ndarray | list[np.ndarray]  # (B, H, W) float32 at each input frame's full size
    # with predict(..., with_features=True): per frame the (h, w, D) float32 L2-normalised patch
    # features of the model input's centre crop (models.preprocess.frame_geometry maps frame pixels
    # to that grid), taken from the same backbone pass that gave the scores; None otherwise
    patch_features: list[np.ndarray] | None = None


@register_detector("patch_knn")
class PatchKNN(nn.Module):
    """Few-shot anomaly detector: nearest-neighbour distance of patch features to a bank of good patches.

    Args:
        backbone: the DINOv2 feature extractor (its blocks and weights define the feature space).
        config: detector options; defaults reproduce AnomalyDINO with automatic masking/rotations.
        device: ``"auto" | "cpu" | "cuda"``, or None to stay on the backbone's device.

    Attributes:
        train_scores: (N,) float32 leave-one-out image scores of (up to ``loo_max_images``)
            training images, each scored against the bank without its own patches; fitted on one
            image, its region-leave-out scores (``models.detectors.one_shot``). For ``calibrate``.
        train_maps: the matching leave-one-out anomaly maps, each (h, w) float32 at the model's
            resized scale (shorter side = ``shorter_side``), for pixel-threshold calibration.
        masking_active: whether test frames are masked (decided at fit when ``masking="auto"``).
        brightness_active: whether frames are brightness-standardised (decided at fit for ``brightness="auto"``).
    """

    detector_name: str = "patch_knn"
    memory_bank: torch.Tensor  # buffers (register_buffer in __init__), annotated for the type checker
    bank_owner: torch.Tensor
    bank_pos: torch.Tensor
    bank_tile: torch.Tensor

    def __init__(
        self,
        *,
        backbone: DinoBackbone,
        config: PatchKNNConfig | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if device is not None:
            backbone = backbone.to(resolve_device(device))
        self._backbone = backbone
        self._config = config if config is not None else PatchKNNConfig()
        cfg = self._config
        # the scoring arithmetic, shared with the ONNX export (models.export traces this module)
        self._core = PatchKNNCore(backbone, CoreOptions(
            k=cfg.k, top_percent=cfg.top_percent, blur_sigma=cfg.blur_sigma, patch_pooling=cfg.patch_pooling,
            chunk_size=cfg.chunk_size, query_chunk_size=cfg.query_chunk_size, precision=cfg.precision))
        dev = self.device
        empty_bank = torch.empty(0, backbone.feature_dim, dtype=compute_dtype(dev), device=dev)
        self.register_buffer("memory_bank", empty_bank)
        self.register_buffer("bank_owner", torch.empty(0, dtype=torch.int64, device=dev))
        # (y, x) of each bank patch in its (rotated) view, scaled to [0, 1]; for position_radius
        self.register_buffer("bank_pos", torch.empty(0, 2, dtype=torch.float32, device=dev))
        # tile position of each bank patch (tiling; rows of one position together for tile_bank="per_position")
        self.register_buffer("bank_tile", torch.empty(0, dtype=torch.int64, device=dev))
        self._tiles = TiledScoring(self._core, cfg, backbone.patch_size)  # config.tiling
        self._aligned = AlignedScoring(cfg)  # config.alignment: position restriction + global term
        # config.second_scale: the coarse scale's image score, in the core's feature space (config.whitening)
        self._scales = SecondScale(cfg, empty_bank, self._core.whitening)
        self.spread = SpreadScale(cfg.bank_spread, cfg.bank_spread_floor)  # units of the bank's own spread
        self.train_scores: np.ndarray = np.empty(0, dtype=np.float32)
        self.train_maps: list[np.ndarray] = []
        self.masking_active: bool = self._config.masking == "on"
        self.brightness_active: bool = self._config.brightness == "standardise"   # decided at fit for "auto"
        self.reference_foreground: float = 1.0  # mean foreground share of the references' masks
        self.rotations_used: bool = False
        self.n_images: int = 0  # good frames in the bank (fit + add_normal); also the next owner id
        self._staging = PinnedStaging()  # pinned host buffers of the CUDA upload/download
        self._graphs = GraphCache()  # CUDA graphs per frame shape (config.cuda_graphs)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> PatchKNNConfig:
        """The detector's options."""
        return self._config

    @property
    def backbone(self) -> DinoBackbone:
        """The feature extractor."""
        return self._backbone

    @property
    def core(self) -> PatchKNNCore:
        """The pure-tensor scoring core (``models.detectors.patch_knn_core``): what ``predict`` and the
        ONNX export run."""
        return self._core

    @property
    def device(self) -> torch.device:
        """Where the backbone (and the bank) live."""
        return next(self._backbone.parameters()).device

    @property
    def bank_size(self) -> int:
        """Number of patches in the memory bank (0 before fit)."""
        return int(self.memory_bank.shape[0])

    @property
    def tiling_active(self) -> bool:
        """Whether frames are cut into tiles (decided at fit: ``config.tiling``, ``"auto"`` by the frames' size)."""
        return self._tiles.active

    @property
    def tiling_summary(self) -> str | None:
        """How frames are tiled, one sentence for reports; None when they are not."""
        return self._tiles.describe() if self.tiling_active else None

    def scoring_shorter_side(self, height: int, width: int) -> int:
        """The ``shorter_side`` at which ``models.preprocess.frame_geometry`` gives the patch grid of a
        ``height`` x ``width`` frame's scores and features: the config's, or the tiling scale's."""
        if self.tiling_active:
            return self._tiles.shorter_side(height, width)
        return self._config.shorter_side

    @property
    def tiling(self) -> TiledScoring:
        """The tiling decision, tile grid and per-position index (``patch_knn_tiled``)."""
        return self._tiles

    @property
    def second_scale_active(self) -> bool:
        """Whether image scores fuse the coarse scale's (``config.second_scale``; decided at fit)."""
        return self._scales.active

    @property
    def second_scale(self) -> SecondScale:
        """The coarse scale: its bank (``bank``, row for row with ``memory_bank``) and statistics (``fusion``)."""
        return self._scales

    @property
    def aligned(self) -> bool:
        """Whether the product is treated as aligned (config ``alignment``; ``"auto"`` decided at fit)."""
        return self._aligned.active

    @property
    def alignment_state(self) -> AlignedScoring:
        """The alignment decision, the good frames' global descriptors and the fusion's statistics."""
        return self._aligned

    def patch_scores(self, raw: torch.Tensor, *, radius: float | str | None = "active") -> torch.Tensor:
        """(B, h, w, D) raw features -> (B, h, w) scores as ``predict`` (``"active"``: `search_radius`)."""
        return self._patch_scores(raw, radius=radius)

    @property
    def search_radius(self) -> float | None:
        """The position search radius in use (``position_radius``, or ``alignment_radius`` when aligned)."""
        return self._aligned.radius()

    @property
    def is_fitted(self) -> bool:
        """True once the bank holds patches."""
        return self.bank_size > 0

    # ------------------------------------------------------------------ fit
    @torch.inference_mode()
    def fit(
        self,
        images_rgb: Iterable[np.ndarray],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Build the memory bank from good frames, then score the frames leave-one-out.

        Args:
            images_rgb: good frames, each (H, W, 3) uint8 RGB (or (H, W) grayscale), any sizes.
                A sized collection (list, or a lazy sequence with ``__len__``) is iterated once
                without being copied; any other iterable is first turned into a list.
            progress: called as ``progress(done, total)`` after each frame's patches are banked.

        Raises:
            ValueError: "no good images to fit on" when empty, or a frame is not valid.
        """
        cfg = self._config
        images, probed = self._frames_in(images_rgb, decide=True)
        total = len(images)
        if total == 0:
            msg = "no good images to fit on: fit() needs at least one good frame"
            raise ValueError(msg)
        self._aligned.reset()
        self._core.whitening.clear()
        tiled = cfg.tiling != "off" and self._tiles.decide(*check_image(next(iter(images)), 0).shape[:2])
        self._scales.begin_fit(tiled=tiled)
        # a per-position tile bank is for aligned parts: "auto" does not rotate their tiles
        auto_rotate = (cfg.augment_rotations == "auto" and total <= cfg.rotation_max_shots
                       and not (tiled and cfg.tile_bank == "per_position"))
        rotate = cfg.augment_rotations is True or auto_rotate
        angles = cfg.rotation_angles if rotate else (0.0,)
        rng = np.random.default_rng(cfg.seed)
        n_loo = min(total, cfg.loo_max_images) if total >= 2 else 0
        loo_ids = {int(i) for i in rng.choice(total, size=n_loo, replace=False)} if n_loo else set()

        self.train_scores, self.train_maps = np.empty(0, dtype=np.float32), []
        bank_parts: list[torch.Tensor] = []
        owner_parts: list[torch.Tensor] = []
        pos_parts: list[torch.Tensor] = []
        loo_items: list[tuple[int, torch.Tensor, FrameGeometry]] = []
        turned: list[tuple[float, torch.Tensor]] = []    # one frame: its rotated views (raw), for its calibration
        ref_masks: list[torch.Tensor] = []
        foreground: list[torch.Tensor] = []   # per view, its rows that stay if the frames are masked

        def bank(owner: int, raw: torch.Tensor, angle: float, geo: FrameGeometry) -> None:
            emb = self._embed(raw)
            bank_parts.append(emb.reshape(-1, raw.shape[-1]).to(self.memory_bank.dtype))
            foreground.append(self._banked_rows(raw, angle))
            self._scales.add(raw)
            n_patches = raw.shape[0] * raw.shape[1]
            owner_parts.append(torch.full((n_patches,), owner, dtype=torch.int64, device=raw.device))
            pos_parts.append(grid_positions(raw.shape[0], raw.shape[1], raw.device))
            if angle == 0.0:
                self._aligned.add(owner, emb)
                if cfg.masking != "off":
                    ref_masks.append(self._masks(raw[None])[0])
                if owner in loo_ids or total == 1:
                    loo_items.append((owner, raw.to(self.memory_bank.dtype), geo))
            elif total == 1:
                turned.append((angle, raw))

        if tiled:
            if cfg.whitening:
                logger.warning("patch_knn whitening is not used for tiled frames (each tile is compared as it is)")
            parts = self._tiles.extract(images, angles, dtype=self.memory_bank.dtype, device=self.device,
                                        loo_ids=loo_ids, progress=progress, total=total)
            self.memory_bank = parts.bank
            self.bank_owner = parts.owner
            self.bank_pos = parts.pos
            self.bank_tile = parts.tile
        else:
            self._tiles.active, self._tiles.frame = False, None
            fit_map = functools.partial(self._core.whitening.fit, shrink=cfg.whitening_shrink)
            with torch.inference_mode():     # every view through the backbone, in batches of one size
                extract_views(images, angles, self._features, bank, batch_size=cfg.fit_batch_size,
                              progress=progress, total=total, known=probed, before=fit_map if cfg.whitening else None)
            self.memory_bank = torch.cat(bank_parts)
            self.bank_owner = torch.cat(owner_parts)
            self.bank_pos = torch.cat(pos_parts)
            self.bank_tile = torch.zeros_like(self.bank_owner)
        self._scales.end()
        self.n_images = total
        self.rotations_used = rotate
        n_before = self.bank_size
        self.masking_active, self.reference_foreground = decide_masking(ref_masks, cfg)
        if self.masking_active and foreground:
            self._keep_rows(torch.cat(foreground))
        self._shrink_bank()
        self.spread.fit(self.memory_bank, self.bank_owner, usable=not tiled)
        logger.info("patch_knn fitted on %d frame(s)%s: bank of %d patches (from %d), masking %s",
                    total, " with rotations" if rotate else "", self.bank_size, n_before,
                    "on" if self.masking_active else "off")
        if tiled:
            self.train_scores, self.train_maps = self._tiles.leave_one_out_all(parts.loo, self.memory_bank,
                                                                               self.bank_owner)
        elif total == 1:   # nothing to leave out: regions of the one frame instead (models.detectors.one_shot)
            if cfg.alignment != "off":
                logger.warning("patch_knn alignment %r is not used with one good frame (nothing to fuse on)",
                               cfg.alignment)
            _, raw, geo = loo_items[0]
            self._score_one_frame(raw, geo, turned)
        else:
            self._aligned.decide_from_loo([(owner, raw[None]) for owner, raw, _ in loo_items], self._patch_scores)
            self._score_leave_one_out(loo_items)

    def _shrink_bank(self, *, coreset: bool = True) -> None:
        """Coreset down to ``max_bank_size`` (per tile position for a per-position tile bank); then the rows of
        one tile position are put together."""
        cfg = self._config
        per_position = self.tiling_active and cfg.tile_bank == "per_position"
        n_tiles = self._tiles.n_tiles if per_position else 1
        keep: torch.Tensor | None = None
        if coreset and cfg.max_bank_size is not None and self.bank_size > cfg.max_bank_size:
            budget = max(cfg.max_bank_size // n_tiles, 1)
            kept = []
            for t in range(n_tiles):
                rows = torch.nonzero(self.bank_tile == t).reshape(-1) if per_position else None
                bank = self.memory_bank[rows] if rows is not None else self.memory_bank
                chosen = greedy_coreset(bank, budget, projection_dim=cfg.coreset_projection_dim, seed=cfg.seed)
                kept.append(rows[chosen] if rows is not None else chosen)
            keep = torch.cat(kept)
        if per_position:
            order = tiles_sorted(self.bank_tile if keep is None else self.bank_tile[keep])
            keep = order if keep is None else keep[order]
        if keep is not None:
            self._keep_rows(keep)
        if per_position:
            self._tiles.index(self.bank_tile, n_tiles)

    def _keep_rows(self, keep: torch.Tensor) -> None:
        """The bank (both scales, owners, positions, tiles) keeps ``keep``: row indices, or a bool per row."""
        if keep.dtype == torch.bool:
            if bool(keep.all()):
                return
            keep = torch.nonzero(keep).reshape(-1)
        self._scales.keep(keep, self.bank_size)
        self.memory_bank = self.memory_bank[keep].contiguous()
        self.bank_owner = self.bank_owner[keep].contiguous()
        self.bank_pos = self.bank_pos[keep].contiguous()
        self.bank_tile = self.bank_tile[keep].contiguous()

    def _banked_rows(self, raw: torch.Tensor, angle: float) -> torch.Tensor:
        """(h * w,) bool: the rows of one (h, w, D) view that stay in the bank when the frames are masked: all of
        the frame's own view; a rotated view's foreground only, unless ``rotation_background``."""
        cfg = self._config
        if angle == 0.0 or cfg.rotation_background or cfg.masking == "off":
            return torch.ones(raw.shape[0] * raw.shape[1], dtype=torch.bool, device=raw.device)
        return self._masks(raw[None])[0].reshape(-1)

    @torch.inference_mode()
    def add_normal(self, images_rgb: Iterable[np.ndarray]) -> None:
        """Append the patches of frames an operator marked good; no refit, no coreset, no new LOO scores.

        Args:
            images_rgb: frames, each (H, W, 3) uint8 RGB. Rotated like the fit frames were.

        Raises:
            ValueError: before fit, or when a frame is not valid.
        """
        self._require_fitted()
        images, _ = self._frames_in(images_rgb)
        angles = self._config.rotation_angles if self.rotations_used else (0.0,)
        parts: list[torch.Tensor] = []
        owners: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        foreground: list[torch.Tensor] = []
        first = self.n_images
        if self.tiling_active:
            more = self._tiles.extract(images, angles, dtype=self.memory_bank.dtype, device=self.device,
                                       loo_ids=set(), progress=None, total=len(images))
            self.memory_bank = torch.cat([self.memory_bank, more.bank])
            self.bank_owner = torch.cat([self.bank_owner, more.owner + first])
            self.bank_pos = torch.cat([self.bank_pos, more.pos])
            self.bank_tile = torch.cat([self.bank_tile, more.tile])
            self.n_images += len(images)
            self._shrink_bank(coreset=False)  # only the per-position order
            return

        def bank(owner: int, raw: torch.Tensor, angle: float, geo: FrameGeometry) -> None:
            emb = self._embed(raw)
            parts.append(emb.reshape(-1, raw.shape[-1]).to(self.memory_bank.dtype))
            if self.masking_active:     # decided at fit: unmasked frames bank every patch, no masks needed
                foreground.append(self._banked_rows(raw, angle))
            self._scales.add(raw)
            if angle == 0.0:
                self._aligned.add(first + owner, emb)
            positions.append(grid_positions(raw.shape[0], raw.shape[1], raw.device))
            owners.append(torch.full((raw.shape[0] * raw.shape[1],), first + owner, dtype=torch.int64,
                                     device=raw.device))

        self._scales.begin_more()
        with torch.inference_mode():
            extract_views(images, angles, self._features, bank, batch_size=self._config.fit_batch_size,
                          progress=None, total=len(images))
        self._scales.end()
        if not parts:
            return
        n_before = self.bank_size
        self.memory_bank = torch.cat([self.memory_bank, *parts])
        self.bank_owner = torch.cat([self.bank_owner, *owners])
        self.bank_pos = torch.cat([self.bank_pos, *positions])
        self.bank_tile = torch.cat([self.bank_tile, torch.zeros(sum(len(o) for o in owners), dtype=torch.int64,
                                                                device=self.bank_tile.device)])
        if foreground:
            self._keep_rows(torch.cat([torch.ones(n_before, dtype=torch.bool, device=self.bank_owner.device),
                                       *(rows.to(self.bank_owner.device) for rows in foreground)]))
        self.n_images += len(images)
        self.spread.fit(self.memory_bank, self.bank_owner)      # the new frames' patches have units too
        logger.info("patch_knn: added %d good frame(s); bank now %d patches", len(images), self.bank_size)

    # ------------------------------------------------------------------ predict
    @torch.inference_mode()
    def predict(
        self, images_rgb: np.ndarray | Sequence[np.ndarray], *, batch_size: int = 8, with_features: bool = False
    ) -> Detection:
        """Score frames.

        Args:
            images_rgb: one (H, W, 3) uint8 RGB frame, a (B, H, W, 3) batch, or a list of frames of
                any sizes ((H, W) grayscale is accepted and stacked to RGB).
            batch_size: frames per backbone call (frames of one size are batched together).
            with_features: also return each frame's patch features (``Detection.patch_features``),
                e.g. to type the defect regions without a second backbone pass.

        Returns:
            ``Detection(pred_score (B,) float32, anomaly_map (B, H, W) float32)``; the map is at
            each frame's full size, a list of arrays when the sizes differ.

        Raises:
            ValueError: "not fitted: call fit() with good images first", or a frame is not valid.
        """
        self._require_fitted()
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        frames = as_image_list(images_rgb)
        if self.brightness_active:
            frames = [standardise_brightness(frame) for frame in frames]
        scores = np.zeros(len(frames), dtype=np.float32)
        maps: list[np.ndarray | None] = [None] * len(frames)
        features: list[np.ndarray | None] = [None] * len(frames)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            by_size.setdefault(frame.shape[:2], []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = np.stack([frames[i] for i in chunk])
                geo = frame_geometry(*batch.shape[1:3], shorter_side=self._config.shorter_side,
                                     patch_size=self._backbone.patch_size)
                uploaded = self._staging.upload(batch, self.device)
                raw: torch.Tensor | None = None
                if self.tiling_active:
                    image_scores, full, raw = self._tiles.score(uploaded, self.memory_bank, self.bank_owner,
                                                                device=self.device, batch_size=batch_size,
                                                                with_features=with_features)
                elif with_features:              # eager: the features leave the graph's fixed buffers
                    image_scores, full, raw = self._score_frames_and_features(uploaded, geo)
                elif self.uses_cuda_graphs:
                    image_scores, full = self._graphs.run(functools.partial(self._score_frames, geo=geo), uploaded,
                                                          reads=self._graph_reads())
                else:
                    image_scores, full = self._score_frames(uploaded, geo)
                scores_np, full_np = self._staging.download(image_scores, full)
                scores[chunk] = scores_np
                for j, i in enumerate(chunk):
                    maps[i] = full_np[j]
                if raw is not None:
                    embedded = self._embed(raw).cpu().numpy()
                    for j, i in enumerate(chunk):
                        features[i] = embedded[j]
        out_maps = [m for m in maps if m is not None]
        out_features = [f for f in features if f is not None] if with_features else None
        if len(by_size) == 1:
            return Detection(pred_score=scores, anomaly_map=np.stack(out_maps), patch_features=out_features)
        return Detection(pred_score=scores, anomaly_map=out_maps, patch_features=out_features)

    def _graph_reads(self) -> tuple[torch.Tensor, ...]:
        return (self.memory_bank,) if self.spread.scale is None else (self.memory_bank, self.spread.scale)

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether ``predict`` replays CUDA graphs: asked for, on CUDA, and without data-dependent steps."""
        cfg = self._config
        return (cfg.cuda_graphs and self.device.type == "cuda" and not self.masking_active
                and self.search_radius is None and not self.tiling_active and not self._scales.active)

    def _score_frames(self, frames: torch.Tensor, geo: FrameGeometry) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 frames on the device -> ((B,) image scores, (B, H, W) maps at the frame size);
        with no masking and no search radius, no host synchronisation: a CUDA graph can capture it."""
        image_scores, full, _ = self._score_frames_and_features(frames, geo)
        return image_scores, full

    def _score_frames_and_features(self, frames: torch.Tensor,
                                   geo: FrameGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_score_frames`, also returning the backbone's (B, h, w, D) patch features."""
        x = to_model_input(frames, shorter_side=self._config.shorter_side, patch_size=self._backbone.patch_size,
                           device=self.device)
        if not self.masking_active and self.search_radius is None and not self._scales.active:
            scores, raw = self._core.score(x, self.memory_bank, self.spread.scale)   # as the exported graph
            return scores.pred_score, uncrop_maps(scores.anomaly_map[:, None], geo), raw
        raw = self._core.extract(x)
        masks = self._scored_masks(raw) if self.masking_active else None   # once for both scales
        patch_scores = self._patch_scores(raw, masks=masks)
        map_scores = patch_scores
        image_scores = self._core.image_scores(patch_scores)
        fusion = self._scales.fusion
        if fusion is not None:
            coarse = self._patch_scores(raw, coarse=True, masks=masks)
            image_scores = self._scales.fuse(image_scores, self._core.image_scores(coarse))
            if self._scales.in_map:   # config.second_scale_map
                map_scores = fusion.fuse_maps(patch_scores, coarse)
        maps = self._core.maps(map_scores, geo.crop)
        image_scores = self._aligned.fuse(image_scores, self._embed(raw))
        return image_scores, uncrop_maps(maps[:, None], geo), raw

    def forward(self, images_rgb: np.ndarray | Sequence[np.ndarray]) -> Detection:
        """Same as ``predict``."""
        return self.predict(images_rgb)

    # ------------------------------------------------------------------ state for models.saved
    def export_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and plain fields that make up a fitted detector (used by ``models.saved``;
        ``models.detectors.patch_knn_state``)."""
        return patch_knn_state.export_state(self)

    def import_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Restore what ``export_state`` gave (used by ``models.saved``).

        Raises:
            ValueError: when a tensor is missing or its feature size does not fit this backbone.
        """
        patch_knn_state.import_state(self, tensors, info)

    # ------------------------------------------------------------------ internals
    def _frames_in(self, images_rgb: Iterable[np.ndarray], *, decide: bool = False
                   ) -> tuple[SizedFrames, list[tuple[torch.Tensor, FrameGeometry]]]:
        """The fit (``decide``: brightness decided on them) or added frames, sized (a lazy sized collection is not
        copied), brightness-standardised where decided; and the features of the first frames where the decision
        probed them and left them as they are (``decide_brightness``), for the fit to keep."""
        images = images_rgb if isinstance(images_rgb, Sized) else list(images_rgb)
        probed: list[tuple[torch.Tensor, FrameGeometry]] = []
        if decide:
            self.brightness_active, probed = decide_brightness(self._config, images, self._features, self._masks)
        return (StandardisedFrames(images), []) if self.brightness_active else (images, probed)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            msg = "not fitted: call fit() with good images first"
            raise ValueError(msg)

    @torch.inference_mode()
    def _features(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, FrameGeometry]:
        """Same-sized (H, W, 3) uint8 frames -> ((B, h, w, D) raw patch features, geometry)."""
        height, width = frames[0].shape[:2]
        patch = self._backbone.patch_size
        geo = frame_geometry(height, width, shorter_side=self._config.shorter_side, patch_size=patch)
        x = to_model_input(self._staging.upload(np.stack(frames), self.device),
                           shorter_side=self._config.shorter_side, patch_size=patch, device=self.device)
        return self._core.extract(x), geo

    def _embed(self, raw: torch.Tensor) -> torch.Tensor:
        """(..., h, w, D) raw features -> the same, float32, pooled (if configured) and L2-normalised."""
        return self._core.embed(raw)

    def _masks(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) raw features -> (B, h, w) bool foreground masks."""
        return config_masks(raw, self._config)

    def _scored_masks(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, h, w) bool: the patches scored when masking (the foreground, ``with_fallback``)."""
        return with_fallback(self._masks(raw), self._config, self.reference_foreground)

    def _patch_scores(
        self, raw: torch.Tensor, *, owner: int | None = None, radius: float | str | None = "active",
        coarse: bool = False, masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, h, w, D) raw features -> (B, h, w) float32 patch scores (0 where masked out).

        ``owner`` skips bank patches of that training frame (leave-one-out); ``radius`` is the position
        search radius (``"active"``: ``search_radius``; None: anywhere); ``coarse``: at the second scale,
        against the coarse bank (``second_scale``); ``masks``: ``_scored_masks(raw)`` when already made.
        """
        b, h, w, d = raw.shape
        cfg = self._config
        radius = self.search_radius if radius == "active" else radius
        if isinstance(radius, str):
            msg = f"radius must be a number, None or 'active', got {radius!r}"
            raise ValueError(msg)
        feats = (self._scales.embed(raw) if coarse else self._embed(raw)).reshape(-1, d)
        memory_bank = self._scales.bank if coarse else self.memory_bank
        units = None if coarse else self.spread.for_owner(owner)      # config.bank_spread
        if not self.masking_active and radius is None and owner is None and not coarse:
            # every patch is scored: no boolean indexing (a host synchronisation on CUDA)
            return self._core.patch_scores(raw, self.memory_bank, units)
        keep = torch.ones(b * h * w, dtype=torch.bool, device=raw.device)
        if self.masking_active:   # a frame that lost its part is scored everywhere (with_fallback)
            keep = (self._scored_masks(raw) if masks is None else masks).reshape(-1)
        query_owner = bank_owner = None
        query_pos = grid_positions(h, w, raw.device).repeat(b, 1)[keep] if radius is not None else None
        if owner is not None:
            query_owner = torch.full((int(keep.sum()),), owner, dtype=torch.int64, device=raw.device)
            bank_owner = self.bank_owner
        dists = knn_distances(feats[keep], memory_bank, k=cfg.k, chunk_size=cfg.chunk_size,
                              query_chunk_size=cfg.query_chunk_size,
                              query_owner=query_owner, bank_owner=bank_owner,
                              query_pos=query_pos, bank_pos=self.bank_pos, radius=radius, bank_scale=units)
        if radius is not None:
            # No bank patch near enough (a radius below one patch, or an odd frame size): search everywhere.
            lost = ~torch.isfinite(dists)
            if lost.any():
                q_owner = query_owner[lost] if query_owner is not None else None
                dists[lost] = knn_distances(feats[keep][lost], memory_bank, k=cfg.k,
                                            chunk_size=cfg.chunk_size, query_chunk_size=cfg.query_chunk_size,
                                            query_owner=q_owner, bank_owner=bank_owner, bank_scale=units)
        scores = torch.zeros(b * h * w, dtype=torch.float32, device=raw.device)
        scores[keep] = dists
        return scores.reshape(b, h, w)

    @torch.inference_mode()
    def _score_one_frame(self, raw: torch.Tensor, geo: FrameGeometry, turned: list[tuple[float, torch.Tensor]]) -> None:
        """Calibration scores of a detector fitted on one frame: its regions left out (``one_shot``), at both
        scales when the second scale is collected (``SecondScale.fit_fusion`` with ``one_frame``)."""
        keep = self._masks(raw[None])[0] if self.masking_active else None

        def regions(embed: Callable[[torch.Tensor], torch.Tensor]) -> tuple[np.ndarray, list[np.ndarray]]:
            return region_leave_out_scores(embed(raw[None])[0], geo, image_score=self._core.image_scores,
                                           turned=[(angle, embed(view[None])[0]) for angle, view in turned],
                                           keep=keep, sigma=self._config.blur_sigma)

        fine, fine_maps = regions(self._embed)
        coarse, coarse_maps = regions(self._scales.embed) if self._scales.bank.shape[0] > 0 else (np.empty(0), [])
        self.train_scores = self._scales.fit_fusion(fine, list(coarse), one_frame=True)
        self.train_maps = self._scales.fuse_maps(fine_maps, coarse_maps)

    @torch.inference_mode()
    def _score_leave_one_out(self, items: list[tuple[int, torch.Tensor, FrameGeometry]]) -> None:
        loo = leave_one_out(items, patch_scores=self._patch_scores,
                            scored_masks=self._scored_masks if self.masking_active else None,
                            image_score=self._core.image_scores, with_coarse=self._scales.bank.shape[0] > 0,
                            blur_sigma=self._config.blur_sigma)
        self.train_scores = self._aligned.fit_fusion(loo.owners, self._scales.fit_fusion(loo.fine, loo.coarse))
        self.train_maps = self._scales.fuse_maps(loo.maps, loo.coarse_maps)
