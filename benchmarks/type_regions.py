"""Which region the typer describes: the detector's largest region against the ground-truth mask.

Reads the features and anomaly maps that ``inspector evaluate DATA/CAT --types 5 --cache CACHE`` keeps
(one folder per category: ``meta.json``, ``bank.npy`` and one ``.npz`` per defect image), builds the
product's region embedding (``models.defect_types.region_embedding`` with the residual to the good bank
and the colour statistics; without the crop part, ``crop_side=0``: this diagnosis was made before the
crop pass joined the product) over several choices of region, and scores
each with the product's draw (5 labelled images per type, top-1, "unknown" counted wrong):

- ``largest``: the product's region (``largest_region_box`` at the calibrated pixel threshold);
- ``oracle``: the largest connected part of the ground-truth mask, weighted by the anomaly map as the
  product weights its regions; an upper bound for any region rule with today's descriptor;
- ``core``: the largest region's pixels above the threshold plus a share of its peak height;
- ``excess``: the largest region weighted by its score above the threshold, not the score;
- ``mass``: the region with the most score above the threshold instead of the largest;
- ``high``: the largest region at a threshold raised by a share of the map's maximum;
- ``union``: every pixel at the threshold, all regions together (``excess``: weighted by the score above it);
- ``soft``: the whole map weighted by its score above a share of the threshold (no region).

It also says how often the largest region touches the defect at all (``hit``: any pixel of it on the
mask) and which share of its pixels lie on the mask (``precision``), per defect type.

Usage:
    python -m benchmarks.type_regions --data DATA --cache CACHE --seeds 0-4 --json OUT.json
    # a cache that `inspector evaluate --types 5 --type-max-images 12 --seed 2` wrote: its images were chosen
    # with seed 2 (or its --type-draw-seed)
    python -m benchmarks.type_regions --data DATA --cache CACHE2 --seeds 2-21 --subset-seed 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.type_variants import _seeds  # noqa: E402
from models.defect_types import (  # noqa: E402
    COLOUR_DIMS,
    DefectTypeClassifier,
    DefectTypeConfig,
    nearest_good_patches,
    region_colour,
    region_crop_box,
    region_embedding,
    region_weights,
)
from models.evaluation import TestItem, load_category, load_image_rgb  # noqa: E402
from models.regions import find_regions  # noqa: E402
from models.type_evaluation import _at_most, labelled_draw, largest_region_weights  # noqa: E402

CATEGORIES = {"mvtec_transistor": None, "visa_fryum": None, "mtd_magnetic_tile": 12}   # name -> max per type
N_LABELLED = 5
# the descriptor this diagnosis measured: no crop part, each region on its own
FRAME_ONLY = DefectTypeConfig(crop_side=0, scope="region")

Weights = Callable[[np.ndarray, float, np.ndarray], np.ndarray]


def _largest(amap: np.ndarray, thr: float, _gt: np.ndarray) -> np.ndarray:
    return largest_region_weights(amap, thr)[0]


def _oracle(amap: np.ndarray, _thr: float, gt: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(gt.astype(np.uint8))
    if n < 2:
        msg = "a defect image whose mask is empty"
        raise ValueError(msg)
    part = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(part, np.maximum(amap, 1e-6), 0.0).astype(np.float32)


def _core(share: float) -> Weights:
    def weights(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
        weights, t, _ = largest_region_weights(amap, thr)   # t: below thr where no pixel reached it
        inside = weights > 0
        level = t + share * (float(amap[inside].max()) - t)
        keep = inside & (amap >= level)
        return np.where(keep, amap - level + 1e-6, 0.0).astype(np.float32)
    return weights


def _excess(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
    weights, t, _ = largest_region_weights(amap, thr)
    inside = weights > 0
    return np.where(inside, np.maximum(amap - t, 0.0) + 1e-6, 0.0).astype(np.float32)


def _mass(amap: np.ndarray, thr: float, _gt: np.ndarray) -> np.ndarray:
    regions = find_regions(amap, pixel_threshold=thr)
    if not regions:
        return _largest(amap, thr, _gt)

    def excess(r: Any) -> float:
        return float(np.clip(amap[r.y:r.y + r.height, r.x:r.x + r.width] - thr, 0.0, None).sum())
    best = max(regions, key=excess)
    return region_weights(amap, box=(best.x, best.y, best.width, best.height), pixel_threshold=thr)


def _high(share: float) -> Weights:
    def weights(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
        return _largest(amap, thr + share * max(0.0, float(amap.max()) - thr), gt)
    return weights


def _union(excess: bool) -> Weights:
    """Every region at the threshold together (the frame's defect, however many parts it fell into)."""
    def weights(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
        above = amap >= thr
        if not above.any():
            return _largest(amap, thr, gt)          # the product's fallback: the map's top 1 %
        values = amap - thr + 1e-6 if excess else np.maximum(amap, 1e-6)
        return np.where(above, values, 0.0).astype(np.float32)
    return weights


def _strong(share: float) -> Weights:
    """``union`` of the regions whose peak rises at least ``share`` of the way from the threshold to the
    map's maximum (weak fragments, often false alarms at the part's edge, left out)."""
    def weights(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
        above = amap >= thr
        if not above.any():
            return _largest(amap, thr, gt)
        n, labels = cv2.connectedComponents(above.astype(np.uint8))
        peaks = np.zeros(n, np.float32)
        np.maximum.at(peaks, labels.ravel().astype(np.intp), amap.ravel())
        level = thr + share * (float(amap.max()) - thr)
        strong = np.nonzero(peaks >= level)[0]
        keep = np.isin(labels, strong[strong > 0])
        return np.where(keep, np.maximum(amap, 1e-6), 0.0).astype(np.float32)
    return weights


def _soft(share: float) -> Weights:
    """The whole map, weighted by its excess over ``share`` x the threshold (no region at all)."""
    def weights(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
        level = min(share * thr, float(np.quantile(amap, 0.99)))
        return np.where(amap > level, amap - level + 1e-6, 0.0).astype(np.float32)
    return weights


def _hysteresis(share: float) -> Weights:
    """The parts of the map above ``share`` x the threshold that hold the largest region's pixels."""
    def weights(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
        seed_weights, t, _ = largest_region_weights(amap, thr)
        level = min(share * t, float(np.quantile(amap, 0.99)))
        n, labels = cv2.connectedComponents((amap > level).astype(np.uint8))
        touched = np.unique(labels[(seed_weights > 0) & (labels > 0)])
        keep = np.isin(labels, touched) | (seed_weights > 0)
        return np.where(keep, np.maximum(amap - level, 0.0) + 1e-6, 0.0).astype(np.float32)
    return weights


def _window(share: float) -> Weights:
    """``soft`` inside the largest region's crop window (``region_crop_box``) only."""
    def weights(amap: np.ndarray, thr: float, gt: np.ndarray) -> np.ndarray:
        seed_weights, t, _ = largest_region_weights(amap, thr)
        ys, xs = np.nonzero(seed_weights)
        box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        x0, y0, side = region_crop_box(box, amap.shape[:2])
        soft = _soft(share)(amap, thr, gt)
        out = np.zeros_like(soft)
        out[y0:y0 + side, x0:x0 + side] = soft[y0:y0 + side, x0:x0 + side]
        return out if out.any() else seed_weights
    return weights


VARIANTS: dict[str, Weights] = {
    "largest": _largest, "oracle": _oracle, "core 0.25": _core(0.25), "core 0.5": _core(0.5),
    "excess": _excess, "mass": _mass, "high 0.25": _high(0.25), "high 0.5": _high(0.5),
    "union": _union(excess=False), "union excess": _union(excess=True), "strong 0.25": _strong(0.25),
    "strong 0.5": _strong(0.5), "soft 1.0": _soft(1.0),
    "soft 0.75": _soft(0.75), "soft 0.5": _soft(0.5), "soft 0.25": _soft(0.25),
    "hysteresis 0.5": _hysteresis(0.5), "hysteresis 0.75": _hysteresis(0.75), "window 0.5": _window(0.5),
}


# a region described together with its frame: the region's feature part joined to the frame's (each
# unit, then the whole), the region's colour statistics after them
JOINED: dict[str, tuple[str, str]] = {"largest + soft 0.5": ("largest", "soft 0.5"),
                                      "largest + union": ("largest", "union")}


def _joined(region: np.ndarray, frame: np.ndarray) -> np.ndarray:
    features = np.concatenate([region[:-COLOUR_DIMS], frame[:-COLOUR_DIMS]])
    return np.concatenate([features / np.linalg.norm(features), region[-COLOUR_DIMS:]]).astype(np.float32)


def _cache_folder(cache: Path, category: str) -> Path:
    found = sorted(p for p in cache.glob(f"{category}-*") if (p / "meta.json").is_file())
    if len(found) != 1:
        msg = (f"{cache}: expected one typing cache folder of {category}, found {len(found)}; run "
               f"`inspector evaluate DATA/{category} --types 5 --cache {cache}` first (or pass another --cache)")
        raise SystemExit(msg)
    return found[0]


def _mask(item: TestItem, shape: tuple[int, ...]) -> np.ndarray:
    if item.mask_path is None:
        msg = f"{item.path}: a defect image without a ground-truth mask"
        raise SystemExit(msg)
    mask = cv2.imread(str(item.mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        msg = f"{item.mask_path}: not a readable image"
        raise SystemExit(msg)
    return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


class TypingCache(NamedTuple):
    """What ``inspector evaluate --types --cache`` kept for one category, and its defect images."""

    folder: Path
    pixel_threshold: float
    shorter_side: int
    nearest_good: Callable[[np.ndarray], np.ndarray]   # the good bank's lookup (``nearest_good_patches``)
    defects: list[TestItem]                            # in the product's order and choice


def load_typing_cache(data: Path, cache: Path, category: str, *, subset_seed: int = 0) -> TypingCache:
    """The cache folder of ``category`` with its threshold, side and good bank, and its defect images: all of them,
    or for a category capped in ``CATEGORIES`` the ones `--type-max-images` chose with ``subset_seed`` (the
    evaluate run's ``--type-draw-seed``, else its ``--seed``).

    Raises:
        SystemExit: no single cache folder of the category, or an image of the choice is not in it.
    """
    folder = _cache_folder(cache, category)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    nearest_good = nearest_good_patches(np.load(folder / "bank.npy", allow_pickle=False).astype(np.float32))
    defects = [t for t in load_category(data / category).test if t.label == 1]
    at_most = CATEGORIES.get(category)
    if at_most is not None:
        defects = _at_most(defects, at_most, seed=subset_seed)      # as `--type-max-images 12` chooses
    missing = [t for t in defects if not _cached(folder, t).is_file()]
    if missing:
        capped = f" (the {at_most} per type that seed {subset_seed} chooses: --subset-seed)" if at_most else ""
        msg = (f"{folder}: {len(missing)} of the {len(defects)} defect images{capped} are not cached, e.g. "
               f"{_cached(folder, missing[0]).name}; run `inspector evaluate DATA/{category} --types 5 "
               f"--cache {cache}` on them first")
        raise SystemExit(msg)
    return TypingCache(folder, float(meta["pixel_threshold"]), int(meta["shorter_side"]), nearest_good, defects)


def _cached(folder: Path, item: TestItem) -> Path:
    return folder / f"{item.defect_type}__{item.path.stem}.npz"


def category_run(data: Path, cache: Path, category: str, seeds: list[int], *,
                 n_labelled: int = N_LABELLED, subset_seed: int = 0) -> dict[str, Any]:
    folder, thr, side, nearest_good, defects = load_typing_cache(data, cache, category, subset_seed=subset_seed)
    types: list[str] = []
    embeddings: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
    hit, precision = [], []
    for item in defects:
        with np.load(_cached(folder, item), allow_pickle=False) as npz:
            features, amap = npz["features"].astype(np.float32), npz["anomaly_map"].astype(np.float32)
        image = load_image_rgb(item.path)
        gt = _mask(item, amap.shape)
        types.append(item.defect_type)
        for name, weights_of in VARIANTS.items():
            w = weights_of(amap, thr, gt)
            embeddings[name].append(region_embedding(features, w, shorter_side=side, nearest_good=nearest_good,
                                                     colour=region_colour(image, w)))
            if name == "largest":
                on = w > 0
                hit.append(bool((on & gt).any()))
                precision.append(float((on & gt).sum() / max(1, on.sum())))
    for name, (region, frame) in JOINED.items():
        embeddings[name] = [_joined(a, b) for a, b in zip(embeddings[region], embeddings[frame], strict=True)]
    names = sorted(set(types))
    rows: dict[str, Any] = {}
    for name, vectors in embeddings.items():
        per_draw = []
        for seed in seeds:
            labelled = labelled_draw(types, n_labelled, seed)
            classifier = DefectTypeClassifier(config=FRAME_ONLY)
            classifier.add_many([vectors[i] for i in sorted(labelled)], [types[i] for i in sorted(labelled)])
            test = [i for i in range(len(vectors)) if i not in labelled]
            predicted = classifier.predict_many(np.stack([vectors[i] for i in test]))
            per_draw.append(float(np.mean([p.defect_class == types[i] for p, i in zip(predicted, test, strict=True)])))
        rows[name] = {"accuracy": float(np.mean(per_draw)), "per_draw": per_draw}
    return {
        "category": category, "defect_images": len(types), "pixel_threshold": thr,
        "largest_hits_defect": float(np.mean(hit)), "largest_precision": float(np.mean(precision)),
        "hit_per_type": {t: float(np.mean([h for h, x in zip(hit, types, strict=True) if x == t])) for t in names},
        "variants": rows,
    }


def write_typing_result(path: Path | None, module: str, argv: list[str] | None, *, seeds: list[int], classifier: str,
                        start: float, categories: Any, mean: dict[str, Any]) -> None:
    """A typing benchmark's JSON at ``path`` (nothing when None): its command, draws, classifier, time, results."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "command": f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seeds": seeds, "n_labelled": N_LABELLED, "classifier": classifier,
        "wall_s": time.perf_counter() - start, "categories": categories, "mean": mean,
    }, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--cache", type=Path, required=True, help="the --cache of `inspector evaluate --types`")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated names")
    p.add_argument("--seeds", default="0-4", help="draws, e.g. 0-4 or 100-119")
    p.add_argument("--subset-seed", type=int, default=0,
                   help="the seed that chose the capped categories' images (evaluate's --type-draw-seed, else --seed)")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args(argv)
    seeds = _seeds(args.seeds)
    start = time.perf_counter()
    results = []
    for category in args.categories.split(","):
        result = category_run(args.data, args.cache, category, seeds, subset_seed=args.subset_seed)
        results.append(result)
        cells = "  ".join(f"{n} {r['accuracy']:.3f}" for n, r in result["variants"].items())
        print(f"{category}: largest region touches the defect in {result['largest_hits_defect']:.0%}; {cells}",
              flush=True)
    means = {name: float(np.mean([r["variants"][name]["accuracy"] for r in results]))
             for name in results[0]["variants"]}
    print("mean: " + "  ".join(f"{n} {v:.3f}" for n, v in means.items()))
    write_typing_result(args.json, "type_regions", argv, seeds=seeds, classifier="DefectTypeConfig(crop_side=0)",
                        start=start, categories=results, mean=means)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
