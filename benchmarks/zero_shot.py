"""Issue 11 item 4: zero-shot review before (mutual scoring at 224 px, one scale, median-of-images rule)
and after (MuSc at the few-shot resolution: r = 1, 3, 5, lowest 30 %, RsCIN re-scoring; patch-score rule).

For each category, a seeded stratified test subset (``models.evaluation.subset_test``, half good) is
scored as one batch by ``models.detectors.zero_shot.evaluate_zero_shot`` with the backbone served
from the shared feature cache (``benchmarks._features``: only the ViT forward is memoised; the
mutual scoring, re-scoring, maps and metrics run for real). With ``--majority``, a second batch per
category holds all the subset's defective images and only ``--majority-good`` good ones, the case
where "most images are good" fails.

Per run: image AUROC (re-scored, and of the top-patch score before re-scoring), AUPRO, and the verdict
rates (defects flagged = REVIEW or FAIL, good flagged, FAIL rates) under both rules:

- ``former rule``: REVIEW at median + 3 robust sigmas of the batch's image scores, FAIL at + 6
  (what ``inspector review --zero-shot`` did before; it assumes most images are good);
- ``patch rule``: ``patch_thresholds`` (what it does now).

Usage (from the repository root):
    python -m benchmarks.zero_shot --data ../shared/data --categories mvtec_transistor --limit-test 60 \\
        --test-seed 1 --cache-dir /tmp/featcache --configs before,after --majority \\
        --json benchmarks/results/issue11_zero_shot.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
from models.backbone import create_backbone  # noqa: E402
from models.calibration import operating_point  # noqa: E402
from models.detectors.zero_shot import MAD_TO_SIGMA, ZeroShotConfig, evaluate_zero_shot  # noqa: E402
from models.evaluation import GOOD, load_category, subset_test  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("benchmarks.zero_shot")

DEFAULT_DATA: Final = REPO.parent / "shared" / "data"
MODEL_NAME: Final = "vit_small_patch14_dinov2"
BLOCKS: Final = (8,)                   # the few-shot default (DetectorSettings.blocks), what the review uses
# The zero-shot defaults before this change (ZeroShotConfig at the previous commit).
BEFORE: Final[dict[str, Any]] = {"shorter_side": 224, "scales": (1,), "neighbour_fraction": 0.1, "rescore_k": ()}
CONFIGS: Final[dict[str, dict[str, Any]]] = {
    "before": BEFORE,
    "after": {},                        # today's ZeroShotConfig() defaults
    "after, no re-scoring": {"rescore_k": ()},
    "after, r=1 only": {"scales": (1,)},
}


def former_thresholds(scores: np.ndarray, *, k_review: float = 3.0, k_fail: float = 6.0) -> tuple[float, float]:
    """The former zero-shot rule: median + k robust sigmas (MAD) of the batch's image scores."""
    median = float(np.median(scores))
    sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(scores - median))), 1e-6 * max(abs(median), 1.0))
    return median + k_review * sigma, median + k_fail * sigma


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of MVTec-layout categories")
    p.add_argument("--categories", default="mvtec_transistor,visa_fryum,mtd_magnetic_tile")
    p.add_argument("--limit-test", type=int, default=None, help="stratified test subset size (default: all)")
    p.add_argument("--test-seed", type=int, default=1, help="seed of the test subset")
    p.add_argument("--configs", default="before,after", help=f"comma list of: {', '.join(CONFIGS)}")
    p.add_argument("--max-references", type=int, default=None, help="override ZeroShotConfig.max_references")
    p.add_argument("--majority", action="store_true", help="also score a batch where defects are the majority")
    p.add_argument("--majority-good", type=int, default=5, help="good images in the majority batch")
    p.add_argument("--cache-dir", type=Path, required=True, help="feature cache (outside the repo)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def _rates(report: Any, items: list[Any]) -> dict[str, Any]:
    scores = np.asarray(report.scores, dtype=np.float64)
    labels = np.array([t.label for t in items])
    types = [t.defect_type for t in items]
    review, fail = former_thresholds(scores)
    former = operating_point(scores, labels, types, review=review, fail=fail)
    point = report.operating_point
    keys = ("defect_flag_rate", "good_flag_rate", "defect_fail_rate", "good_fail_rate")
    return {
        "image_auroc": report.image_auroc, "top_score_auroc": report.thresholds["top_score_auroc"],
        "aupro": report.aupro, "pixel_auroc": report.pixel_auroc, "n_test": report.n_test,
        "n_defective": int(labels.sum()), "ms_per_image": report.ms_per_image,
        "patch_rule": {k: point[k] for k in keys} | {"review": report.thresholds["review"],
                                                     "fail": report.thresholds["fail"]},
        "former_rule": {k: former[k] for k in keys} | {"review": review, "fail": fail},
        "per_defect_auroc": report.per_defect_auroc, "config": report.config,
    }


def _pct(x: float) -> str:
    return "  -  " if x is None or math.isnan(x) else f"{100 * x:.0f} %"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resolved = resolve_weights(MODEL_NAME, None)
    full = create_backbone(MODEL_NAME, state_dict=resolved.state_dict, blocks=tuple(range(1, 13)), device="cpu")
    store = FeatureStore(args.cache_dir / "features", weights_sha256=resolved.info.sha256, full=full)
    backbone = CachedBackbone(store, blocks=BLOCKS)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        msg = f"unknown --configs {unknown}; available: {', '.join(CONFIGS)}"
        raise SystemExit(msg)
    results: list[dict[str, Any]] = []
    print("| category | batch | config | img AUROC | top-patch AUROC | AUPRO | patch rule: defects flagged / good "
          "flagged / defects FAIL / good FAIL | former rule: the same | s |")
    for cat_name in [c.strip() for c in args.categories.split(",") if c.strip()]:
        category = load_category(args.data / cat_name)
        items = subset_test(category.test, args.limit_test, seed=args.test_seed)
        batches = {f"subset {len(items)}": items}
        if args.majority:
            goods = [t for t in items if t.defect_type == GOOD][: args.majority_good]
            bad = [t for t in items if t.defect_type != GOOD]
            batches[f"defect majority {len(bad)}/{len(bad) + len(goods)}"] = goods + bad
        for batch, batch_items in batches.items():
            for name in names:
                overrides = dict(CONFIGS[name])
                if args.max_references is not None and name != "before":
                    overrides["max_references"] = args.max_references
                config = ZeroShotConfig(**overrides)
                start = time.perf_counter()
                with torch.inference_mode():
                    report = evaluate_zero_shot(backbone, category, config=config, test_items=batch_items)
                seconds = time.perf_counter() - start
                row = {"category": cat_name, "batch": batch, "config_name": name, "seconds": seconds,
                       **_rates(report, batch_items)}
                results.append(row)
                pr, fr = row["patch_rule"], row["former_rule"]
                print(f"| {cat_name} | {batch} | {name} | {row['image_auroc']:.3f} | {row['top_score_auroc']:.3f} | "
                      f"{row['aupro']:.3f} | {' / '.join(_pct(pr[k]) for k in list(pr)[:4])} | "
                      f"{' / '.join(_pct(fr[k]) for k in list(fr)[:4])} | {seconds:.0f} |", flush=True)
                if args.json is not None:
                    _write(args, results, store)
    return 0


def _write(args: argparse.Namespace, results: list[dict[str, Any]], store: FeatureStore) -> None:
    payload = {
        "benchmark": "zero_shot", "command": "python -m benchmarks.zero_shot " + " ".join(sys.argv[1:]),
        "conditions": {"device": "cpu", "torch_threads": torch.get_num_threads(), "cpu": cpu_model(),
                       "backbone": MODEL_NAME, "blocks": list(BLOCKS), "limit_test": args.limit_test,
                       "test_seed": args.test_seed, "feature_cache": "benchmarks._features (ViT forward memoised)",
                       "cache_hits": store.hits, "cache_misses": store.misses, "versions": versions()},
        "results": results,
    }
    atomic_write(args.json, (json.dumps(payload, indent=1, default=float) + "\n").encode())


if __name__ == "__main__":
    raise SystemExit(main())
