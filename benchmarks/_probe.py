"""What the paired-row probes of issue 11 share (``benchmarks.self_reference``, ``benchmarks.bank_density``): their
command line, the feature cache and test set they open, one scored row, and the result JSON they write.

A probe scores several anomaly-map variants ("rows") of the same kNN search, bank and test images, so that the rows
differ only in what is measured (block 8, pooling r = 1, k = 1, top 1 %, masking off; ``benchmarks._sweep``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Final

import torch

from benchmarks._features import FeatureStore, open_store
from benchmarks._sweep import SweepData, score
from models.evaluation import Category, TestItem, load_category, subset_test
from models.files import atomic_write
from models.weights import ResolvedWeights

MODEL_NAME: Final = "vit_small_patch14_dinov2"
BLOCK: Final = 8
KEY: Final = ((BLOCK,), 1)                  # the sweep's variant: block 8, pooling r = 1


def probe_parser(description: str) -> argparse.ArgumentParser:
    """The options every probe takes (its shot seed option is its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--category", required=True)
    p.add_argument("--brightness", choices=("as_is", "standardise"), required=True,
                   help="as the product decides for the category (standardise where the scene fills the frame)")
    p.add_argument("--limit-test", type=int, default=0, help="stratified test subset (0 = the full test set)")
    p.add_argument("--cache-dir", type=Path, required=True, help="feature cache (outside the repository)")
    p.add_argument("--json", type=Path, default=None)
    return p


def open_probe(args: argparse.Namespace, *, threads: int
               ) -> tuple[FeatureStore, ResolvedWeights, Category, list[TestItem]]:
    """Logging, torch threads, the feature cache, the category and its (subset of) test images."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    store, resolved = open_store(args.cache_dir, None, model_name=MODEL_NAME)
    category = load_category(args.data / args.category)
    return store, resolved, category, list(subset_test(category.test, args.limit_test or None, seed=0))


def score_row(data: SweepData, maps: list[torch.Tensor], label: str, *, fused: dict[str, Any] | None = None
              ) -> dict[str, float]:
    """Image AUROC, AUPRO and pixel AUROC of one row's maps (printed after ``label``); ``fused``: sweep settings
    that fuse them with other parts into the image score (the maps stay this row's)."""
    data.knn[KEY] = maps
    row = {k: round(v, 4) for k, v in score(data, blocks=(BLOCK,), masking="off", **(fused or {})).items()
           if k != "masking_active"}
    print(f"{label} image AUROC {row['image_auroc']:.3f}  AUPRO {row['aupro']:.3f}  "
          f"pixel AUROC {row['pixel_auroc']:.3f}", flush=True)
    return row


def write_probe_json(args: argparse.Namespace, script: str, resolved: ResolvedWeights, n_images: int,
                     fields: dict[str, Any]) -> None:
    """The result JSON at ``args.json`` (nothing without it): the conditions, ``fields``, and the command."""
    if args.json is None:
        return
    out: dict[str, Any] = {"category": args.category, "shots": 16, "brightness": args.brightness,
                           "test_images": n_images, "block": BLOCK, "shorter_side": 448,
                           "weights_sha256": resolved.info.sha256[:12], **fields,
                           "command": f"python -m {script} " + " ".join(sys.argv[1:])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, json.dumps(out, indent=2).encode())
    print(f"wrote {args.json}")
