"""Typing when a label classifies every region of an inspection, as the Review screen and `inspector feedback` do.

`inspector evaluate --types 5` labels the largest region of 5 images per type and types the largest
region of every other defect image. At a station a reviewer's label classifies ALL regions of the
inspection (the defect and its fragments), and every region is typed. This reads the cache that
``inspector evaluate DATA/CAT --types 5 --cache CACHE`` wrote (with the crop pass: its ``.crop{side}.npy``
files), builds the product's embedding of every region at the pixel threshold (the largest with its
crop, the others with their frame pooling standing in, as `inspector.defect_typing.type_regions` does)
and scores, with the product's draws, two ways of labelling:

- ``largest``: the labelled images' largest regions are the examples (the benchmark's protocol; its
  largest-region accuracy is `inspector evaluate`'s);
- ``all``: every region of a labelled image is an example of its type (what the product does);

each typing the largest region (``accuracy``) and the other regions (``fragments``: a fragment counts
right when typed as its image's type) of every unlabelled image.

Usage:
    python -m benchmarks.type_labels --data DATA --cache CACHE --seeds 0-19 --json OUT.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.type_regions import CATEGORIES, N_LABELLED, load_typing_cache, write_typing_result  # noqa: E402
from benchmarks.type_variants import _seeds  # noqa: E402
from models.defect_types import (  # noqa: E402
    DefectTypeClassifier,
    DefectTypeConfig,
    frame_weights,
    region_colour,
    region_embedding,
    region_weights,
)
from models.evaluation import load_image_rgb  # noqa: E402
from models.regions import find_regions  # noqa: E402
from models.type_evaluation import labelled_draw, largest_region_box  # noqa: E402

MODES = ("largest", "all")


def category_embeddings(data: Path, cache: Path, category: str, cfg: DefectTypeConfig
                        ) -> tuple[list[str], list[np.ndarray], list[list[np.ndarray]], float]:
    """The product's embeddings of one category's defect images from the cache: (each image's type, its largest
    region's embedding, its other regions' embeddings, the pixel threshold)."""
    folder, thr, side, nearest_good, defects = load_typing_cache(data, cache, category)
    types: list[str] = []
    largest: list[np.ndarray] = []
    others: list[list[np.ndarray]] = []
    for item in defects:
        name = f"{item.defect_type}__{item.path.stem}"
        with np.load(folder / f"{name}.npz", allow_pickle=False) as npz:
            features, amap = npz["features"].astype(np.float32), npz["anomaly_map"].astype(np.float32)
        image = load_image_rgb(item.path)

        def embed(box: tuple[int, int, int, int], threshold: float, crop: Any,
                  features: np.ndarray = features, amap: np.ndarray = amap, image: np.ndarray = image) -> np.ndarray:
            w = region_weights(amap, box=box, pixel_threshold=threshold)
            return region_embedding(features, w, shorter_side=side, nearest_good=nearest_good,
                                    colour=region_colour(image, w) if cfg.colour_weight > 0 else None, crop=crop)

        box, threshold, _ = largest_region_box(amap, thr)
        crop = None
        if cfg.crop_side:
            path = folder / f"{name}.crop{cfg.crop_side}.npy"
            if not path.is_file():
                msg = f"{path}: missing; run `inspector evaluate DATA/{category} --types 5 --cache {cache}` first"
                raise SystemExit(msg)
            crop = np.load(path, allow_pickle=False).astype(np.float32)
        boxes = [(r.x, r.y, r.width, r.height) for r in find_regions(amap, pixel_threshold=threshold)]
        rest = [b for b in boxes if b != tuple(box)]
        if cfg.scope == "frame":           # every region carries the frame's embedding (the largest's crop)
            w = frame_weights(amap, boxes=boxes, pixel_threshold=threshold)
            whole = region_embedding(features, w, shorter_side=side, nearest_good=nearest_good,
                                     colour=region_colour(image, w) if cfg.colour_weight > 0 else None, crop=crop)
            largest.append(whole)
            others.append([whole] * len(rest))
        else:
            largest.append(embed(box, threshold, crop))
            others.append([embed(b, threshold, "frame" if cfg.crop_side else None) for b in rest])
        types.append(item.defect_type)
    return types, largest, others, thr


def category_run(data: Path, cache: Path, category: str, seeds: list[int], *, n_labelled: int = N_LABELLED,
                 config: DefectTypeConfig | None = None) -> dict[str, Any]:
    """Both labelling modes on one category's cache (see the module docstring)."""
    cfg = config if config is not None else DefectTypeConfig()
    types, largest, others, thr = category_embeddings(data, cache, category, cfg)
    rows: dict[str, Any] = {}
    for mode in MODES:
        accuracy, fragments = [], []
        for seed in seeds:
            labelled = labelled_draw(types, n_labelled, seed)
            examples, classes = [], []
            for i in sorted(labelled):
                examples.append(largest[i])
                classes.append(types[i])
                if mode == "all" and cfg.scope == "region":    # "frame": the same embedding, kept once
                    examples += others[i]
                    classes += [types[i]] * len(others[i])
            classifier = DefectTypeClassifier(config=cfg)
            classifier.add_many(examples, classes)
            test = [i for i in range(len(types)) if i not in labelled]
            typed = classifier.predict_many(np.stack([largest[i] for i in test]))
            accuracy.append(float(np.mean([p.defect_class == types[i] for p, i in zip(typed, test, strict=True)])))
            parts = [(e, types[i]) for i in test for e in others[i]]
            if parts:
                typed = classifier.predict_many(np.stack([e for e, _ in parts]))
                fragments.append(float(np.mean([p.defect_class == t for p, (_, t) in zip(typed, parts, strict=True)])))
        rows[mode] = {"accuracy": float(np.mean(accuracy)), "per_draw": accuracy,
                      "fragments": float(np.mean(fragments)) if fragments else None}
    return {"category": category, "defect_images": len(types), "pixel_threshold": thr,
            "regions_per_image": float(np.mean([1 + len(o) for o in others])), "modes": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--cache", type=Path, required=True, help="the --cache of `inspector evaluate --types`")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated names")
    p.add_argument("--seeds", default="0-19", help="draws, e.g. 0-4 or 0-19")
    p.add_argument("--scope", choices=("frame", "region"), default=DefectTypeConfig().scope,
                   help="DefectTypeConfig.scope: a frame's regions described together, or each on its own")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args(argv)
    seeds = _seeds(args.seeds)
    start = time.perf_counter()
    results = []
    for category in args.categories.split(","):
        result = category_run(args.data, args.cache, category, seeds, config=DefectTypeConfig(scope=args.scope))
        results.append(result)
        cells = "  ".join(f"{m}: largest {r['accuracy']:.3f}, fragments "
                          f"{r['fragments']:.3f}" if r["fragments"] is not None else f"{m}: {r['accuracy']:.3f}"
                          for m, r in result["modes"].items())
        print(f"{category} ({result['regions_per_image']:.1f} regions per image): {cells}", flush=True)
    means = {m: {key: float(np.mean([r["modes"][m][key] for r in results if r["modes"][m][key] is not None]))
                 for key in ("accuracy", "fragments")} for m in MODES}
    print("mean: " + "  ".join(f"{m}: largest {v['accuracy']:.3f}, fragments {v['fragments']:.3f}"
                               for m, v in means.items()))
    write_typing_result(args.json, "type_labels", argv, seeds=seeds,
                        classifier=f"DefectTypeConfig(scope={args.scope!r})", start=start, categories=results,
                        mean=means)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
