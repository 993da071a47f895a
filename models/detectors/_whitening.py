"""The good patches' own feature space: a shrunk whitening fitted at teach time (``PatchKNNConfig.whitening``).

DINOv2 patch features share a large common component, and the directions in which a product's good patches
vary most (a tile's grinding marks, a board's print, the pose of a loose part) weigh as much in a cosine as
the rare directions in which a defect departs from them. ``FeatureWhitening`` learns, from the raw patch
features of the good frames alone, the affine map

    x -> (x - mean) V diag(1 / sqrt(e + shrink * mean(e))) V^T

(``e``, ``V``: eigenvalues and eigenvectors of the patches' covariance), a Mahalanobis whitening shrunk towards
plain centring (``shrink`` large: centring; 0: full whitening, which lifts the directions good patches hardly
vary in, and their noise, as high as any other; ``PatchKNNConfig.whitening_shrink``, 3, says where it comes
from). ``pooled_unit`` applies it before the pooling and the L2 normalisation, so the bank, the tested frames,
the leave-one-out scores and both scales are compared in one space. Being linear, it commutes with the average
pooling. Unfitted (before a fit, models saved before it, tiled frames,
fewer than ``MIN_ROWS_PER_DIM`` good patches per feature dimension) it is the identity.

Example:
    >>> whitening = FeatureWhitening()
    >>> whitening.fit([good_rows], shrink=3.0)      # (N, D) raw patch features of the good frames
    >>> unit = pooled_unit(raw, 1, whitening)       # (B, h, w, D) -> the same, mapped and L2-normalised
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["MIN_ROWS_PER_DIM", "FeatureWhitening"]

logger = logging.getLogger(__name__)

_CHUNK = 65536      # rows accumulated at a time (float64 temporaries of the statistics stay small)
# a covariance is only estimated well from several times as many rows as it has dimensions (the usual rule of
# ten); from fewer the map would blow up the directions the few good patches happened not to span, so a fit on
# fewer good patches (a small ROI taught from a few frames) stays in the raw space
MIN_ROWS_PER_DIM = 10


class FeatureWhitening(nn.Module):
    """The affine map of the good patches' feature space; the identity until fitted or loaded.

    ``shift`` (D,) and ``matrix`` (D, D) are buffers (None while unfitted), so a traced core carries them as
    constants and ``.to(device)`` moves them.
    """

    shift: torch.Tensor | None
    matrix: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", None)
        self.register_buffer("matrix", None)

    @property
    def active(self) -> bool:
        """Whether the map is fitted (or loaded)."""
        return self.shift is not None and self.matrix is not None

    def clear(self) -> None:
        """Back to the identity (a new fit starts here; tiled frames stay here)."""
        self.shift, self.matrix = None, None

    @torch.inference_mode()
    def fit(self, rows: list[torch.Tensor], *, shrink: float) -> bool:
        """Fit the map on good patches; fewer than ``MIN_ROWS_PER_DIM`` per dimension leave it the identity.

        Args:
            rows: (N_i, D) raw patch features, any float dtype and device (the map is kept on the first's).
            shrink: added to every eigenvalue, in units of their mean (> 0).

        Returns:
            Whether the map was fitted.

        Raises:
            ValueError: no rows, or ``shrink`` not > 0.
        """
        if not shrink > 0:
            msg = f"whitening shrink must be > 0, got {shrink!r}"
            raise ValueError(msg)
        if not rows:
            msg = "whitening needs good patches, got none"
            raise ValueError(msg)
        self.clear()
        n = sum(int(r.shape[0]) for r in rows)
        device, dim = rows[0].device, int(rows[0].shape[-1])
        if n < MIN_ROWS_PER_DIM * dim:
            logger.info("patch_knn whitening not used: %d good patches of %d numbers (needs %d)",
                        n, dim, MIN_ROWS_PER_DIM * dim)
            return False
        total = torch.zeros(dim, dtype=torch.float64, device=device)
        outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        for part in rows:
            for start in range(0, part.shape[0], _CHUNK):
                x = part[start : start + _CHUNK].to(device, torch.float64)
                total += x.sum(dim=0)
                outer += x.T @ x
        mean = total / n
        cov = ((outer - n * torch.outer(mean, mean)) / (n - 1)).cpu()
        evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
        evals = evals.clamp(min=0.0)
        scale = torch.rsqrt(evals + shrink * evals.mean().clamp(min=1e-12))
        self.shift = mean.float()
        self.matrix = ((evecs * scale) @ evecs.T).float().to(device)
        logger.info("patch_knn whitening fitted on %d good patches (shrink %g)", n, shrink)
        return True

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., D) float32 raw features -> the same, mapped (unchanged while unfitted)."""
        if self.shift is None or self.matrix is None:
            return feats
        return (feats - self.shift) @ self.matrix

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save; empty while unfitted (models saved before keep their layout)."""
        if self.shift is None or self.matrix is None:
            return {}
        return {"whitening_shift": self.shift.detach().contiguous(),
                "whitening_matrix": self.matrix.detach().contiguous()}

    def load_state(self, tensors: dict[str, torch.Tensor], feature_dim: int, device: torch.device) -> None:
        """Restore what ``state`` gave; none saved: the identity (a model saved before whitening).

        Raises:
            ValueError: one of the two tensors without the other, or shapes that do not fit ``feature_dim``.
        """
        shift, matrix = tensors.get("whitening_shift"), tensors.get("whitening_matrix")
        if shift is None and matrix is None:
            self.clear()
            return
        dim = feature_dim
        if shift is None or matrix is None or shift.shape != (dim,) or matrix.shape != (dim, dim):
            shapes = (None if shift is None else tuple(shift.shape), None if matrix is None else tuple(matrix.shape))
            msg = (f"saved whitening has shift/matrix shapes {shapes[0]} / {shapes[1]}; this backbone gives "
                   f"{feature_dim}-long features ({feature_dim},) / ({feature_dim}, {feature_dim})")
            raise ValueError(msg)
        self.shift = shift.to(device, torch.float32)
        self.matrix = matrix.to(device, torch.float32)
