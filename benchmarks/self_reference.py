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

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Final

import torch

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks._features import open_store  # noqa: E402
from benchmarks._sweep import _features, collect, score  # noqa: E402
from models.evaluation import load_category, select_shots, subset_test  # noqa: E402
from models.files import atomic_write  # noqa: E402

logger = logging.getLogger("benchmarks.self_reference")

MODEL_NAME: Final = "vit_small_patch14_dinov2"
BLOCK: Final = 8
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--category", required=True)
    p.add_argument("--brightness", choices=("as_is", "standardise"), required=True,
                   help="as the product decides for the category (standardise where the scene fills the frame)")
    p.add_argument("--seed", type=int, default=0, help="seed of the 16 good shots")
    p.add_argument("--limit-test", type=int, default=0, help="stratified test subset (0 = the full test set)")
    p.add_argument("--cache-dir", type=Path, required=True, help="feature cache (outside the repository)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    store, resolved = open_store(args.cache_dir, None, model_name=MODEL_NAME)
    category = load_category(args.data / args.category)
    items = subset_test(category.test, args.limit_test or None, seed=0)
    train = select_shots(category.train_good, 16, seed=args.seed)
    start = time.perf_counter()
    key = ((BLOCK,), 1)
    data = collect(store, category, train, items, [key], k_max=1, dtype=torch.float32, brightness=args.brightness)
    bank = list(data.knn[key])
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
    table: dict[str, dict[str, float]] = {}
    for name, maps in rows.items():
        data.knn[key] = maps
        table[name] = {k: round(v, 4) for k, v in score(data, blocks=(BLOCK,), masking="off").items()
                       if k != "masking_active"}
        print(f"{args.category} seed {args.seed}  {name:<12} image AUROC {table[name]['image_auroc']:.3f}  "
              f"AUPRO {table[name]['aupro']:.3f}  pixel AUROC {table[name]['pixel_auroc']:.3f}", flush=True)
    if args.json is not None:
        out: dict[str, Any] = {"category": args.category, "seed": args.seed, "shots": 16, "brightness": args.brightness,
                               "test_images": len(items), "block": BLOCK, "shorter_side": 448,
                               "weights_sha256": resolved.info.sha256[:12], "rows": table,
                               "seconds": round(time.perf_counter() - start),
                               "command": "python -m benchmarks.self_reference " + " ".join(sys.argv[1:])}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, json.dumps(out, indent=2).encode())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
