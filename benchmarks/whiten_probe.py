"""Issue 11, twentieth look: the kNN compared in a centred or whitened feature space, before it was in the product.

Since then ``PatchKNNConfig.whitening`` (``models.detectors._whitening``) does the same in the detector, and the
teach step offers it as a candidate; this probe keeps the first measurement reproducible (it turns the product's
map off and applies its own).

DINOv2 patch features share a large common component, so the cosine between two patches is dominated by it;
the directions in which good patches vary most (the grinding texture of a tile, the print of a board) weigh as
much as the rare directions in which a defect departs. This probe fits, from the good shots' raw patch features
alone, an affine map applied before pooling and L2 normalisation, everywhere the detector embeds (bank, test
frames, leave-one-out, the second scale):

- ``centre``: x - mean (the common component removed);
- ``whiten``: (x - mean) V diag(1 / sqrt(e + s * mean(e))) V^T, a shrunk Mahalanobis whitening (shrink ``s``:
  large = centring, 0 = full whitening); ``--foreground``: the statistics of the foreground patches only where
  the frames are masked.

The detector is today's default otherwise (``PatchKNN`` as ``benchmarks.accuracy`` builds it, on the feature
cache); it is fitted twice, once to collect the shots' raw features (masking, rotations and all as usual) and once
with the map, so the thresholds and the second scale's leave-one-out statistics are the map's own. Every
argument after the probe's own goes to ``benchmarks.accuracy``:

    python -m benchmarks.whiten_probe --mode whiten --shrink 1.0 -- --data ../shared/data \\
        --categories mvtec_transistor --settings 16 --seeds 0,1,2 --only ours --cache-dir CACHE --json F
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

import benchmarks.accuracy as accuracy  # noqa: E402
import models.detectors._scales as scales  # noqa: E402
import models.detectors.patch_knn_core as core  # noqa: E402
from benchmarks._features import CachedBackbone  # noqa: E402
from models.detectors.patch_knn import PatchKNN  # noqa: E402


class _Map:
    """The affine map in force (None: the identity, as in the product)."""

    shift: torch.Tensor | None = None
    matrix: torch.Tensor | None = None


def _pooled_unit(raw: torch.Tensor, pool: int, whitening: object = None) -> torch.Tensor:   # the product's: off
    feats = raw.float()
    if _Map.shift is not None:
        feats = feats - _Map.shift.to(feats.device)
        if _Map.matrix is not None:
            feats = feats @ _Map.matrix.to(feats.device)
    if pool > 1:
        h, w = feats.shape[1], feats.shape[2]
        grid = F.avg_pool2d(feats.permute(0, 3, 1, 2), pool, stride=1, padding=pool // 2, count_include_pad=False)
        feats = grid[..., :h, :w].permute(0, 2, 3, 1)
    return F.normalize(feats, dim=-1)


class _Recording(CachedBackbone):
    """The cached backbone, keeping every (B, h, w, D) output while ``seen`` is a list."""

    seen: list[torch.Tensor] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = super().forward(images)
        if self.seen is not None:
            self.seen.append(out.float().cpu())
        return out


def _probe_class(mode: str, shrink: float, *, foreground: bool) -> type[PatchKNN]:
    class Probe(PatchKNN):
        def fit(self, images_rgb: Any, *, progress: Callable[[int, int], None] | None = None) -> None:
            frames = list(images_rgb)
            backbone = self.backbone
            if not isinstance(backbone, _Recording):
                msg = "the probe needs the recording backbone"
                raise TypeError(msg)
            _Map.shift, _Map.matrix = None, None
            backbone.seen = []
            super().fit(frames, progress=progress)
            rows = []
            for raw in backbone.seen:
                if foreground and self.masking_active:     # the statistics of what a masked frame scores
                    raw = raw[self._masks(raw.to(self.device)).cpu()]
                rows.append(raw.reshape(-1, raw.shape[-1]))
            x = torch.cat(rows).double()
            backbone.seen = None
            mean = x.mean(dim=0)
            _Map.shift = mean.float()
            if mode == "whiten":
                cov = torch.cov((x - mean).T)
                evals, evecs = torch.linalg.eigh(cov)
                evals = evals.clamp(min=0.0)
                scale = 1.0 / torch.sqrt(evals + shrink * evals.mean())
                _Map.matrix = (evecs * scale) @ evecs.T
                _Map.matrix = _Map.matrix.float()
            super().fit(frames, progress=progress)

    return Probe


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("centre", "whiten"), required=True)
    p.add_argument("--shrink", type=float, default=1.0, help="whiten: eigenvalue + shrink x their mean")
    p.add_argument("--foreground", action="store_true", help="statistics of the foreground only where masked")
    args = p.parse_args(argv[:split])
    probe = _probe_class(args.mode, args.shrink, foreground=args.foreground)
    core.pooled_unit = _pooled_unit          # type: ignore[attr-defined,assignment]
    scales.pooled_unit = _pooled_unit        # type: ignore[assignment]

    def detector(name: str, a: argparse.Namespace, blocks: tuple[int, ...], config: Any, store: Any,
                 peer_model: Any, state_dict: Any) -> Any:
        if not name.startswith("ours") or a.no_cache:
            msg = "the probe runs 'ours' on the feature cache only"
            raise SystemExit(msg)
        plain = dataclasses.replace(config, whitening=False)    # the probe's own map, not the product's
        return probe(backbone=_Recording(store, blocks=blocks, neighbourhood=a.neighbourhood), config=plain)

    accuracy._detector = detector            # type: ignore[assignment]
    return accuracy.main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
