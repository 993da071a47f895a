"""Issue 11: a patch's distance to the good bank judged against how far apart good patches of that kind lie.

The patch kNN scores a patch by its cosine distance d to the nearest patch m of the good bank. Where good parts
vary (a transistor's leads and case edges, a tile's grain), normal patches of that kind lie far apart even among
the good images, and d is large for good parts too; where they do not (a plain background), a small d already
means something. Each bank patch's own radius r(m) is its distance to the nearest patch of the OTHER good images
(the leave-one-out spread of the bank around it; PatchCore's neighbourhood, LOF's reach distance), and the patch is
scored by (paired rows beside today's ``bank``, same search, bank and images; ``benchmarks._sweep``):

- ``ratio floor F``: d / (r(m) + F), F a share of the bank's median or 90th-percentile radius (a floor, so that a
  dense region's tiny radius does not blow the ratio up);
- ``minus A``: d - A r(m);
- ``scaled nearest``: the least d(q, m') / (r(m') + F) over every bank patch m' (the nearest in units of each good
  patch's own spread: one search, no index to carry; the product's ``bank_spread`` at F = 2 x the median radius),
  F = 2, 4, 8 x the median radius (a larger floor: a softer unit).

Rows marked ``fused`` are the product's image score: the row's r = 1 map fused with the coarse r = 5 part (weight
0.2, each part over its good shots' mean leave-one-out score); their leave-one-out maps use the radii of the bank
without that shot, recomputed.

Conditions: block 8, pooling r = 1, k = 1, top 1 %, sigma 4, masking off, the product's brightness rule given per
category (``--brightness``), shorter side 448, 16 good shots; the rows without ``fused`` have no second scale (the
product's r = 5 image score): there "bank" is the r = 1 part of today's default, not its full score. Image AUROC,
AUPRO and pixel AUROC per row. Measured, not in the product.

Usage (from the repository root; features from the shared fp16 cache):
    python -m benchmarks.bank_density --data ../shared/data --category mvtec_transistor --brightness standardise \\
        --seeds 0,1,2 --cache-dir CACHE --json OUT.json
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

from benchmarks._features import FeatureStore  # noqa: E402
from benchmarks._probe import BLOCK, KEY, open_probe, probe_parser, score_row, write_probe_json  # noqa: E402
from benchmarks._sweep import _features, collect  # noqa: E402
from models.detectors._knn import bank_spread, knn_distances  # noqa: E402
from models.evaluation import Category, TestItem, select_shots  # noqa: E402

COARSE: Final = ((BLOCK,), 5)           # the product's second scale: pooling r = 5, weight 0.2 (issue 11's eighth look)
FUSED: Final = {"pools": (1, 5), "fusion": "sum_z_proportional", "z_weights": (1.0, 0.2)}
FLOORS: Final = (("2.0 med", 0.5, 2.0), ("1.0 q90", 0.9, 1.0), ("2.0 q90", 0.9, 2.0))   # (name, quantile, share)
SHARES: Final = (0.25, 0.5)
SCALED_FLOORS: Final = (2.0, 4.0, 8.0)     # the scaled search's floor F, in multiples of the bank's median radius


def nearest_with_radius(queries: torch.Tensor, bank: torch.Tensor, radii: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, D) unit queries -> (Q,) cosine distance to the nearest bank patch and (Q,) that patch's radius."""
    best, index = (queries @ bank.T).max(dim=1)
    return (1.0 - best).clamp(0.0, 2.0), radii[index]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def run_seed(store: FeatureStore, category: Category, items: list[TestItem], seed: int, brightness: str
             ) -> dict[str, dict[str, float]]:
    """Every row's image AUROC, AUPRO and pixel AUROC for one draw of 16 good shots."""
    train = select_shots(category.train_good, 16, seed=seed)
    data = collect(store, category, train, items, [KEY, COARSE], k_max=1, dtype=torch.float32, brightness=brightness,
                   loo=True)
    shots = [_unit(_features(store, p, 448, brightness)[:, :, BLOCK - 1]) for p in train]
    bank = torch.cat([f.reshape(-1, f.shape[-1]) for f in shots])
    owner = torch.cat([torch.full((f.shape[0] * f.shape[1],), j) for j, f in enumerate(shots)])
    spread_of = bank_spread(bank, owner)
    radii = spread_of.nearest
    spread = [round(float(v), 4) for v in torch.quantile(radii, torch.tensor([0.1, 0.5, 0.9]))]
    print(f"{category.name} seed {seed}  bank of {len(bank)} patches, radius 10th / 50th / 90th percentile {spread}",
          flush=True)
    median = float(torch.quantile(radii, 0.5))
    floor = 2.0 * median
    dist, near = [], []
    scaled: dict[float, list[torch.Tensor]] = {share: [] for share in SCALED_FLOORS}
    for item in items:
        q = _unit(_features(store, item.path, 448, brightness)[:, :, BLOCK - 1])
        h, w, d = q.shape
        found = nearest_with_radius(q.reshape(h * w, d), bank, radii)
        dist.append(found[0].reshape(h, w, 1))
        near.append(found[1].reshape(h, w, 1))
        for share, maps in scaled.items():
            maps.append(knn_distances(q.reshape(h * w, d), bank, bank_scale=radii + share * median).reshape(h, w, 1))
    rows: dict[str, list[torch.Tensor]] = {"bank": list(data.knn[KEY])}
    for name, quantile, share in FLOORS:
        level = share * float(torch.quantile(radii, quantile))
        rows[f"ratio floor {name}"] = [a / (r + level) for a, r in zip(dist, near, strict=True)]
    for share in SHARES:
        rows[f"minus {share}"] = [a - share * r for a, r in zip(dist, near, strict=True)]
    for share, maps in scaled.items():
        rows[f"scaled nearest {share} med"] = maps
    out = {name: score_row(data, maps, f"{category.name} seed {seed}  {name:<18}") for name, maps in rows.items()}
    # the product's image score: the r = 1 part fused with the coarse r = 5 part, spreads in proportion to the
    # good shots' leave-one-out means; the spread rows replace the r = 1 part (test and leave-one-out maps)
    loo_dist, loo_near, loo_floor = [], [], []
    loo_scaled: dict[float, list[torch.Tensor]] = {share: [] for share in SCALED_FLOORS}
    for j, f in enumerate(shots):
        keep = owner != j
        radii_j = spread_of.without(j)[keep]
        h, w, d = f.shape
        found = nearest_with_radius(f.reshape(h * w, d), bank[keep], radii_j)
        loo_dist.append(found[0].reshape(h, w, 1))
        loo_near.append(found[1].reshape(h, w, 1))
        median_j = float(torch.quantile(radii_j, 0.5))
        loo_floor.append(2.0 * median_j)
        for share, maps in loo_scaled.items():
            maps.append(knn_distances(f.reshape(h * w, d), bank[keep], bank_scale=radii_j + share * median_j)
                        .reshape(h, w, 1))
    plain_loo = list(data.loo_knn[KEY])
    fused_rows = {
        "bank, fused": (rows["bank"], plain_loo),
        "ratio floor 2.0 med, fused": ([a / (r + floor) for a, r in zip(dist, near, strict=True)],
                                       [a / (r + fl) for a, r, fl in zip(loo_dist, loo_near, loo_floor, strict=True)]),
        "minus 0.25, fused": ([a - 0.25 * r for a, r in zip(dist, near, strict=True)],
                              [a - 0.25 * r for a, r in zip(loo_dist, loo_near, strict=True)]),
        **{f"scaled nearest {share} med, fused": (scaled[share], loo_scaled[share]) for share in SCALED_FLOORS},
    }
    for name, (maps, loo_maps) in fused_rows.items():
        data.loo_knn[KEY] = loo_maps
        out[name] = score_row(data, maps, f"{category.name} seed {seed}  {name:<18}", fused=FUSED)
    data.knn[KEY], data.loo_knn[KEY] = rows["bank"], plain_loo
    return out


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0", help="seeds of the 16 good shots, comma-separated")
    args = p.parse_args(argv)
    store, resolved, category, items = open_probe(args, threads=2)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {str(seed): run_seed(store, category, items, seed, args.brightness) for seed in seeds}
    write_probe_json(args, "benchmarks.bank_density", resolved, len(items),
                     {"seeds": seeds, "rows": per_seed, "seconds": round(time.perf_counter() - start)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
