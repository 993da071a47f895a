"""One-image calibration: how the scores that stand in for other good parts compare with real good parts.

A detector taught from one good image has no second image to leave out, so its calibration scores come
from the image itself (``models.detectors.one_shot``). This benchmark fits ``PatchKNN`` (today's
defaults, rotations "auto" = on at one shot) on ONE good training image per seed, and prints:

- ``turned``: the product's stand-in scores (radius 1, 2, 3), each region matched against the frame and
  its turned views in the bank, its own place left out in each;
- ``frame_only``: the same with the frame alone (the rule before the turned views; a fit with rotations
  off gives exactly it, since the stand-in only reads the views the bank holds);
- the image scores of the category's good test images (all, or a seeded subset of ``--goods``) under the
  product's detector, and the ratio of their 90th percentile to each stand-in's highest score: 1 means the
  stand-in sits at the 90th percentile of real good parts, below 1 it is too high (defects pass), above 1
  too low (good parts are flagged).

The rates at the thresholds these set, on the full test sets, come from ``benchmarks.accuracy --settings 1``.

Usage:
    python -m benchmarks.one_shot --data DATA --categories visa_fryum,mvtec_transistor --seeds 0,1,2 \\
        --cache-dir CACHE --json OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._features import CachedBackbone, FeatureStore, open_store  # noqa: E402
from benchmarks._timing import cpu_model, versions  # noqa: E402
from benchmarks.accuracy import DEFAULT_CACHE, MODEL_NAME  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.evaluation import load_category, load_image_rgb, select_shots  # noqa: E402
from models.files import atomic_write  # noqa: E402


def _ratio(good_p90: float, scores: np.ndarray) -> float | None:
    return float(good_p90 / scores.max()) if scores.size and scores.max() > 0 else None


def category_seed(store: FeatureStore, root: Path, seed: int, goods: int | None,
                  config: PatchKNNConfig | None = None) -> dict[str, Any]:
    """One category and shot seed: both stand-ins and the good test images' scores (``config``: today's
    defaults unless given; its rotations are set here)."""
    category = load_category(root)
    shot = load_image_rgb(select_shots(category.train_good, 1, seed=seed)[0])
    fits = {}
    variants: tuple[tuple[str, bool | Literal["auto"]], ...] = (("turned", "auto"), ("frame_only", False))
    for name, rotations in variants:
        detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)),
                            config=dataclasses.replace(config or PatchKNNConfig(), augment_rotations=rotations))
        detector.fit([shot])
        fits[name] = detector
    product = fits["turned"]
    good_items = [item for item in category.test if item.label == 0]
    if goods is not None and goods < len(good_items):
        chosen = np.random.default_rng(1).choice(len(good_items), goods, replace=False)
        good_items = [good_items[i] for i in sorted(chosen)]
    scores = np.array([float(product.predict(load_image_rgb(item.path)).pred_score[0]) for item in good_items])
    p90 = float(np.quantile(scores, 0.9))
    out: dict[str, Any] = {"category": root.name, "seed": seed, "rotations": bool(product.rotations_used),
                           "masking": bool(product.masking_active), "n_good": len(good_items),
                           "good": {"median": float(np.median(scores)), "p90": p90, "max": float(scores.max())}}
    for name, detector in fits.items():
        out[name] = {"scores": [float(s) for s in detector.train_scores],
                     "good_p90_over_max": _ratio(p90, detector.train_scores)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--categories", required=True, help="comma-separated names")
    p.add_argument("--seeds", default="0,1,2", help="shot seeds, comma-separated")
    p.add_argument("--goods", type=int, default=None, help="a seeded subset of this many good test images")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="feature cache (outside the repo)")
    p.add_argument("--weights", default=None, help="DINOv2 weights file (default: models.weights resolution)")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    store, resolved = open_store(args.cache_dir, args.weights, model_name=MODEL_NAME)
    start = time.perf_counter()
    rows = []
    for name in args.categories.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = category_seed(store, args.data / name, seed, args.goods)
            rows.append(row)
            print(f"{name} seed {seed}: good test median {row['good']['median']:.3f} p90 {row['good']['p90']:.3f}"
                  f" | turned {np.round(row['turned']['scores'], 3)} (p90/max {row['turned']['good_p90_over_max']:.2f})"
                  f" | frame only {np.round(row['frame_only']['scores'], 3)}"
                  f" (p90/max {row['frame_only']['good_p90_over_max']:.2f})", flush=True)
    if args.json is not None:
        env = {"device": "cpu", "threads": torch.get_num_threads(), "cpu": cpu_model(), "versions": versions(),
               "weights": {"source": resolved.info.source, "sha256": resolved.info.sha256},
               "command": "python -m benchmarks.one_shot " + " ".join(sys.argv[1:] if argv is None else argv),
               "wall_s": time.perf_counter() - start}
        atomic_write(args.json, json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
