"""The good bank's own spread as the unit of each patch's distance (issue 11; ``PatchKNNConfig.bank_spread``).

Plain patch kNN scores a patch by its cosine distance to the nearest good patch. Where good parts vary (a
transistor's leads and case edges), normal patches of that kind lie far apart even among the good images, and a
good part scores high there; where they do not (a plain background), a small distance already means something.
With the bank's spread, each bank entry m gets a unit

    s(m) = (r(m) + F) / median over the bank of (r + F),

r(m) its cosine distance to the nearest entry of ANOTHER good image (``_knn.bank_spread``) and F a floor of
``PatchKNNConfig.bank_spread_floor`` x the bank's median r (so that a tight region's
tiny radius does not blow the ratio up; a larger floor gives softer units, closer to plain distances), and a
patch q scores min over m of d(q, m) / s(m) (``knn_distances(bank_scale=...)``): the nearest good patch in units
of how widely good patches of that kind spread. The units' median is 1, so scores keep the size of a cosine
distance. Leave-one-out scores of a training frame use the radii of the bank without that frame
(``BankSpread.without``): exact, without a second search.

Not used when the frames are tiled or the bank holds one good frame (there is no other frame to measure r against).
"""

from __future__ import annotations

import logging

import torch

from models.detectors._knn import BankSpread, bank_spread

__all__ = ["SpreadScale"]

logger = logging.getLogger(__name__)

class SpreadScale:
    """The units of a PatchKNN's bank (``scale``, (M,) float32, median 1), or None where unused."""

    def __init__(self, enabled: bool, floor_share: float) -> None:
        self.enabled = enabled
        self.floor_share = float(floor_share)     # PatchKNNConfig.bank_spread_floor: F in median radii
        self.scale: torch.Tensor | None = None
        self._spread: BankSpread | None = None      # the fit's radii, for the leave-one-out units
        self._floor = 0.0
        self._norm = 1.0

    @property
    def active(self) -> bool:
        return self.scale is not None

    def fit(self, bank: torch.Tensor, owner: torch.Tensor, *, usable: bool = True) -> None:
        """Measure the units of a final bank (after masking and coreset): (M, D) unit features, (M,) frame ids.
        ``usable`` False (tiled frames) or a bank of one frame leaves the distances plain."""
        self.scale, self._spread = None, None
        if not self.enabled or not usable or bank.shape[0] == 0:
            return
        spread = bank_spread(bank, owner)
        radii = spread.nearest
        if not bool(torch.isfinite(radii).any()):
            logger.info("patch_knn bank_spread unused: the bank holds one good frame")
            return
        self._floor = self.floor_share * float(radii[torch.isfinite(radii)].median())
        unit = self._units(radii)
        self._norm = float(unit.median())
        self.scale = (unit / self._norm).contiguous()
        self._spread = spread
        logger.info("patch_knn bank_spread: median radius %.4f, floor %g x it, units from %.2f to %.2f",
                    self._floor / self.floor_share, self.floor_share, float(self.scale.min()), float(self.scale.max()))

    def for_owner(self, owner: int | None) -> torch.Tensor | None:
        """The units of a search; ``owner``: a leave-one-out search of that training frame, whose bank entries'
        radii are then measured without it (the rows of the frame itself are skipped by the search)."""
        if self.scale is None or owner is None or self._spread is None:
            return self.scale
        return self._units(self._spread.without(owner)) / self._norm

    def _units(self, radii: torch.Tensor) -> torch.Tensor:
        # an entry with no other frame left (a bank of two frames, one left out) takes the median radius
        median = self._floor / self.floor_share
        return torch.where(torch.isfinite(radii), radii, torch.full_like(radii, median)) + self._floor

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors a saved model keeps (none where unused)."""
        return {} if self.scale is None else {"bank_scale": self.scale.detach().float().contiguous()}

    def load_state(self, tensors: dict[str, torch.Tensor], bank_size: int, device: torch.device) -> None:
        """Restore ``state()``; a model saved without units (unused, or saved before) scores plain distances.

        Raises:
            ValueError: the saved units do not fit the bank, or are not positive and finite.
        """
        self._spread = None
        scale = tensors.get("bank_scale")
        if scale is None:
            self.scale = None
            return
        if scale.shape != (bank_size,) or not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            msg = (f"saved bank_scale has shape {tuple(scale.shape)} or values that are not positive and finite; "
                   f"expected ({bank_size},) positive units")
            raise ValueError(msg)
        self.scale = scale.to(device, torch.float32).contiguous()
