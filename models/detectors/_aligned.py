"""Aligned parts: the alignment check made at fit, and an image-level (global) term fused with the patch score.

Issue 11's lever for parts that sit in a fixture: a missing or misplaced component looks normal *somewhere*
on a good part (a lead is a lead), so free patch matching finds it a good neighbour. Two things see it:

1. position-restricted matching (``PatchKNNConfig.position_radius`` / ``alignment_radius``): a patch is
   matched only against bank patches near its own place (``models.detectors._knn.knn_distances``);
2. a global descriptor: the frame's L2-normalised patch features averaged over a coarse ``grid x grid``
   grid of cells (each cell L2-normalised), and its distance to the nearest good frame's (mean cosine
   distance over the cells). A component that moved changes the layout, not the look of any patch.

Fusion has no free scale: each part is turned into a z-score by the leave-one-out scores of the good
frames (mean and standard deviation of each part over the same frames), the larger z-score is kept (a
defect seen by either part counts) and mapped back into the patch score's units, so thresholds,
reports and maps keep the meaning of a cosine distance.

Whether a product is aligned is decided from the good frames alone (``alignment="auto"``): in the
leave-one-out matching of the fit, the share of (scored) good patches whose nearest neighbour anywhere
is found within the radius of their own place anyway, i.e. for which restricting the search costs
nothing. For a part in a fixture most patches match at their own place; for a texture, or a part lying
at any angle, the nearest neighbour is anywhere, so the share falls towards the chance level (the
disc's share of the frame, about 3 % at radius 0.1). Measured limit: on DINOv2 block-8 features a texture
(magnetic tile) still gives 0.91, since the patch tokens carry their position; so "auto" calls every dev
category aligned and is not the default (``benchmarks/README.md``, aligned parts).

Example:
    >>> share = aligned_share(free_loo, restricted_loo)          # (Q,) distances of the same patches
    >>> aligned = share >= 0.5
    >>> fusion = GlobalFusion.from_loo(patch_loo_scores, global_loo_distances)
    >>> fused = fusion.fuse(patch_scores, global_distances(descriptors(emb), bank))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from models.detectors.patch_knn_config import PatchKNNConfig

__all__ = ["AlignedScoring", "GlobalFusion", "aligned_share", "descriptors", "global_distances", "grid_positions"]

logger = logging.getLogger(__name__)

# ours: ties of the two searches are the same bank patch; float32 rounding of one dot product stays below this
TIE_TOLERANCE: Final = 1e-6
# ours: a part whose leave-one-out scores do not vary (identical frames) still gets a finite z-score
MIN_STD: Final = 1e-6


def grid_positions(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h * w, 2) float32 (y, x) centres of an h x w patch grid, scaled to [0, 1], row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def descriptors(embedded: torch.Tensor, grid: int) -> torch.Tensor:
    """Global descriptors of frames: their patch features averaged over a coarse grid of cells.

    Args:
        embedded: (B, h, w, D) float L2-normalised patch features (``PatchKNNCore.embed``).
        grid: cells per side; each cell covers about 1/grid of the frame's height and width.

    Returns:
        (B, grid * grid, D) float32, each cell L2-normalised.
    """
    cells = F.adaptive_avg_pool2d(embedded.float().permute(0, 3, 1, 2), grid)    # (B, D, grid, grid)
    return F.normalize(cells.flatten(2).transpose(1, 2), dim=-1)


def global_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    *,
    query_owner: torch.Tensor | None = None,
    bank_owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance of each frame's descriptor to the nearest good frame's: mean cosine distance over the cells.

    Args:
        queries: (B, C, D) descriptors (``descriptors``).
        bank: (N, C, D) descriptors of the good frames.
        query_owner: (B,) int64; with ``bank_owner``, a good frame is not compared with itself (leave-one-out).
        bank_owner: (N,) int64 owner id of each good frame.

    Returns:
        (B,) float32 in [0, 2]; ``inf`` where no good frame was allowed.
    """
    if queries.ndim != 3 or bank.ndim != 3 or queries.shape[1:] != bank.shape[1:]:
        msg = f"global descriptors {tuple(queries.shape)} and bank {tuple(bank.shape)} must be (B, C, D), (N, C, D)"
        raise ValueError(msg)
    sims = torch.einsum("bcd,ncd->bn", queries.float(), bank.to(queries.device).float()) / queries.shape[1]
    if query_owner is not None and bank_owner is not None:
        sims = sims.masked_fill(query_owner[:, None] == bank_owner.to(sims.device)[None, :], -torch.inf)
    if sims.shape[1] == 0:
        return torch.full((queries.shape[0],), torch.inf, dtype=torch.float32, device=queries.device)
    return (1.0 - sims.amax(dim=1)).clamp(min=0.0)


def aligned_share(free: torch.Tensor, restricted: torch.Tensor) -> float | None:
    """Share of good patches whose nearest neighbour anywhere lies within the search radius anyway.

    Args:
        free: (Q,) float32 leave-one-out distances of good patches, searched anywhere.
        restricted: (Q,) the same patches' distances searched within the radius only.

    Returns:
        The share in [0, 1], over patches scored in both searches with a non-zero free distance (masked-out
        patches score 0, and an exact copy tells nothing about position); None when there is none.
    """
    scored = torch.isfinite(free) & torch.isfinite(restricted) & (free > 0)
    if not bool(scored.any()):
        return None
    near = restricted[scored] <= free[scored] + TIE_TOLERANCE
    return float(near.float().mean())


@dataclass(frozen=True, kw_only=True)
class GlobalFusion:
    """The leave-one-out statistics that put the patch score and the global distance on one scale."""

    patch_mean: float  # mean leave-one-out image score of the good frames (patch part)
    patch_std: float   # its standard deviation
    global_mean: float  # mean leave-one-out global distance of the same frames
    global_std: float  # its standard deviation

    @classmethod
    def from_loo(cls, patch_scores: np.ndarray, global_scores: np.ndarray) -> GlobalFusion:
        """From (N,) leave-one-out patch image scores and global distances of the same N >= 1 good frames.

        Raises:
            ValueError: the two differ in length, are empty or hold a non-finite value.
        """
        p = np.asarray(patch_scores, dtype=np.float64)
        g = np.asarray(global_scores, dtype=np.float64)
        if p.shape != g.shape or p.ndim != 1 or p.size == 0 or not (np.isfinite(p).all() and np.isfinite(g).all()):
            msg = (f"global fusion needs finite leave-one-out scores of the same frames, got {p.shape} patch "
                   f"and {g.shape} global scores")
            raise ValueError(msg)
        return cls(patch_mean=float(p.mean()), patch_std=float(p.std()), global_mean=float(g.mean()),
                   global_std=float(g.std()))

    def fuse(self, patch: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """(B,) patch image scores and (B,) global distances -> (B,) fused scores in the patch score's units:
        ``patch_mean + patch_std * max(z_patch, z_global)``."""
        p_std, g_std = max(self.patch_std, MIN_STD), max(self.global_std, MIN_STD)
        z_patch = (patch.float() - self.patch_mean) / p_std
        z_global = (global_.to(patch.device).float() - self.global_mean) / g_std
        return self.patch_mean + p_std * torch.maximum(z_patch, z_global)

    def to_dict(self) -> dict[str, float]:
        """Plain fields, for the saved model's info."""
        return {"patch_mean": self.patch_mean, "patch_std": self.patch_std, "global_mean": self.global_mean,
                "global_std": self.global_std}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> GlobalFusion:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: a field is missing or not a finite number.
        """
        names = ("patch_mean", "patch_std", "global_mean", "global_std")
        values = {n: data.get(n) for n in names}
        bad = [n for n, v in values.items() if not isinstance(v, int | float) or not np.isfinite(v)]
        if bad:
            msg = f"saved global fusion lacks finite {', '.join(bad)}"
            raise ValueError(msg)
        return cls(**{n: float(v) for n, v in values.items() if v is not None})


class AlignedScoring:
    """The alignment state of one ``PatchKNN``: whether its product counts as aligned, the good frames' global
    descriptors and the fusion's leave-one-out statistics. ``PatchKNN`` calls it at fit, predict, save and load.

    Args:
        config: the detector's options (``alignment``, ``alignment_radius``, ``alignment_min_share``,
            ``global_grid``, ``position_radius``).
    """

    def __init__(self, config: PatchKNNConfig) -> None:
        self._config = config
        self.active = False  # position restriction and the global term are in use
        self.share: float | None = None  # the leave-one-out share of good patches matched near their place
        self.fusion: GlobalFusion | None = None  # None: no leave-one-out scores (one frame): patch score alone
        self._descs: list[torch.Tensor] = []  # (C, D) per good frame
        self._owners: list[int] = []

    def reset(self) -> None:
        """Forget everything (a new fit)."""
        self.active, self.share, self.fusion = False, None, None
        self._descs, self._owners = [], []

    @property
    def enabled(self) -> bool:
        """Whether the config asks for alignment at all (``"on"`` or ``"auto"``)."""
        return self._config.alignment != "off"

    def radius(self) -> float | None:
        """The position search radius in use: ``position_radius``, else ``alignment_radius`` when aligned."""
        if self._config.position_radius is not None:
            return self._config.position_radius
        return self._config.alignment_radius if self.active else None

    def add(self, owner: int, embedded: torch.Tensor) -> None:
        """Keep the global descriptor of a good frame ((h, w, D) L2-normalised features of its unrotated view)."""
        if self.enabled:
            self._descs.append(descriptors(embedded[None], self._config.global_grid)[0])
            self._owners.append(owner)

    def decide(self, free: torch.Tensor | None, restricted: torch.Tensor | None) -> None:
        """Settle ``active``: ``"on"`` always; ``"auto"`` by the leave-one-out ``aligned_share`` of the good
        patches ((Q,) distances searched anywhere and within ``alignment_radius``; None without them)."""
        cfg = self._config
        if cfg.alignment != "auto":
            self.active = cfg.alignment == "on"
            return
        self.share = aligned_share(free, restricted) if free is not None and restricted is not None else None
        self.active = self.share is not None and self.share >= cfg.alignment_min_share
        logger.info("patch_knn alignment (auto): %s of the good patches match within %.2f of their place "
                    "-> %s", "n/a" if self.share is None else f"{100 * self.share:.0f} %", cfg.alignment_radius,
                    "aligned" if self.active else "not aligned")

    def decide_from_loo(self, items: list[tuple[int, torch.Tensor]],
                        patch_scores: Callable[..., torch.Tensor]) -> None:
        """``decide`` from the good frames matched leave-one-out anywhere and within ``alignment_radius``.

        Args:
            items: (owner, (1, h, w, D) raw features) of the leave-one-out frames.
            patch_scores: ``PatchKNN._patch_scores`` (``(raw, owner=, radius=) -> (1, h, w)`` distances).
        """
        free = near = None
        if self._config.alignment == "auto" and items:
            radius = self._config.alignment_radius
            free = torch.cat([patch_scores(raw, owner=owner, radius=None).reshape(-1) for owner, raw in items])
            near = torch.cat([patch_scores(raw, owner=owner, radius=radius).reshape(-1) for owner, raw in items])
        self.decide(free, near)

    def _bank(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self._descs).to(device), torch.tensor(self._owners, dtype=torch.int64, device=device)

    def fit_fusion(self, owners: list[int], patch_scores: np.ndarray) -> np.ndarray:
        """Leave-one-out global distances of the frames ``owners`` and the fusion's statistics.

        Args:
            owners: the good frames that have leave-one-out patch scores.
            patch_scores: (N,) their leave-one-out patch image scores.

        Returns:
            (N,) float32 fused leave-one-out scores (the calibration's input); ``patch_scores`` unchanged when
            not aligned or fewer than 2 good frames.
        """
        if not self.active or len(self._owners) < 2 or not owners:
            return patch_scores
        glob = self.loo_global(owners)
        self.fusion = GlobalFusion.from_loo(patch_scores, glob.numpy())
        fused = self.fusion.fuse(torch.from_numpy(np.asarray(patch_scores, dtype=np.float32)), glob)
        return fused.numpy().astype(np.float32)

    def loo_global(self, owners: list[int]) -> torch.Tensor:
        """(N,) float32 leave-one-out global distances of the good frames ``owners`` (each against the others).

        Raises:
            ValueError: a frame has no descriptor (``alignment="off"``) or only one good frame is known.
        """
        missing = set(owners) - set(self._owners)
        if missing or len(self._owners) < 2:
            msg = (f"leave-one-out global distances need descriptors of 2 or more good frames including "
                   f"{sorted(missing) or owners}; fit with alignment 'on' or 'auto'")
            raise ValueError(msg)
        bank, bank_owner = self._bank(torch.device("cpu"))
        index = {owner: i for i, owner in enumerate(self._owners)}
        return global_distances(bank[[index[o] for o in owners]], bank,
                                query_owner=torch.tensor(owners, dtype=torch.int64), bank_owner=bank_owner)

    def global_scores(self, embedded: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) L2-normalised features of test frames -> (B,) distances to the nearest good frame."""
        bank, _ = self._bank(embedded.device)
        return global_distances(descriptors(embedded, self._config.global_grid), bank)

    def fuse(self, patch_scores: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """(B,) patch image scores of test frames and their (B, h, w, D) features -> (B,) image scores."""
        if not self.active or self.fusion is None:
            return patch_scores
        return self.fusion.fuse(patch_scores, self.global_scores(embedded)).to(patch_scores.dtype)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and plain fields to save; empty with ``alignment="off"`` (models saved before keep their layout)."""
        if not self.enabled:
            return {}, {}
        tensors: dict[str, torch.Tensor] = {}
        if self._descs:
            bank, owner = self._bank(torch.device("cpu"))
            tensors = {"global_bank": bank.contiguous(), "global_owner": owner}
        info: dict[str, Any] = {"aligned": self.active, "aligned_share": self.share,
                                "global_fusion": self.fusion.to_dict() if self.fusion is not None else None}
        return tensors, info

    def load_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any], feature_dim: int) -> None:
        """Restore what ``state`` gave.

        Raises:
            ValueError: the saved global descriptors do not fit the config's grid or the backbone.
        """
        self.reset()
        if not self.enabled:
            return
        self.active = bool(info.get("aligned", False))
        share = info.get("aligned_share")
        self.share = float(share) if share is not None else None
        fusion = info.get("global_fusion")
        self.fusion = GlobalFusion.from_dict(fusion) if isinstance(fusion, dict) else None
        bank, owner = tensors.get("global_bank"), tensors.get("global_owner")
        if bank is None or owner is None:
            if self.fusion is not None:
                msg = "saved state of an aligned model lacks global_bank / global_owner (the good frames' descriptors)"
                raise ValueError(msg)
            return
        cells = self._config.global_grid ** 2
        if bank.ndim != 3 or bank.shape[1:] != (cells, feature_dim) or owner.shape != (bank.shape[0],):
            msg = (f"saved global_bank has shape {tuple(bank.shape)} and global_owner {tuple(owner.shape)}; "
                   f"expected (N, {cells}, {feature_dim}) and (N,)")
            raise ValueError(msg)
        self._descs = list(bank.float())
        self._owners = [int(o) for o in owner]
