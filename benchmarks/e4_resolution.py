"""E4 of benchmarks/README.md: PatchKNN accuracy and cost at several input resolutions (shorter side).

For each shorter side and category: 16 shots (seed 0), the 30-image stratified test subset of E1
(``subset_test(subset_test(test, 60), 30)``), block 8, k=1, top 1 %, sigma 4, then
``_sweep.collect`` + ``_sweep.score`` (masking off, as the E1 baseline; "auto" reported as well).
``_sweep.collect`` resizes both the bank and the test images to ``shorter_side``
(``to_model_input(..., shorter_side)`` for every image; the feature cache keys on the input tensor).

Timings (rough, shared CPU): the backbone forward per image is the mean time of the cache misses
while extracting the 16 + 30 images; the kNN per image is one bf16 product of a test image's
patches with the bank plus the top-k (median of 3, first test image); ``collect`` per image is
the whole per-test-image loop with cached features (loading, kNN, foreground PCA).

Usage (from the repository root; one heavy process, 2 threads):
    python -m benchmarks.e4_resolution --sizes 448,672 --json /tmp/e4/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from benchmarks._features import FeatureStore
from benchmarks._sweep import _features, collect, score
from models.backbone import create_backbone
from models.evaluation import load_category, select_shots, subset_test
from models.weights import resolve_weights

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"   # ../shared/data of the checkout
logger = logging.getLogger("benchmarks.e4_resolution")
CATEGORIES = ("visa_fryum", "mvtec_transistor", "mtd_magnetic_tile")
VARIANT = ((8,), 1)


def _knn_time(store: FeatureStore, train, item_path, size: int) -> tuple[float, int, int]:
    """Seconds of one bf16 product + top-k of one test image against the bank (median of 3)."""
    bank = torch.cat([_features(store, p, size)[:, :, 7].reshape(-1, 384) for p in train]).to(torch.bfloat16)
    q = _features(store, item_path, size)[:, :, 7].reshape(-1, 384).to(torch.bfloat16)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        d = (q @ bank.T).float()
        d.topk(5, dim=1)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1], q.shape[0], bank.shape[0]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--sizes", default="448,672")
    p.add_argument("--categories", default=",".join(CATEGORIES))
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/inspector-bench-cache"))
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    resolved = resolve_weights("vit_small_patch14_dinov2", None)
    full = create_backbone("vit_small_patch14_dinov2", state_dict=resolved.state_dict,
                           blocks=tuple(range(1, 13)), device="cpu")
    store = FeatureStore(args.cache_dir / "features", weights_sha256=resolved.info.sha256, full=full)
    results = json.loads(args.json.read_text()) if args.json.is_file() else []
    done = {(r["shorter_side"], r["category"]) for r in results}
    for size in (int(s) for s in args.sizes.split(",")):
        for name in args.categories.split(","):
            if (size, name) in done:
                continue
            category = load_category(args.data / name)
            train = select_shots(category.train_good, 16, seed=0)
            items = subset_test(subset_test(category.test, 60, seed=0), 30, seed=0)
            # backbone: extract (or read) every image once, timing the misses
            t_miss, n_miss = 0.0, 0
            for path in [*train, *(t.path for t in items)]:
                misses = store.misses
                t0 = time.perf_counter()
                _features(store, path, size)
                if store.misses > misses:
                    t_miss += time.perf_counter() - t0
                    n_miss += 1
            knn_s, n_query, n_bank = _knn_time(store, train, items[0].path, size)
            t0 = time.perf_counter()
            data = collect(store, category, train, items, [VARIANT], shorter_side=size,
                           mask_variants=[VARIANT])
            collect_s = (time.perf_counter() - t0) / len(items)
            off = score(data, blocks=(8,), masking="off")
            auto = score(data, blocks=(8,), masking="auto")
            row = {"shorter_side": size, "category": name, "n_test": len(items),
                   "off": off, "auto": auto,
                   "forward_s_per_image": t_miss / n_miss if n_miss else None, "forward_n": n_miss,
                   "knn_s_per_image": knn_s, "query_patches": n_query, "bank_patches": n_bank,
                   "collect_s_per_image": collect_s}
            logger.info("%s", json.dumps(row))
            results.append(row)
            args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
