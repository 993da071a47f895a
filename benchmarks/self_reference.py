"""Issue 11: two ways of judging a patch by its own frame as well as by the good bank (measured, not in the product).

The magnetic tile is the dev category the patch kNN ranks worst: 16 good tiles do not show every tile's grain and
brightness, so a good tile unlike the shots scores high everywhere. Two probes of that reading, each a paired row
beside the bank's own kNN score (the same search, bank and test images; ``benchmarks._sweep``):

- ``self rR`` / ``min rR`` / ``mean rR``: each patch's cosine distance to the nearest patch of its OWN frame outside
  a (2R + 1)-patch square around it (a texture repeats itself; a defect, if small, does not), alone, as the smaller
  of the two distances (the frame's own patches join the bank), and their mean;
- ``minus qQ`` / ``over qQ``: the bank distance map minus (divided by) its own Q-quantile: each frame judged against
  its own level.

Conditions: block 8, pooling r = 1, k = 1, top 1 %, sigma 4, masking off, the product's brightness rule given per
category (``--brightness``: "standardise" where the scene fills the frame, as ``PatchKNN`` decides), shorter side
448; no second scale (the product's r = 5 image score), so "bank" is the r = 1 part of today's default, not its
full score. Image AUROC, AUPRO and pixel AUROC per row.

Usage (from the repository root; features from the shared fp16 cache):
    python -m benchmarks.self_reference --data ../shared/data --category mtd_magnetic_tile --brightness standardise \\
        --seed 0 --cache-dir CACHE --json OUT.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Final

import torch

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks._probe import BLOCK, KEY, open_probe, probe_parser, score_row, write_probe_json  # noqa: E402
from benchmarks._sweep import _features, collect  # noqa: E402
from models.evaluation import select_shots  # noqa: E402

RADII: Final = (1, 2, 4)             # patches left out around the patch itself (Chebyshev radius)
QUANTILES: Final = (0.25, 0.5)


def self_distances(unit: torch.Tensor, radius: int) -> torch.Tensor:
    """(h, w, D) unit features -> (h, w, 1) cosine distance of each patch to its frame's nearest patch farther
    than ``radius`` patches (in rows or columns)."""
    h, w, d = unit.shape
    flat = unit.reshape(h * w, d)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    near = torch.maximum((ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()) <= radius
    sims = (flat @ flat.T).masked_fill(near, -2.0)
    return (1.0 - sims.amax(dim=1)).clamp(0.0, 2.0).reshape(h, w, 1)


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the 16 good shots")
    args = p.parse_args(argv)
    store, resolved, category, items = open_probe(args, threads=1)
    train = select_shots(category.train_good, 16, seed=args.seed)
    start = time.perf_counter()
    data = collect(store, category, train, items, [KEY], k_max=1, dtype=torch.float32, brightness=args.brightness)
    bank = list(data.knn[KEY])
    own: dict[int, list[torch.Tensor]] = {r: [] for r in RADII}
    for item in items:
        raw = _features(store, item.path, 448, args.brightness)[:, :, BLOCK - 1]
        unit = raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        for r in RADII:
            own[r].append(self_distances(unit, r))
    rows: dict[str, list[torch.Tensor]] = {"bank": bank}
    for r in RADII:
        rows[f"self r{r}"] = own[r]
        rows[f"min r{r}"] = [torch.minimum(b, s) for b, s in zip(bank, own[r], strict=True)]
        rows[f"mean r{r}"] = [(b + s) / 2 for b, s in zip(bank, own[r], strict=True)]
    for q in QUANTILES:
        rows[f"minus q{q}"] = [b - torch.quantile(b.flatten(), q) for b in bank]
        rows[f"over q{q}"] = [b / torch.quantile(b.flatten(), q).clamp_min(1e-6) for b in bank]
    table = {name: score_row(data, maps, f"{args.category} seed {args.seed}  {name:<12}")
             for name, maps in rows.items()}
    write_probe_json(args, "benchmarks.self_reference", resolved, len(items),
                     {"seed": args.seed, "rows": table, "seconds": round(time.perf_counter() - start)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
