"""Tiling of high-resolution frames for the patch-kNN detector: cut, score per tile, stitch.

Resizing a 5 MP frame (2448 x 2048) so its shorter side is 448 px shrinks it ~4.6x, and a defect a
few pixels wide is averaged into one patch with its good surroundings. With tiling
(``PatchKNNConfig.tiling``) the frame is instead brought to the tiling scale (``shorter_side /
tile_size`` model pixels per frame pixel: 1, its native resolution, when ``tile_size`` is the
default), cropped to whole patches like the untiled input, and cut into overlapping tiles of
``shorter_side`` model pixels; the backbone sees one tile at a time, at the resolution its bank
was taught at.

All tiles start on the frame's patch grid, so their patch scores land on one frame-wide grid of
patch cells: ``stitch`` blends the cells that several tiles cover (mean or max), and the image
score and the anomaly map are made from that one stitched grid exactly as the untiled detector
makes them from its own (top-1 % mean; bilinear upsampling and blur over the whole frame, so the
blur has no tile borders). The stitched grid is the untiled grid of the frame at the tiling scale:
``TileLayout.geo`` maps it back to the frame, and ``tiling_shorter_side`` is the ``shorter_side``
that ``models.preprocess.frame_geometry`` needs to find it (defect typing, region merging).

Everything here is pure tensor arithmetic on the model input; ``PatchKNN`` decides when to tile and
which bank a tile is matched against (one shared bank, or one per tile position).
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import torch
import torch.nn.functional as F

from models.preprocess import FrameGeometry, frame_geometry

__all__ = ["TILING_AUTO_MIN_SCALE", "TileLayout", "cut_tiles", "rotate_tiles", "stitch", "tile_layout",
           "tiling_shorter_side"]

# "auto" tiles when the untiled input would shrink the frame by this factor or more (a defect of
# 4 px would become 2 px, a seventh of a 14-px patch); smaller frames lose little detail untiled.
TILING_AUTO_MIN_SCALE: Final = 2.0


class TileLayout(NamedTuple):
    """Where the tiles of one frame size lie, in cells of the frame's patch grid."""

    geo: FrameGeometry  # the whole frame at the tiling scale (its crop is the stitched grid times the patch)
    grid: tuple[int, int]  # (gh, gw) patch cells of the stitched grid
    tile: tuple[int, int]  # (th, tw) patch cells per tile (smaller than shorter_side only for a small frame)
    origins: tuple[tuple[int, int], ...]  # (row, col) cell of each tile's top-left corner, row-major
    patch_size: int

    @property
    def n_tiles(self) -> int:
        return len(self.origins)


def tiling_shorter_side(height: int, width: int, *, shorter_side: int, tile_size: int) -> int:
    """The shorter side (model pixels) of the whole frame at the tiling scale ``shorter_side / tile_size``.

    Never below ``shorter_side``: a frame whose shorter side is under ``tile_size`` is brought up to
    the model's resolution, as the untiled detector does (one row or column of tiles).
    """
    return max(shorter_side, round(min(height, width) * shorter_side / tile_size))


def _starts(length: int, tile: int, overlap: float) -> tuple[int, ...]:
    """Tile starts (cells) along one axis: evenly spread, the last tile ending at ``length``, the
    neighbours sharing at least ``overlap`` of a tile."""
    if length <= tile:
        return (0,)
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return tuple(sorted({round(i * (length - tile) / (n - 1)) for i in range(n)}))


def tile_layout(
    height: int, width: int, *, shorter_side: int, tile_size: int, overlap: float, patch_size: int = 14
) -> TileLayout:
    """The tiles of a ``height`` x ``width`` frame.

    Args:
        height, width: the frame's size in pixels.
        shorter_side: the model's resolution: a tile is ``shorter_side`` model pixels square (cut down
            to whole patches).
        tile_size: frame pixels per tile side (``shorter_side``: the frame at its native resolution).
        overlap: the least share of a tile side that neighbouring tiles have in common, in [0, 1).
        patch_size: the backbone's patch size.

    Raises:
        ValueError: ``shorter_side`` is below one patch, or the frame has no area (``frame_geometry``).
    """
    side = tiling_shorter_side(height, width, shorter_side=shorter_side, tile_size=tile_size)
    geo = frame_geometry(height, width, shorter_side=side, patch_size=patch_size)
    gh, gw = geo.crop[0] // patch_size, geo.crop[1] // patch_size
    cells = max(shorter_side // patch_size, 1)
    th, tw = min(cells, gh), min(cells, gw)
    origins = tuple((r, c) for r in _starts(gh, th, overlap) for c in _starts(gw, tw, overlap))
    return TileLayout(geo=geo, grid=(gh, gw), tile=(th, tw), origins=origins, patch_size=patch_size)


def cut_tiles(images: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """(B, C, H, W) model input of the whole frame (``layout.geo.crop``) -> (B * T, C, th * p, tw * p) tiles,
    frame-major (the tiles of frame 0 first, in ``layout.origins`` order)."""
    p = layout.patch_size
    th, tw = layout.tile
    if tuple(images.shape[-2:]) != layout.geo.crop:
        msg = f"model input of {tuple(images.shape[-2:])} does not match the tile layout's {layout.geo.crop}"
        raise ValueError(msg)
    tiles = [images[:, :, r * p : (r + th) * p, c * p : (c + tw) * p] for r, c in layout.origins]
    return torch.stack(tiles, dim=1).reshape(-1, images.shape[1], th * p, tw * p)


def stitch(values: torch.Tensor, layout: TileLayout, *, blend: str) -> torch.Tensor:
    """(B, T, th, tw, ...) per-tile values -> (B, gh, gw, ...) on the frame's patch grid.

    A cell covered by several tiles gets their mean (``blend="mean"``) or their maximum (``"max"``).
    """
    if blend not in ("mean", "max"):
        msg = f"tile blend must be 'mean' or 'max', got {blend!r}"
        raise ValueError(msg)
    b, th, tw = values.shape[0], layout.tile[0], layout.tile[1]
    rest = tuple(values.shape[4:])
    gh, gw = layout.grid
    if blend == "max":
        out = torch.full((b, gh, gw, *rest), -torch.inf, dtype=values.dtype, device=values.device)
        for t, (r, c) in enumerate(layout.origins):
            region = out[:, r : r + th, c : c + tw]
            torch.maximum(region, values[:, t], out=region)
        return out
    total = torch.zeros((b, gh, gw, *rest), dtype=values.dtype, device=values.device)
    count = torch.zeros((gh, gw), dtype=values.dtype, device=values.device)
    for t, (r, c) in enumerate(layout.origins):
        total[:, r : r + th, c : c + tw] += values[:, t]
        count[r : r + th, c : c + tw] += 1
    return total / count.reshape(1, gh, gw, *([1] * len(rest)))


def rotate_tiles(tiles: torch.Tensor, angle: float) -> torch.Tensor:
    """(N, C, h, w) tiles rotated about their centres by ``angle`` degrees (counter-clockwise, as
    ``cv2.getRotationMatrix2D``), same size; corners are filled by reflection, as ``PatchKNN`` does for
    whole frames. Multiples of 90 degrees on square tiles are exact."""
    if angle % 360 == 0:
        return tiles
    h, w = tiles.shape[-2:]
    if angle % 90 == 0 and h == w:
        return torch.rot90(tiles, k=int(angle // 90) % 4, dims=(2, 3))
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    # affine_grid maps output to input coordinates in [-1, 1]; the aspect ratio keeps the turn rigid
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=tiles.dtype,
                         device=tiles.device)
    grid = F.affine_grid(theta.expand(tiles.shape[0], 2, 3), list(tiles.shape), align_corners=False)
    return F.grid_sample(tiles, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
