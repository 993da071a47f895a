"""A second, coarser neighbourhood scale whose image score and map are fused with the fine scale's (issue 11).

PatchCore averages each patch feature over its 3 x 3 neighbours, MuSc fuses patch scores at r = 1, 3 and 5.
On the dev categories a coarse scale sees what a single patch does not (a misplaced or missing component, a
bent lead: structures larger than one patch) and loses the smallest defects (scratches, spots) to the
averaging. So the coarse scale does not replace the fine one: the frame is scored at both, each image score
is turned into a z-score by the good frames' leave-one-out scores at that scale (mean and standard
deviation over the same frames, as ``models.detectors._aligned.GlobalFusion`` does), and the fused score is

    fine_mean + fine_std * (z_fine + weight * z_coarse)

in the fine score's units, so thresholds and reports keep the meaning of a cosine distance. Measured on the three
dev categories, full test sets, shot seeds 0-2 (``benchmarks/levers.py``, row "z r=1 + 0.2 z r=5"): image AUROC 0.850 ->
0.925 on transistor, 0.918 -> 0.916 on fryum, 0.834 -> 0.828 on magnetic tile (mean 0.868 -> 0.889); the
weight and the scale were chosen on those same sets (``benchmarks/README.md``).

Taught from ONE good frame there is no leave-one-out spread: the frame's region-leave-out scores
(``models.detectors.one_shot``, radius 1, 2, 3) at both scales give the means, and each scale's spread is taken in
proportion to its mean (``ScaleFusion.from_means``). Same scale and weight; measured the same way at one shot:
transistor 0.718 -> 0.796, fryum 0.895 -> 0.894, magnetic tile 0.710 -> 0.714.

The same proportional rule is now the default from any number of good frames (``PatchKNNConfig.
second_scale_spread = "proportional"``): the fused score is ``fine + weight * (fine_mean / coarse_mean) *
(coarse - coarse_mean)``, two means instead of two means and two standard deviations of a few leave-one-out
scores (whose ratio swung from 0.5 to 3.8 between 4-shot seeds). Full test sets, shot seeds 0-2: 16 shots
transistor 0.925 -> 0.936, fryum 0.916 -> 0.916, magnetic tile 0.828 -> 0.826; 4 shots transistor 0.888 -> 0.906,
fryum 0.913 -> 0.911. ``"measured"`` (``ScaleFusion.from_loo``) keeps the standard deviations.

The anomaly map holds both scales too (``PatchKNNConfig.second_scale_map``, issue 11's twenty-fifth look), at the
image score's weight and units and in the fine map's: ``(fine + weight * (fine_std / coarse_std) * coarse) / (1 +
weight)`` per patch (``ScaleFusion.fuse_maps``; a map is linear in its patch scores, so the leave-one-out maps that
set the pixel threshold fuse alike). The coarse patch scores are the image score's, so it costs no search. 16 shots,
full test sets, shot seeds 0-2, AUPRO: transistor 0.839 -> 0.877 as written (0.836 -> 0.855 where the teach step
whitens), fryum 0.896 -> 0.897, magnetic tile 0.761 -> 0.757; one shot: transistor 0.627 -> 0.680, fryum 0.890 ->
0.890 (``benchmarks/map_probe.py``). Models saved before keep the fine map (``models.saved.SAVED_BEFORE``).

Example:
    >>> fusion = ScaleFusion.from_means(fine_loo, coarse_loo, weight=0.2)    # or .from_loo (measured)
    >>> fused = fusion.fuse(fine_scores, coarse_scores)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from models.detectors._aligned import MIN_STD  # a scale whose leave-one-out scores do not vary still gets a z-score
from models.detectors._whitening import FeatureWhitening

if TYPE_CHECKING:
    from models.detectors.patch_knn_config import PatchKNNConfig

__all__ = ["ScaleFusion", "SecondScale", "pooled_unit"]

logger = logging.getLogger(__name__)

MapT = TypeVar("MapT", np.ndarray, torch.Tensor)


def pooled_unit(raw: torch.Tensor, pool: int, whitening: FeatureWhitening | None = None) -> torch.Tensor:
    """(B, h, w, D) raw features -> the same, float32, mapped into the good patches' space (``whitening``, when
    given and fitted), averaged over ``pool`` x ``pool`` neighbours (PatchCore; 1 = none) and L2-normalised.
    ``PatchKNNCore.embed`` with ``patch_pooling=pool``."""
    feats = raw.float() if whitening is None else whitening(raw.float())
    if pool > 1:
        h, w = feats.shape[1], feats.shape[2]
        grid = F.avg_pool2d(feats.permute(0, 3, 1, 2), pool, stride=1, padding=pool // 2, count_include_pad=False)
        feats = grid[..., :h, :w].permute(0, 2, 3, 1)  # even sizes pad one too many
    return F.normalize(feats, dim=-1)


def _paired(fine: np.ndarray, coarse: np.ndarray, *, at_least: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The two score vectors as float64, checked: the same length of at least ``at_least``, every one finite."""
    f = np.asarray(fine, dtype=np.float64)
    c = np.asarray(coarse, dtype=np.float64)
    if f.shape != c.shape or f.ndim != 1 or f.size < at_least or not (np.isfinite(f).all() and np.isfinite(c).all()):
        msg = f"scale fusion needs finite {what}, got {f.shape} fine and {c.shape} coarse scores"
        raise ValueError(msg)
    return f, c


@dataclass(frozen=True, kw_only=True)
class ScaleFusion:
    """The leave-one-out statistics that put the fine and the coarse image scores on one scale."""

    fine_mean: float    # mean leave-one-out image score of the good frames at the fine scale
    fine_std: float     # its spread: the standard deviation (in proportion to the mean: the mean, ``from_means``)
    coarse_mean: float  # the same at the coarse scale, over the same frames
    coarse_std: float
    weight: float       # the coarse z-score's weight (``PatchKNNConfig.second_scale_weight``)

    @classmethod
    def from_loo(cls, fine: np.ndarray, coarse: np.ndarray, *, weight: float) -> ScaleFusion:
        """From (N,) leave-one-out image scores of the same N >= 2 good frames at both scales.

        Raises:
            ValueError: the two differ in length, hold fewer than 2 scores or a non-finite one.
        """
        f, c = _paired(fine, coarse, at_least=2, what="leave-one-out scores of the same 2 or more frames")
        return cls(fine_mean=float(f.mean()), fine_std=float(f.std()), coarse_mean=float(c.mean()),
                   coarse_std=float(c.std()), weight=float(weight))

    @classmethod
    def from_means(cls, fine: np.ndarray, coarse: np.ndarray, *, weight: float) -> ScaleFusion:
        """From paired scores of the good frames at both scales, each scale's spread in proportion to its mean
        (the same coefficient of variation at both scales): the fused score is then
        ``fine + weight * (fine_mean / coarse_mean) * (coarse - coarse_mean)``.

        The scores are N frames' leave-one-out scores (``second_scale_spread = "proportional"``, the default), or
        the (R,) region-leave-out scores of ONE good frame (``models.detectors.one_shot``: one score per radius
        left out), which do not say how much the scores of other good frames spread.

        Raises:
            ValueError: the two differ in length, are empty or hold a non-finite score.
        """
        f, c = _paired(fine, coarse, at_least=1,
                       what="scores of the same frames (or of one frame, the same radii) at both scales")
        fine_mean, coarse_mean = float(f.mean()), float(c.mean())
        return cls(fine_mean=fine_mean, fine_std=fine_mean, coarse_mean=coarse_mean, coarse_std=coarse_mean,
                   weight=float(weight))

    def fuse(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """(B,) fine and (B,) coarse image scores -> (B,) fused scores in the fine score's units."""
        f_std, c_std = max(self.fine_std, MIN_STD), max(self.coarse_std, MIN_STD)
        z_fine = (fine.float() - self.fine_mean) / f_std
        z_coarse = (coarse.to(fine.device).float() - self.coarse_mean) / c_std
        return self.fine_mean + f_std * (z_fine + self.weight * z_coarse)

    def fuse_maps(self, fine: MapT, coarse: MapT) -> MapT:
        """Fine and coarse anomaly maps (or patch scores) of the same frames -> the map of both scales, in the fine
        map's units: ``(fine + weight * (fine_std / coarse_std) * coarse) / (1 + weight)``, each scale in the image
        score's units (a map is linear in the patch scores, so maps and patch scores fuse alike)."""
        ratio = max(self.fine_std, MIN_STD) / max(self.coarse_std, MIN_STD)
        return (fine + (self.weight * ratio) * coarse) / (1.0 + self.weight)

    def to_dict(self) -> dict[str, float]:
        """Plain fields, for the saved model's info."""
        return {"fine_mean": self.fine_mean, "fine_std": self.fine_std, "coarse_mean": self.coarse_mean,
                "coarse_std": self.coarse_std, "weight": self.weight}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScaleFusion:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: a field is missing or not a finite number.
        """
        names = ("fine_mean", "fine_std", "coarse_mean", "coarse_std", "weight")
        values = {n: data.get(n) for n in names}
        bad = [n for n, v in values.items()
               if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v)]
        if bad:
            msg = f"saved scale fusion lacks finite {', '.join(bad)}"
            raise ValueError(msg)
        return cls(**{n: float(v) for n, v in values.items() if v is not None})


class SecondScale:
    """The coarse scale of one ``PatchKNN``: its bank (the fine bank's patches pooled over ``second_scale`` x
    ``second_scale`` neighbours, row for row: same owners, positions and coreset), and the fusion's statistics.
    ``PatchKNN`` calls it at fit, ``add_normal``, predict, save and load.

    Args:
        config: the detector's options (``second_scale``, ``second_scale_weight``, ``patch_pooling``).
        empty: an empty (0, D) bank of the detector's dtype and device.
        whitening: the detector's feature map (``PatchKNNConfig.whitening``), shared with its core.
    """

    def __init__(self, config: PatchKNNConfig, empty: torch.Tensor, whitening: FeatureWhitening | None = None) -> None:
        self._config = config
        self._whitening = whitening
        self.bank = empty.clone()   # (M, D) coarse patches of the bank's rows; empty when not used
        self.fusion: ScaleFusion | None = None   # None: the fine scale alone
        self._collecting = False
        self._parts: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        """Whether image scores fuse the coarse scale's (decided at fit)."""
        return self.fusion is not None

    def begin_fit(self, *, tiled: bool) -> None:
        """A new fit: forget everything; collect coarse rows when the scale can be calibrated (coarser than
        the fine scale, untiled, calibration scores asked for; ``fit_fusion`` drops them when none come)."""
        cfg = self._config
        self.fusion = None
        self.bank = self.bank[:0]
        self._collecting = cfg.second_scale > cfg.patch_pooling and cfg.loo_max_images > 0 and not tiled
        self._parts = []

    def begin_more(self) -> None:
        """Frames added to a fitted bank (``add_normal``): collect their coarse rows when the bank has them."""
        self._collecting = self.bank.shape[0] > 0
        self._parts = []

    def embed(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) raw features -> the same at the coarse scale, L2-normalised."""
        return pooled_unit(raw, self._config.second_scale, self._whitening)

    def add(self, raw: torch.Tensor) -> None:
        """Collect the coarse rows of one (h, w, D) view, in the order its fine rows join the bank."""
        if self._collecting:
            self._parts.append(self.embed(raw[None]).reshape(-1, raw.shape[-1]).to(self.bank.dtype))

    def end(self) -> None:
        """Append the collected rows to the coarse bank."""
        if self._collecting and self._parts:
            self.bank = torch.cat([self.bank, *self._parts])
        self._collecting, self._parts = False, []

    def keep(self, rows: torch.Tensor, n_rows: int) -> None:
        """The fine bank of ``n_rows`` rows keeps ``rows`` (coreset, tile order): the coarse bank too."""
        if self.bank.shape[0] == n_rows:
            self.bank = self.bank[rows].contiguous()

    def fit_fusion(self, fine: np.ndarray, coarse: list[float], *, one_frame: bool = False) -> np.ndarray:
        """The fusion's statistics from (N,) leave-one-out fine and coarse image scores of the same frames;
        returns the fused leave-one-out scores (the calibration's input), or ``fine`` unchanged when the
        scale is not used or too few frames were scored (then the coarse bank is dropped).

        ``one_frame``: the scores are one frame's region-leave-out scores (``models.detectors.one_shot``), not
        N frames': ``ScaleFusion.from_means`` (each scale's spread in proportion to its mean)."""
        if self.bank.shape[0] == 0:
            return fine
        needed = 1 if one_frame else 2
        if len(fine) < needed or len(coarse) != len(fine) or not np.isfinite(coarse).all():
            self.bank = self.bank[:0]
            return fine
        weight = self._config.second_scale_weight
        proportional = one_frame or self._config.second_scale_spread == "proportional"
        make = ScaleFusion.from_means if proportional else ScaleFusion.from_loo
        self.fusion = make(fine, np.asarray(coarse), weight=weight)
        logger.info("patch_knn second scale r=%d fused (weight %.2f%s): coarse calibration scores mean %.4f",
                    self._config.second_scale, weight, ", from one frame" if one_frame else "", float(np.mean(coarse)))
        fused = self.fusion.fuse(torch.from_numpy(np.asarray(fine, dtype=np.float32)), torch.tensor(coarse))
        return fused.numpy().astype(np.float32)

    def fuse(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """(B,) fine and coarse image scores -> (B,) fused (``fine`` when the scale is not used)."""
        return fine if self.fusion is None else self.fusion.fuse(fine, coarse).to(fine.dtype)

    @property
    def in_map(self) -> bool:
        """Whether the anomaly map holds the coarse scale too (``second_scale_map``, the scale fused)."""
        return self.fusion is not None and self._config.second_scale_map and self.fusion.weight > 0

    def fuse_maps(self, fine: list[np.ndarray], coarse: list[np.ndarray]) -> list[np.ndarray]:
        """Calibration maps of the same frames at both scales -> the maps the detector gives (``fine`` when the
        coarse scale is not in the map)."""
        fusion = self.fusion
        if fusion is None or not self.in_map:
            return fine
        if len(coarse) != len(fine):
            msg = f"scale fusion needs a coarse map for each of the {len(fine)} fine maps, got {len(coarse)}"
            raise ValueError(msg)
        return [fusion.fuse_maps(f, c).astype(np.float32, copy=False) for f, c in zip(fine, coarse, strict=True)]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and plain fields to save; empty when not used (models saved before keep their layout)."""
        if self.fusion is None:
            return {}, {}
        info = {"pooling": self._config.second_scale, **self.fusion.to_dict()}
        return {"second_bank": self.bank.detach().contiguous()}, {"scale_fusion": info}

    def load_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any], bank: torch.Tensor) -> None:
        """Restore what ``state`` gave, beside the loaded fine ``bank``; none saved: the fine scale alone.

        Raises:
            ValueError: the saved coarse bank does not match the fine one, or its scale is not the config's.
        """
        saved = info.get("scale_fusion")
        self.fusion, self.bank = None, bank.new_empty((0, bank.shape[1]))
        if not isinstance(saved, dict):
            return
        coarse = tensors.get("second_bank")
        if coarse is None or coarse.shape != bank.shape:
            shape = None if coarse is None else tuple(coarse.shape)
            msg = f"saved state fuses a second scale but its second_bank is {shape}; expected {tuple(bank.shape)}"
            raise ValueError(msg)
        if saved.get("pooling") != self._config.second_scale:
            msg = (f"saved state fuses a second scale of pooling {saved.get('pooling')!r}, but the config says "
                   f"second_scale={self._config.second_scale}")
            raise ValueError(msg)
        self.fusion = ScaleFusion.from_dict(saved)
        self.bank = coarse.to(bank.device, bank.dtype).contiguous()
