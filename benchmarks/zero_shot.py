"""Issue 11 item 4: zero-shot review before (mutual scoring at 224 px, one scale) and after (MuSc at the
few-shot resolution: r = 1, 3, 5, lowest 30 %, RsCIN re-scoring); the verdict rule is the same for both.

For each category, a seeded stratified test subset (``models.evaluation.subset_test``, half good) is
scored as one batch by ``models.detectors.zero_shot.evaluate_zero_shot`` with the backbone served
from the shared feature cache (``benchmarks._features``: only the ViT forward is memoised; the
mutual scoring, re-scoring, maps and metrics run for real). With ``--majority``, a second batch per
category holds all the subset's defective images and only ``--majority-good`` good ones, the case
where "most images are good" fails; ``--minority`` a batch of its good images and ``--minority-bad``
defective ones (a lot as a line makes it), ``--good-only`` its good images alone (``--no-subset``: not the
subset itself). Each row keeps every image's re-scored score, label and type (``images``), so other
verdict rules can be judged on the same scores without scoring again.

Per run: image AUROC (re-scored, and of the top-patch score before re-scoring), AUPRO, and the verdict
rates (defects flagged = REVIEW or FAIL, good flagged, FAIL rates) of what ``inspector review
--zero-shot`` decides: ``robust_thresholds`` on the batch's re-scored image scores (REVIEW at median +
3 robust sigmas, FAIL at + 6).

With ``--timing N``, it instead times zero-shot scoring as the review runs it (the real backbone, no
feature cache): N images of the first category's subset, features and mutual scoring, "before" and
"after" interleaved ``--repeats`` times (the order swapped each repeat), and prints after / before.

Usage (from the repository root):
    python -m benchmarks.zero_shot --data ../shared/data --categories mvtec_transistor --limit-test 60 \\
        --test-seed 1 --cache-dir FEATURE_CACHE_DIR --configs before,after --majority \\
        --json benchmarks/results/issue11_zero_shot.json
    python -m benchmarks.zero_shot --categories mvtec_transistor --timing 12 --repeats 3 \\
        --json benchmarks/results/issue11_zero_shot_timing.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
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
from models.detectors.zero_shot import ZeroShotConfig, ZeroShotScorer, evaluate_zero_shot  # noqa: E402
from models.evaluation import GOOD, load_category, load_image_rgb, subset_test  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("benchmarks.zero_shot")

DEFAULT_DATA: Final = REPO.parent / "shared" / "data"
MODEL_NAME: Final = "vit_small_patch14_dinov2"
BLOCKS: Final = (8,)                   # the few-shot default (DetectorSettings.blocks), what the review uses
# The zero-shot defaults before this change (ZeroShotConfig at the previous commit).
BEFORE: Final[dict[str, Any]] = {"shorter_side": 224, "scales": (1,), "neighbour_fraction": 0.1, "rescore_k": (),
                                 "brightness": "as_is"}
CONFIGS: Final[dict[str, dict[str, Any]]] = {
    "before": BEFORE,
    "after": {},                        # today's ZeroShotConfig() defaults
    "after, no re-scoring": {"rescore_k": ()},
    "after, r=1 only": {"scales": (1,)},
    "as is": {"brightness": "as_is"},    # frames as they are: the default before the brightness option
    "standardised": {"brightness": "standardise"},
}


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
    p.add_argument("--minority", action="store_true", help="also score a batch of mostly good images")
    p.add_argument("--minority-bad", type=int, default=3, help="defective images in the minority batch")
    p.add_argument("--good-only", action="store_true", help="also score a batch of the subset's good images only")
    p.add_argument("--no-subset", action="store_true", help="score only the batches asked for above, not the subset")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (outside the repo); not for --timing")
    p.add_argument("--blocks", default=",".join(map(str, BLOCKS)),
                   help="ViT blocks whose features are joined (default: the few-shot default, as the review uses)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--timing", type=int, default=None, metavar="N",
                   help="time before vs after scoring on N images of the first category instead (no feature cache)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of --timing")
    return p.parse_args(argv)


def _rates(report: Any, items: list[Any]) -> dict[str, Any]:
    labels = np.array([t.label for t in items])
    point = report.operating_point          # robust_thresholds on the re-scored image scores, as the review
    keys = ("defect_flag_rate", "good_flag_rate", "defect_fail_rate", "good_fail_rate")
    return {
        "image_auroc": report.image_auroc, "top_score_auroc": report.thresholds["top_score_auroc"],
        "aupro": report.aupro, "pixel_auroc": report.pixel_auroc, "n_test": report.n_test,
        "n_defective": int(labels.sum()), "ms_per_image": report.ms_per_image,
        "verdict_rule": {k: point[k] for k in keys} | {"review": report.thresholds["review"],
                                                       "fail": report.thresholds["fail"]},
        "per_defect_auroc": report.per_defect_auroc, "config": report.config,
        # per image, in the batch's order: what a verdict rule sees (re-scored score) and the truth
        "images": [{"score": float(s), "label": int(t.label), "defect_type": t.defect_type,
                    "image": f"{Path(t.path).parent.name}/{Path(t.path).name}"}      # type folder / file name
                   for s, t in zip(report.scores, items, strict=True)],
    }


def batches_of(items: list[Any], *, subset: bool = True, majority_good: int | None = None,
               minority_bad: int | None = None, good_only: bool = False) -> dict[str, list[Any]]:
    """The batches scored per category, by name, from one test subset (its order kept within a batch).

    ``subset``: all of it; ``majority_good``: its defective images and that many good ones (most images
    defective); ``minority_bad``: its good images and that many defective ones (the first, in its order);
    ``good_only``: its good images alone.
    """
    goods = [t for t in items if t.defect_type == GOOD]
    bad = [t for t in items if t.defect_type != GOOD]
    batches = {f"subset {len(items)}": list(items)} if subset else {}
    if majority_good is not None:
        batches[f"defect majority {len(bad)}/{len(bad) + min(majority_good, len(goods))}"] = goods[:majority_good] + bad
    if minority_bad is not None:
        few = bad[:minority_bad]
        batches[f"defect minority {len(few)}/{len(few) + len(goods)}"] = goods + few
    if good_only:
        batches[f"good only {len(goods)}"] = goods
    return batches


def _pct(x: float) -> str:
    return "  -  " if x is None or math.isnan(x) else f"{100 * x:.0f} %"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.timing is not None:
        return _timing(args)
    if args.cache_dir is None:
        msg = "--cache-dir is needed (a folder outside the repository for the backbone features)"
        raise SystemExit(msg)
    resolved = resolve_weights(MODEL_NAME, None)
    full = create_backbone(MODEL_NAME, state_dict=resolved.state_dict, blocks=tuple(range(1, 13)), device="cpu")
    store = FeatureStore(args.cache_dir / "features", weights_sha256=resolved.info.sha256, full=full)
    blocks = tuple(int(b) for b in args.blocks.split(","))
    backbone = CachedBackbone(store, blocks=blocks)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        msg = f"unknown --configs {unknown}; available: {', '.join(CONFIGS)}"
        raise SystemExit(msg)
    results: list[dict[str, Any]] = []
    print("| category | batch | config | img AUROC | top-patch AUROC | AUPRO | median rule: defects flagged / good "
          "flagged / defects FAIL / good FAIL | s |")
    for cat_name in [c.strip() for c in args.categories.split(",") if c.strip()]:
        category = load_category(args.data / cat_name)
        items = subset_test(category.test, args.limit_test, seed=args.test_seed)
        batches = batches_of(items, subset=not args.no_subset,
                             majority_good=args.majority_good if args.majority else None,
                             minority_bad=args.minority_bad if args.minority else None, good_only=args.good_only)
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
                vr = row["verdict_rule"]
                print(f"| {cat_name} | {batch} | {name} | {row['image_auroc']:.3f} | {row['top_score_auroc']:.3f} | "
                      f"{row['aupro']:.3f} | {' / '.join(_pct(vr[k]) for k in list(vr)[:4])} | {seconds:.0f} |",
                      flush=True)
                if args.json is not None:
                    _write(args, results, store)
    return 0


def _timing(args: argparse.Namespace) -> int:
    """Wall time of zero-shot scoring, before vs after, interleaved: what a review spends on a batch."""
    cat_name = args.categories.split(",")[0].strip()
    category = load_category(args.data / cat_name)
    items = subset_test(category.test, args.timing, seed=args.test_seed)
    images = [load_image_rgb(t.path) for t in items]
    resolved = resolve_weights(MODEL_NAME, None)
    backbone = create_backbone(MODEL_NAME, state_dict=resolved.state_dict, blocks=BLOCKS, device="cpu")
    configs = {name: ZeroShotConfig(**CONFIGS[name]) for name in ("before", "after")}
    runs: list[dict[str, Any]] = []
    with torch.inference_mode():
        for config in configs.values():          # warm-up: one small batch each, not timed
            warm = ZeroShotScorer(backbone=backbone, config=config)
            warm.add(images[:2])
            warm.score()
        for repeat in range(args.repeats):
            order = list(configs) if repeat % 2 == 0 else list(reversed(configs))
            for name in order:
                scorer = ZeroShotScorer(backbone=backbone, config=configs[name])
                t0 = time.perf_counter()
                scorer.add(images)
                t1 = time.perf_counter()
                scorer.score()
                t2 = time.perf_counter()
                runs.append({"config_name": name, "repeat": repeat, "features_s": t1 - t0, "scoring_s": t2 - t1,
                             "total_s": t2 - t0})
                print(f"repeat {repeat} {name}: features {t1 - t0:.1f} s, mutual scoring {t2 - t1:.1f} s", flush=True)
    median = {name: {k: float(np.median([r[k] for r in runs if r["config_name"] == name]))
                     for k in ("features_s", "scoring_s", "total_s")} for name in configs}
    ratios = {k: median["after"][k] / median["before"][k] for k in ("features_s", "scoring_s", "total_s")}
    print(f"{cat_name}, {len(images)} images: after / before = {ratios['total_s']:.1f}x in all "
          f"(features {ratios['features_s']:.1f}x, mutual scoring {ratios['scoring_s']:.1f}x); medians {median}")
    if args.json is not None:
        _write(args, [{"category": cat_name, "n_images": len(images), "runs": runs, "median": median,
                       "ratio_after_over_before": ratios,
                       "configs": {n: c.to_dict() for n, c in configs.items()}}], None)
    return 0


def _write(args: argparse.Namespace, results: list[dict[str, Any]], store: FeatureStore | None) -> None:
    payload = {
        "benchmark": "zero_shot_timing" if args.timing is not None else "zero_shot",
        "command": "python -m benchmarks.zero_shot " + " ".join(sys.argv[1:]),
        "conditions": {"device": "cpu", "torch_threads": torch.get_num_threads(), "cpu": cpu_model(),
                       "backbone": MODEL_NAME,
                       "blocks": [int(b) for b in args.blocks.split(",")], "limit_test": args.limit_test,
                       "test_seed": args.test_seed, "load_average": os.getloadavg(),
                       "feature_cache": "benchmarks._features (ViT forward memoised)" if store is not None
                       else "not used: the backbone runs for real",
                       "cache_hits": store.hits if store else None, "cache_misses": store.misses if store else None,
                       "versions": versions()},
        "results": results,
    }
    atomic_write(args.json, (json.dumps(payload, indent=1, default=float) + "\n").encode())


if __name__ == "__main__":
    raise SystemExit(main())
