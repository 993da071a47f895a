"""E5 of benchmarks/README.md: good-only threshold rules (fail and review) against test outcomes.

For each category: 16 shots (seed 0), the default ``PatchKNNConfig`` (shorter side 448, k=1, top
1 %, sigma 4, masking "auto") on block 8, through ``CachedBackbone`` (cached features, so only
uncached images run the ViT). ``PatchKNN.fit`` gives the 16 leave-one-out (LOO) good scores
(``train_scores``), ``PatchKNN.predict`` the image scores of the test images (the full test set,
or ``subset_test(test, N)`` with ``--limit-test N`` for the categories named in ``--limit-for``).
The scores are kept in the JSON; the rules are then computed from the 16 LOO scores only:

* fail: ``max + m x spread`` for m in (1, 0.5, 0); spread = 1.4826 x MAD, at least 5 % of the
  median, as ``models.calibration.calibrate``;
* review (never above fail): q99 (the rule before E5; ``calibrate`` now uses q90), q90, q75, median + 3 x spread,
  median + 2 x spread.

Reported per category: good test images at >= review ("review rate") and at >= fail ("false
reject"), defect test images at >= fail ("FAIL recall") and at >= review ("caught").

Usage (from the repository root; one heavy process, 2 threads):
    python -m benchmarks.e5_calibration --limit-for mtd_magnetic_tile --limit-test 60 --json /tmp/e5/scores.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._features import CachedBackbone, FeatureStore
from models.backbone import create_backbone
from models.calibration import MIN_RELATIVE_SPREAD
from models.detectors.patch_knn import PatchKNN, PatchKNNConfig
from models.evaluation import load_category, load_image_rgb, select_shots, subset_test
from models.weights import resolve_weights

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"   # ../shared/data of the checkout
logger = logging.getLogger("benchmarks.e5_calibration")
CATEGORIES = ("mtd_magnetic_tile", "mvtec_transistor", "visa_fryum")
FAIL_MARGINS = (1.0, 0.5, 0.0)
REVIEW_RULES = ("q99", "q90", "q75", "median+3s", "median+2s")


def spread_of(good: np.ndarray) -> float:
    """The robust spread of ``models.calibration.calibrate``: 1.4826 x MAD, >= 5 % of the median."""
    median = float(np.median(good))
    return max(1.4826 * float(np.median(np.abs(good - median))), MIN_RELATIVE_SPREAD * abs(median))


def thresholds(loo: np.ndarray, fail_margin: float, review_rule: str) -> tuple[float, float]:
    """(review, fail) from the LOO good scores only; review is capped at fail."""
    spread, median = spread_of(loo), float(np.median(loo))
    fail = float(loo.max()) + fail_margin * spread
    if review_rule.startswith("q"):
        review = float(np.quantile(loo, int(review_rule[1:]) / 100))
    else:
        review = median + float(review_rule.split("+")[1].rstrip("s")) * spread
    return min(review, fail), fail


def outcomes(row: dict, fail_margin: float, review_rule: str) -> dict[str, float]:
    """Shares of good / defect test images at or above review and fail for one rule."""
    loo = np.asarray(row["loo"])
    scores, labels = np.asarray(row["scores"]), np.asarray(row["labels"])
    review, fail = thresholds(loo, fail_margin, review_rule)
    good, bad = scores[labels == 0], scores[labels == 1]
    return {"review": review, "fail": fail,
            "review_rate": float((good >= review).mean()), "false_reject": float((good >= fail).mean()),
            "fail_recall": float((bad >= fail).mean()), "caught": float((bad >= review).mean())}


def per_type_caught(row: dict, fail_margin: float, review_rule: str) -> dict[str, str]:
    """'caught / n' per defect type at the review threshold."""
    review, _ = thresholds(np.asarray(row["loo"]), fail_margin, review_rule)
    out: dict[str, list[int]] = {}
    for s, t, lab in zip(row["scores"], row["types"], row["labels"], strict=True):
        if lab:
            counts = out.setdefault(t, [0, 0])
            counts[0] += int(s >= review)
            counts[1] += 1
    return {t: f"{c}/{n}" for t, (c, n) in sorted(out.items())}


def report(rows: list[dict]) -> str:
    """Markdown tables: fail rules, then review rules (each under every fail rule)."""
    names = [r["category"] for r in rows]
    lines = ["| fail rule | " + " | ".join(f"{n} FR / recall" for n in names) + " | mean FR / recall |",
             "|---" * (len(names) + 2) + "|"]
    for m in FAIL_MARGINS:
        res = [outcomes(r, m, "q99") for r in rows]
        cells = [f"{o['false_reject']:.3f} / {o['fail_recall']:.3f}" for o in res]
        mean = (np.mean([o["false_reject"] for o in res]), np.mean([o["fail_recall"] for o in res]))
        lines.append(f"| max + {m:g} x spread | " + " | ".join(cells) + f" | {mean[0]:.3f} / {mean[1]:.3f} |")
    for m in FAIL_MARGINS:
        lines += ["", f"fail = max + {m:g} x spread; review rate / caught:", "",
                  "| review rule | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
        for rule in REVIEW_RULES:
            res = [outcomes(r, m, rule) for r in rows]
            cells = [f"{o['review_rate']:.3f} / {o['caught']:.3f}" for o in res]
            mean = (np.mean([o["review_rate"] for o in res]), np.mean([o["caught"] for o in res]))
            lines.append(f"| {rule} | " + " | ".join(cells) + f" | {mean[0]:.3f} / {mean[1]:.3f} |")
    lines.append("")
    for r in rows:
        loo = np.asarray(r["loo"])
        good = np.asarray(r["scores"])[np.asarray(r["labels"]) == 0]
        lines.append(f"{r['category']}: {r['n_test']} test ({int(good.size)} good); LOO sorted "
                     f"{np.round(np.sort(loo), 4).tolist()}; spread {spread_of(loo):.4f}; "
                     f"good test max {good.max():.4f}")
        for rule in REVIEW_RULES:
            lines.append(f"  caught per type, {rule}: {per_type_caught(r, 1.0, rule)}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--categories", default=",".join(CATEGORIES))
    p.add_argument("--limit-test", type=int, default=60)
    p.add_argument("--limit-for", default="", help="categories scored on subset_test(test, --limit-test)")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/inspector-bench-cache"))
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="print the tables from --json, score nothing")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = json.loads(args.json.read_text()) if args.json.is_file() else []
    if not args.report_only:
        torch.set_num_threads(args.threads)
        resolved = resolve_weights("vit_small_patch14_dinov2", None)
        full = create_backbone("vit_small_patch14_dinov2", state_dict=resolved.state_dict,
                               blocks=tuple(range(1, 13)), device="cpu")
        store = FeatureStore(args.cache_dir / "features", weights_sha256=resolved.info.sha256, full=full)
        done = {r["category"] for r in rows}
        limited = set(filter(None, args.limit_for.split(",")))
        for name in args.categories.split(","):
            if name in done:
                continue
            t0 = time.perf_counter()
            category = load_category(args.data / name)
            train = select_shots(category.train_good, 16, seed=0)
            items = subset_test(category.test, args.limit_test, seed=0) if name in limited else list(category.test)
            detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=PatchKNNConfig())
            detector.fit([load_image_rgb(path) for path in train])
            scores = []
            for n, item in enumerate(items):
                scores.append(float(detector.predict(load_image_rgb(item.path)).pred_score[0]))
                if n % 20 == 0:
                    logger.info("%s: %d/%d scored (%.0f s, %d cache misses)", name, n + 1, len(items),
                                time.perf_counter() - t0, store.misses)
            rows.append({"category": name, "n_test": len(items), "full_test": name not in limited,
                         "loo": [float(s) for s in detector.train_scores], "scores": scores,
                         "labels": [t.label for t in items], "types": [t.defect_type for t in items],
                         "seconds": time.perf_counter() - t0})
            args.json.write_text(json.dumps(rows, indent=1))
    print(report(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
