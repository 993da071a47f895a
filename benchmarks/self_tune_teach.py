"""Issue 11 item 3: the product's self-tuning rule (``models.self_tune``) on the dev categories.

For every category and seed of the 16-shot choice it runs ``models.self_tune.self_tune`` exactly as
``inspector train`` does (the real ``PatchKNN``, fold-wise banks, the product's synthetic anomalies),
on the backbone features of the shared ``FeatureStore`` (so the per-part times it prints are cache
reads, not the station's: the budget is not applied here). Candidates: pooling r = 1 (default) and
r = 3; tiling is left out because the levers table has no tiled row to read the real AUROC from.

The real test AUROC of each r is read from the levers table (``benchmarks/levers.py``: same shots,
same scoring, 60-image stratified test subsets). The JSON keeps every good and synthetic score with
each synthetic image's kind and size, so a rule on a subset of them can be re-read without a rerun.

Usage (from the repository root):
    python -m benchmarks.self_tune_teach --data ../shared/data --categories visa_fryum --seeds 1,4,0 \\
        --cache-dir CACHE --levers benchmarks/results/issue11_levers_subsets.json \\
        benchmarks/results/issue11_levers_subsets_seeds345.json --json benchmarks/results/issue11_self_tune_fryum.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks._features import CachedBackbone, FeatureStore  # noqa: E402
from benchmarks._timing import cpu_model, versions  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.evaluation import load_category, load_image_rgb, select_shots  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.self_tune import ALPHA_RANGE, PER_IMAGE, SIZE_RANGE, candidates_for, self_tune, synthetic_set  # noqa: E402

logger = logging.getLogger("benchmarks.self_tune_teach")

MODEL_NAME: Final = "vit_small_patch14_dinov2"
LEVER_ROWS: Final = {1: "default (r=1)", 3: "pool r=3"}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--categories", default="mtd_magnetic_tile,mvtec_transistor,visa_fryum")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seeds", default="0,1,2", help="seeds of the shot choice")
    p.add_argument("--cache-dir", type=Path, required=True, help="feature cache (outside the repo)")
    p.add_argument("--levers", type=Path, nargs="+", required=True,
                   help="levers table JSON(s): the real test AUROC per r (the first that has the seed)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def _real(tables: list[dict[str, Any]], name: str, seed: int, r: int) -> float | None:
    for levers in tables:
        try:
            return float(levers["table"][LEVER_ROWS[r]]["categories"][name]["per_seed"][str(seed)]["image_auroc"])
        except KeyError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from models.backbone import create_backbone
    from models.weights import resolve_weights

    names = [n.strip() for n in args.categories.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    levers = [json.loads(path.read_text()) for path in args.levers]
    resolved = resolve_weights(MODEL_NAME, None)
    full = create_backbone(MODEL_NAME, state_dict=resolved.state_dict, blocks=tuple(range(1, 13)), device="cpu")
    store = FeatureStore(args.cache_dir / "features", weights_sha256=resolved.info.sha256, full=full)
    base = PatchKNNConfig()
    rows: list[dict[str, Any]] = []
    for name in names:
        category = load_category(args.data / name)
        for seed in seeds:
            t0, misses = time.perf_counter(), store.misses
            shots = select_shots(category.train_good, args.shots, seed=seed)
            images = [load_image_rgb(p) for p in shots]
            cands = candidates_for(base, (10**6, 10**6))[:2]        # pooling r = 1, 3 (no tiling row to compare)
            result = self_tune(images, lambda cfg, bb: PatchKNN(backbone=bb, config=cfg), base, cands,
                               CachedBackbone(store, blocks=(8,)))
            synth = synthetic_set(images)
            pick = int(result.chosen.options.get("patch_pooling", base.patch_pooling))
            real = {r: _real(levers, name, seed, r) for r in (1, 3)}
            row = {"category": name, "seed": seed, "pick_pool": pick, "reason": result.reason,
                   "self_tune": result.to_dict(),
                   "synthetic_kinds": [s.kind for s in synth], "synthetic_areas": [s.area for s in synth],
                   "real_test_auroc": {str(r): v for r, v in real.items()}, "real_of_pick": real[pick],
                   "oracle_pool": None if None in real.values() else max((1, 3), key=lambda r: (real[r] or 0, -r)),
                   "backbone_runs": store.misses - misses, "seconds": time.perf_counter() - t0}
            rows.append(row)
            checks = {c.candidate.name: c.synthetic_auroc for c in result.checks}
            logger.info("%s seed %d: %s -> r=%d, real %s (r=1 %s, r=3 %s); %d backbone runs, %.0f s", name, seed,
                        checks, pick, real[pick], real[1], real[3], row["backbone_runs"], row["seconds"])
            if args.json:          # written after every row: a long run keeps what it measured
                _write(args, rows, names, seeds, resolved)
    _print(rows, names)
    return 0


def _summary(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, key in (("default r=1", "1"), ("self-tuned", "pick"), ("r=3 everywhere", "3")):
        per = {}
        for name in names:
            vals = [r["real_of_pick"] if key == "pick" else r["real_test_auroc"][key]
                    for r in rows if r["category"] == name]
            per[name] = None if not vals or None in vals else float(np.mean(vals))
        done = [v for v in per.values() if v is not None]
        out[label] = {"per_category": per, "mean": float(np.mean(done)) if len(done) == len(names) else None}
    return out


def _print(rows: list[dict[str, Any]], names: list[str]) -> None:
    print("| category | seed | synth AUROC r=1 | synth AUROC r=3 | pick | real r=1 / r=3 | real of pick |")
    print("|---" * 7 + "|")
    for row in rows:
        c = row["self_tune"]["candidates"]
        real = row["real_test_auroc"]
        print(f"| {row['category']} | {row['seed']} | {c[0]['synthetic_auroc']:.3f} | {c[1]['synthetic_auroc']:.3f} | "
              f"r={row['pick_pool']} | {real['1']:.3f} / {real['3']:.3f} | {row['real_of_pick']:.3f} |")
    for label, s in _summary(rows, names).items():
        print(f"{label}: mean {s['mean']}, per category {s['per_category']}")


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], names: list[str], seeds: list[int],
           resolved: Any) -> None:
    env = {"device": "cpu", "threads": torch.get_num_threads(), "cpu": cpu_model(), "versions": versions(),
           "weights": {"source": resolved.info.source, "sha256": resolved.info.sha256},
           "shots": args.shots, "seeds": seeds, "block": 8, "shorter_side": 448,
           "scoring": "PatchKNN defaults (k=1 cosine, top 1 % mean, masking auto); self_tune folds: 4",
           "synthetic": {"per_image": PER_IMAGE, "size_range": list(SIZE_RANGE), "alpha_range": list(ALPHA_RANGE)},
           "real_auroc_from": [str(p) for p in args.levers],
           "command": "python -m benchmarks.self_tune_teach " + " ".join(sys.argv[1:])}
    atomic_write(args.json, json.dumps({"env": env, "rows": rows, "summary": _summary(rows, names)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
