"""The tiled side of ``PatchKNN`` (``PatchKNNConfig.tiling``): bank building and scoring of tiled frames.

``TiledScoring`` is owned by a ``PatchKNN``; it decides whether a model tiles (``"auto"``: the fit
frames would shrink 2x or more untiled), cuts frames into tiles (``models.detectors._tiling``), runs
the backbone tile by tile (rotating tiles, not frames, so a tile's rotations stay its own), matches
each tile against the shared bank or against the bank rows of its own tile position, and stitches
the patch scores into one frame-wide grid, from which the image score (top ``top_percent`` % of the
stitched cells) and the anomaly map (upsampled and blurred over the whole frame) are made with the
core's own arithmetic. Masking and a search radius are not used while tiling (``PatchKNNConfig``
refuses them); a tiled model has no ONNX export (``models.export`` refuses it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch

from models.detectors._knn import knn_distances
from models.detectors._tiling import (
    TILING_AUTO_MIN_SCALE,
    TileLayout,
    cut_tiles,
    rotate_tiles,
    stitch,
    tile_layout,
    tiling_shorter_side,
)
from models.detectors.patch_knn_config import PatchKNNConfig
from models.detectors.patch_knn_core import PatchKNNCore
from models.preprocess import anomaly_maps, check_image, to_model_input

__all__ = ["TiledBankParts", "TiledScoring", "tiles_sorted"]

logger = logging.getLogger(__name__)


class TiledBankParts(NamedTuple):
    """What ``TiledScoring.extract`` gives for building a bank."""

    bank: torch.Tensor  # (M, D) embedded patches, in the bank's dtype
    owner: torch.Tensor  # (M,) int64 frame number
    pos: torch.Tensor  # (M, 2) float32 (y, x) of each patch's cell on the frame's grid, in [0, 1]
    tile: torch.Tensor  # (M,) int64 tile position of each patch
    loo: list[tuple[int, torch.Tensor]]  # (owner, (T, th, tw, D) embedded unrotated tiles) of the LOO frames
    frame: tuple[int, int]  # (H, W) of the first frame


class TiledScoring:
    """Tiles for one ``PatchKNN``: whether it tiles, the layout, the per-position bank index, scoring."""

    def __init__(self, core: PatchKNNCore, config: PatchKNNConfig, patch_size: int) -> None:
        self._core = core
        self._config = config
        self._patch = patch_size
        self.active: bool = False  # decided at fit (config.tiling; "auto" by the fit frames' size)
        self.frame: tuple[int, int] | None = None  # (H, W) of the fit frames: the per-position layout's size
        self._bounds: list[tuple[int, int]] = []  # per tile position: bank rows [start, end) (per_position)

    # ------------------------------------------------------------------ decisions and layout
    def decide(self, height: int, width: int) -> bool:
        """Set ``active`` for fit frames of ``height`` x ``width`` (``"auto"``: a 2x shrink or more)."""
        cfg = self._config
        scale = min(height, width) / cfg.tile_pixels
        self.active = cfg.tiling == "on" or (cfg.tiling == "auto" and scale >= TILING_AUTO_MIN_SCALE)
        self.frame = (int(height), int(width)) if self.active else None
        if cfg.tiling != "off":
            logger.info("patch_knn tiling (%s): frames of %dx%d px, tiles of %d px -> %s", cfg.tiling,
                        height, width, cfg.tile_pixels, "on" if self.active else "off")
        return self.active

    def layout(self, height: int, width: int) -> TileLayout:
        """The tiles of a frame; with a per-position bank the frame must have the fit frames' size.

        Raises:
            ValueError: a per-position bank and a frame of another size (the message says both).
        """
        cfg = self._config
        if cfg.tile_bank == "per_position" and self.frame is not None and (height, width) != self.frame:
            msg = (f"this model keeps one bank per tile position, taught on frames of {self.frame[0]}x{self.frame[1]} "
                   f"px; a frame of {height}x{width} px has other tiles: inspect frames of the taught size "
                   "(same camera and region of interest), or teach with tile_bank='shared'")
            raise ValueError(msg)
        return tile_layout(height, width, shorter_side=cfg.shorter_side, tile_size=cfg.tile_pixels,
                           overlap=cfg.tile_overlap, patch_size=self._patch)

    def shorter_side(self, height: int, width: int) -> int:
        """The ``shorter_side`` at which ``models.preprocess.frame_geometry`` gives the stitched grid."""
        cfg = self._config
        return tiling_shorter_side(height, width, shorter_side=cfg.shorter_side, tile_size=cfg.tile_pixels)

    def index(self, bank_tile: torch.Tensor, n_tiles: int) -> None:
        """Remember each tile position's rows of a bank sorted by tile (``per_position``)."""
        counts = torch.bincount(bank_tile.cpu(), minlength=n_tiles).tolist()
        ends = np.cumsum(counts).tolist()
        self._bounds = [(int(e - c), int(e)) for c, e in zip(counts, ends, strict=True)]

    def describe(self) -> str:
        """One sentence for reports: how the taught frames are tiled."""
        if not self.active or self.frame is None:
            return "frames are not tiled"
        cfg, layout = self._config, self.layout(*self.frame)
        scale = "native resolution" if cfg.tile_pixels == cfg.shorter_side else f"tiles of {cfg.tile_pixels} frame px"
        return (f"{layout.n_tiles} tiles of {cfg.shorter_side} px ({scale}, overlap {cfg.tile_overlap:g}) per "
                f"{self.frame[0]}x{self.frame[1]} frame, {cfg.tile_bank.replace('_', '-')} bank")

    @property
    def n_tiles(self) -> int:
        """Tile positions of the fit frames' layout."""
        if self.frame is None:
            return 0
        return self.layout(*self.frame).n_tiles

    # ------------------------------------------------------------------ features
    def tile_features(self, frames: torch.Tensor, layout: TileLayout, angle: float, device: torch.device,
                      batch_size: int) -> torch.Tensor:
        """(B, H, W, 3) uint8 frames -> (B, T, th, tw, D) raw features of their tiles, rotated by ``angle``."""
        x = to_model_input(frames, shorter_side=self.shorter_side(*layout.geo.frame),
                           patch_size=self._patch, device=device)
        tiles = rotate_tiles(cut_tiles(x, layout), angle)
        raw = torch.cat([self._core.extract(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)])
        return raw.reshape(frames.shape[0], layout.n_tiles, *raw.shape[1:])

    def extract(self, images: Iterable[Any], angles: tuple[float, ...], *, dtype: torch.dtype, device: torch.device,
                loo_ids: set[int], progress: Callable[[int, int], None] | None, total: int) -> TiledBankParts:
        """The bank of good frames, tile by tile, each tile also rotated by ``angles``."""
        batch = self._config.fit_batch_size
        banks: list[torch.Tensor] = []
        owners: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        tiles: list[torch.Tensor] = []
        loo: list[tuple[int, torch.Tensor]] = []
        first: tuple[int, int] | None = None
        for i, image in enumerate(images):
            frame = check_image(image, i)
            first = first or (frame.shape[0], frame.shape[1])
            layout = self.layout(frame.shape[0], frame.shape[1])
            cells = _cell_positions(layout, device)
            uploaded = torch.from_numpy(np.ascontiguousarray(frame[None]))
            for angle in angles:
                emb = self._core.embed(self.tile_features(uploaded, layout, angle, device, batch)[0])  # (T, th, tw, D)
                banks.append(emb.reshape(-1, emb.shape[-1]).to(dtype))
                owners.append(torch.full((banks[-1].shape[0],), i, dtype=torch.int64, device=device))
                positions.append(cells.reshape(-1, 2))
                tile_ids = torch.arange(layout.n_tiles, device=device)
                tiles.append(tile_ids[:, None].expand(-1, emb.shape[1] * emb.shape[2]).reshape(-1))
                if angle == 0.0 and i in loo_ids:
                    loo.append((i, emb.to(dtype)))
            if progress is not None:
                progress(i + 1, total)
        if first is None:
            msg = "no good images to fit on: fit() needs at least one good frame"
            raise ValueError(msg)
        return TiledBankParts(torch.cat(banks), torch.cat(owners), torch.cat(positions), torch.cat(tiles), loo, first)

    # ------------------------------------------------------------------ scoring
    def patch_scores(self, emb: torch.Tensor, bank: torch.Tensor, bank_owner: torch.Tensor, *,
                     owner: int | None = None) -> torch.Tensor:
        """(B, T, th, tw, D) embedded tile features -> (B, T, th, tw) distances to the bank (shared), or to
        the bank rows of each tile's own position (per_position); ``owner`` leaves that frame's rows out."""
        cfg = self._config
        b, n_tiles, th, tw, d = emb.shape

        def knn(queries: torch.Tensor, rows: slice) -> torch.Tensor:
            q_owner = b_owner = None
            if owner is not None:
                q_owner = torch.full((queries.shape[0],), owner, dtype=torch.int64, device=queries.device)
                b_owner = bank_owner[rows]
            return knn_distances(queries, bank[rows], k=cfg.k, chunk_size=cfg.chunk_size,
                                 query_chunk_size=cfg.query_chunk_size, query_owner=q_owner, bank_owner=b_owner)

        if cfg.tile_bank == "shared":
            return knn(emb.reshape(-1, d), slice(None)).reshape(b, n_tiles, th, tw)
        if len(self._bounds) != n_tiles:
            msg = f"the per-position bank holds {len(self._bounds)} tile positions; this frame has {n_tiles}"
            raise ValueError(msg)
        out = [knn(emb[:, t].reshape(-1, d), slice(*self._bounds[t])).reshape(b, th, tw) for t in range(n_tiles)]
        return torch.stack(out, dim=1)

    def score(self, frames: torch.Tensor, bank: torch.Tensor, bank_owner: torch.Tensor, *, device: torch.device,
              batch_size: int, with_features: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, H, W, 3) uint8 frames -> ((B,) image scores, (B, H, W) maps, (B, gh, gw, D) raw features or None)."""
        layout = self.layout(int(frames.shape[1]), int(frames.shape[2]))
        raw = self.tile_features(frames, layout, 0.0, device, batch_size)
        stitched = stitch(self.patch_scores(self._core.embed(raw.flatten(0, 1)).reshape(raw.shape), bank,
                                            bank_owner)[..., None], layout, blend=self._config.tile_blend)[..., 0]
        maps = anomaly_maps(stitched, layout.geo, sigma=self._config.blur_sigma, full_size=True)
        features = stitch(raw, layout, blend="mean") if with_features else None
        return self.image_scores(stitched, layout), maps, features

    def image_scores(self, stitched: torch.Tensor, layout: TileLayout) -> torch.Tensor:
        """(B, gh, gw) stitched patch scores -> (B,) mean of the top cells, as many as ``top_percent`` % of ONE
        tile's cells: the count the untiled detector averages over a frame at the model's resolution. (The
        same share of a whole 5 MP grid would average ~250 cells and dilute a defect of one or two cells.)"""
        n_top = max(int(layout.tile[0] * layout.tile[1] * self._config.top_percent / 100.0), 1)
        flat = stitched.reshape(stitched.shape[0], -1)
        return flat.topk(min(n_top, flat.shape[1]), dim=1).values.mean(dim=1)

    def leave_one_out(self, owner: int, emb: torch.Tensor, bank: torch.Tensor,
                      bank_owner: torch.Tensor) -> tuple[float, np.ndarray] | None:
        """One fit frame's (T, th, tw, D) tiles scored without its own bank rows -> (image score, map at the
        tiling scale), or None when the bank holds nothing else."""
        assert self.frame is not None
        layout = self.layout(*self.frame)
        scores = self.patch_scores(emb[None], bank, bank_owner, owner=owner)
        if not torch.isfinite(scores).all():
            return None
        stitched = stitch(scores[..., None], layout, blend=self._config.tile_blend)[..., 0]
        amap = anomaly_maps(stitched, layout.geo, sigma=self._config.blur_sigma, full_size=False)[0]
        return float(self.image_scores(stitched, layout)[0]), amap.cpu().numpy().astype(np.float32, copy=False)

    def leave_one_out_all(self, items: list[tuple[int, torch.Tensor]], bank: torch.Tensor, bank_owner: torch.Tensor
                          ) -> tuple[np.ndarray, list[np.ndarray]]:
        """`leave_one_out` of every (owner, tiles) fit item -> (N,) float32 image scores and their maps (the
        frames whose bank holds nothing else left out)."""
        scored = [self.leave_one_out(owner, emb, bank, bank_owner) for owner, emb in items]
        kept = [x for x in scored if x is not None]
        logger.info("patch_knn tiled leave-one-out scores of %d frame(s)", len(kept))
        return np.asarray([score for score, _ in kept], dtype=np.float32), [amap for _, amap in kept]

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Plain fields for ``models.saved`` (absent from models saved before tiling: they load untiled)."""
        return {"tiling_active": self.active, "tiled_frame": list(self.frame) if self.frame is not None else None}

    def load_state(self, info: dict[str, Any]) -> None:
        """Inverse of ``state``; a model saved before tiling existed is untiled."""
        self.active = bool(info.get("tiling_active", False))
        frame = info.get("tiled_frame")
        self.frame = (int(frame[0]), int(frame[1])) if self.active and frame is not None else None
        if self.active and self.frame is None:
            msg = "saved state says the model tiles but lacks tiled_frame (the size of the taught frames)"
            raise ValueError(msg)


def _cell_positions(layout: TileLayout, device: torch.device) -> torch.Tensor:
    """(T, th, tw, 2) float32 (y, x) centre of each tile cell on the frame's grid, scaled to [0, 1]."""
    gh, gw = layout.grid
    th, tw = layout.tile
    ys = (torch.arange(th, device=device, dtype=torch.float32) + 0.5)
    xs = (torch.arange(tw, device=device, dtype=torch.float32) + 0.5)
    out = []
    for r, c in layout.origins:
        yy, xx = torch.meshgrid((ys + r) / gh, (xs + c) / gw, indexing="ij")
        out.append(torch.stack([yy, xx], dim=-1))
    return torch.stack(out)


def tiles_sorted(tile: torch.Tensor) -> torch.Tensor:
    """Stable order of bank rows by tile position (rows of one position together, fit order kept)."""
    return torch.sort(tile, stable=True).indices

