"""Issue 11: how the second scale's z-scores get their spread, measured or in proportion to the mean.

The second scale (``models.detectors._scales``) adds ``weight x`` the coarse image score's z-score to the fine
one's. Each z-score needs the good frames' spread at its scale: with two or more good frames the product measures
it (the standard deviation of the leave-one-out scores, ``ScaleFusion.from_loo``); with one frame it takes each
scale's spread in proportion to its mean (``ScaleFusion.from_means``). Both reduce to

    fused = fine + weight * k * coarse      (for ranking; k = fine spread / coarse spread)

so the two rules differ only in k. With few frames the measured spreads are noisy (4 leave-one-out scores), so
this benchmark fits, per category, shot count and shot seed, a fine-only and a coarse-only detector (``PatchKNN``
with ``second_scale=0``, the second with ``patch_pooling`` = the default's ``second_scale``) on the same shots,
scores the full test set with both, and reports the image AUROC of: the fine score, the coarse score, the fusion
with the measured spreads (the product at 2 or more shots) and with the proportional ones (the product at one
shot). A fused detector scores exactly as its two parts fused (``tests/models/test_scales.py``).

Usage (features from the cache of ``benchmarks/accuracy.py``):
    python -m benchmarks.scale_spread --data ../shared/data --categories mvtec_transistor,visa_fryum \\
        --shots 4 --seeds 0,1,2 --cache-dir CACHE --json OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._features import CachedBackbone, FeatureStore, open_store  # noqa: E402
from benchmarks._timing import cpu_model, versions  # noqa: E402
from benchmarks.accuracy import DEFAULT_CACHE, MODEL_NAME  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.detectors._scales import ScaleFusion  # noqa: E402
from models.evaluation import image_auroc, load_category, load_image_rgb, select_shots  # noqa: E402
from models.files import atomic_write  # noqa: E402

RULES = ("fine", "coarse", "measured", "proportional")


def category_seed(store: FeatureStore, root: Path, shots: int, seed: int,
                  config: PatchKNNConfig | None = None) -> dict[str, Any]:
    """One category, shot count and seed: the two scales' test and calibration scores, and each rule's AUROC
    (``config``: the product's defaults unless given; its ``second_scale`` and weight are the fused ones)."""
    base = config or PatchKNNConfig()
    category = load_category(root)
    images = [load_image_rgb(p) for p in select_shots(category.train_good, shots, seed=seed)]
    labels = np.asarray([item.label for item in category.test])
    parts = {"fine": dataclasses.replace(base, second_scale=0),
             "coarse": dataclasses.replace(base, second_scale=0, patch_pooling=base.second_scale)}
    test: dict[str, np.ndarray] = {}
    calibration: dict[str, np.ndarray] = {}
    for name, cfg in parts.items():
        detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=cfg)
        detector.fit(images)
        calibration[name] = np.asarray(detector.train_scores, dtype=np.float64)
        test[name] = np.asarray([float(detector.predict(load_image_rgb(item.path)).pred_score[0])
                                 for item in category.test])
    fine, coarse = torch.from_numpy(test["fine"]), torch.from_numpy(test["coarse"])
    fusions = {"proportional": ScaleFusion.from_means(calibration["fine"], calibration["coarse"],
                                                          weight=base.second_scale_weight)}
    if shots >= 2:
        fusions["measured"] = ScaleFusion.from_loo(calibration["fine"], calibration["coarse"],
                                                   weight=base.second_scale_weight)
    auroc = {"fine": image_auroc(test["fine"], labels), "coarse": image_auroc(test["coarse"], labels)}
    k = {}
    for name, fusion in fusions.items():
        auroc[name] = image_auroc(fusion.fuse(fine, coarse).numpy(), labels)
        k[name] = max(fusion.fine_std, 1e-12) / max(fusion.coarse_std, 1e-12)
    return {"category": root.name, "shots": shots, "seed": seed, "n_test": len(labels),
            "second_scale": base.second_scale, "weight": base.second_scale_weight, "image_auroc": auroc,
            "k": k, "calibration": {n: [float(s) for s in v] for n, v in calibration.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--categories", required=True, help="comma-separated names")
    p.add_argument("--shots", default="4", help="shot counts, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="shot seeds, comma-separated")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="feature cache (outside the repo)")
    p.add_argument("--weights", default=None, help="DINOv2 weights file (default: models.weights resolution)")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    store, resolved = open_store(args.cache_dir, args.weights, model_name=MODEL_NAME)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, float]] = {}
    env = {"device": "cpu", "threads": torch.get_num_threads(), "cpu": cpu_model(), "versions": versions(),
           "weights": {"source": resolved.info.source, "sha256": resolved.info.sha256},
           "command": "python -m benchmarks.scale_spread " + " ".join(sys.argv[1:] if argv is None else argv)}
    for name in args.categories.split(","):
        for shots in (int(s) for s in args.shots.split(",")):
            done = []
            for seed in (int(s) for s in args.seeds.split(",")):
                row = category_seed(store, args.data / name, shots, seed)
                rows.append(row)
                done.append(row)
                print(f"{name} {shots} shot(s) seed {seed}: " + ", ".join(
                    f"{rule} {row['image_auroc'][rule]:.4f}" for rule in RULES if rule in row["image_auroc"])
                    + " | k " + ", ".join(f"{rule} {v:.2f}" for rule, v in row["k"].items()), flush=True)
            summary[f"{name} {shots}"] = {rule: float(np.mean([r["image_auroc"][rule] for r in done]))
                                          for rule in RULES if rule in done[0]["image_auroc"]}
            print(f"{name} {shots} shot(s), mean of {len(done)} seed(s): " + ", ".join(
                f"{rule} {v:.4f}" for rule, v in summary[f"{name} {shots}"].items()), flush=True)
            if args.json is not None:
                atomic_write(args.json, json.dumps({"env": {**env, "wall_s": time.perf_counter() - start},
                                                    "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
