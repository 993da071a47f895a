"""Sweep defect-typing descriptors that add a region crop re-embedded at a higher resolution.

Reads the regions ``benchmarks/type_variants.py`` loads (the product's descriptor at 448 px) and the
crops ``benchmarks/type_crops.py`` embedded (the region's square crop at ``--size`` px, blocks 6, 8,
10, 12; the region's weights on the crop grid; its colour statistics), for the largest region and
for the highest-scoring one. Each variant is scored with ``type_variants.run`` (the product's draw,
top-1 with "unknown" wrong, each type held out in turn for the novel -> unknown share).

A crop descriptor pools the crop's patches inside the region (anomaly-weighted mean and maximum, as
the product) of the block features and/or of each patch minus its nearest crop patch outside the
region ("bg": what differs from its own surroundings, at the crop's scale).

Usage:
    python -m benchmarks.type_crop_variants --features FEAT --size 224 --seeds 100-119 --json OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.type_variants import Item, _seeds, _unit, describe, load_category, run  # noqa: E402
from models.defect_types import region_colour, region_weights  # noqa: E402
from models.evaluation import load_category as eval_load_category  # noqa: E402
from models.evaluation import load_image_rgb  # noqa: E402
from models.preprocess import frame_to_grid  # noqa: E402
from models.type_evaluation import largest_region_box  # noqa: E402

CROP_BLOCKS = (6, 8, 10, 12)   # what type_crops.py keeps, in this order
KEPT = {"blocks": (8,), "sources": ("feat", "resid"), "pool": "mean+max", "classifier": "knn2", "centre": True}


def _crop_region(tokens: np.ndarray, grid: np.ndarray) -> dict[str, Any]:
    """Per kept block: the region's unit patch features and their residual to the nearest outside patch."""
    mask = grid > 0
    outside = ~mask
    feats, bg = {}, {}
    for i, b in enumerate(CROP_BLOCKS):
        unit = _unit(tokens[:, :, i, :].astype(np.float32))
        f = unit[mask]
        if outside.any():
            ref = unit[outside]
            bg[b] = f - ref[np.argmax(f @ ref.T, axis=1)]
        else:
            bg[b] = np.zeros_like(f)
        feats[b] = f
    return {"weights": grid[mask], "feats": feats, "bg": bg}


def _region_448(folder: Path, name: str, box: np.ndarray, threshold: float, shorter: int,
                banks: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The 448-px region features of another box (the peak region), as type_variants.load_category."""
    with np.load(folder / f"{name}.npz") as data:
        tokens = data["tokens"].astype(np.float32)
        amap = data["anomaly_map"].astype(np.float32)
    bx, by, bw, bh = (int(v) for v in box)
    weights = region_weights(amap, box=(bx, by, bw, bh), pixel_threshold=threshold)
    h, w = tokens.shape[:2]
    grid = frame_to_grid(weights, (h, w), shorter_side=shorter)
    if not np.any(grid > 0):
        ys, xs = np.nonzero(weights)
        grid = np.zeros((h, w), np.float32)
        grid[min(h - 1, int(ys.mean() / weights.shape[0] * h)), min(w - 1, int(xs.mean() / weights.shape[1] * w))] = 1
    mask = grid > 0
    feats, resid = {}, {}
    for b in (8,):
        unit = _unit(tokens[:, :, b - 1, :])
        f = unit[mask]
        feats[b], resid[b] = f, f - banks[b][np.argmax(f @ banks[b].T, axis=1)]
    return grid[mask], feats, resid


def _colour(folder: Path, name: str, meta: dict[str, Any], paths: dict[str, Path]) -> np.ndarray:
    """``region_colour`` of the largest region (as type_crops.py computes it), from the frame and the map."""
    with np.load(folder / f"{name}.npz") as data:
        amap = data["anomaly_map"].astype(np.float32)
    box, threshold, _ = largest_region_box(amap, float(meta["pixel_threshold"]))
    return region_colour(load_image_rgb(paths[name]), region_weights(amap, box=box, pixel_threshold=threshold))


def attach(folder: Path, items: list[Item], size: int, *, data_root: Path | None = None,
           colour_only: bool = False) -> tuple[list[Item], list[Item]]:
    """(items with ``extra['crop']``, the same for the peak region: 448 features and crop of that region).

    With ``colour_only``, every item gets only ``extra['colour']`` (computed here; no crop needed) and
    the peak list is empty.
    """
    meta = json.loads((folder / "meta.json").read_text())
    paths: dict[str, Path] = {}
    if colour_only:
        if data_root is None:
            msg = "--colour-only needs --data (the category's images)"
            raise SystemExit(msg)
        category = eval_load_category(data_root / folder.name)
        paths = {f"{t.defect_type}__{t.path.stem}": t.path for t in category.test if t.label == 1}
    banks = None
    largest, peak = [], []
    for item, entry in zip(items, meta["items"], strict=True):
        path = folder / f"{entry['name']}.crop{size}.npz"
        if colour_only:               # no crop: the colour statistics from the frame and the map alone
            largest.append(dataclasses.replace(item, extra={"colour": _colour(folder, entry["name"], meta, paths)}))
            continue
        if not path.is_file():        # a crop extraction still under way: the images done so far (a seeded subset)
            continue
        with np.load(path) as data:
            crop = {k: data[k] for k in data.files}
        extra = {"crop": _crop_region(crop["largest_tokens"], crop["largest_grid"]), "colour": crop["largest_colour"]}
        largest.append(dataclasses.replace(item, extra=extra))
        if "peak_tokens" not in crop:
            peak.append(largest[-1])
            continue
        if banks is None:
            train = [np.load(p).astype(np.float32) for p in sorted(folder.glob("train_*.npy"))]
            banks = {8: np.concatenate([_unit(t[:, :, 7, :]).reshape(-1, t.shape[-1]) for t in train])}
        w, f, r = _region_448(folder, entry["name"], crop["peak_box"], float(crop["threshold"]),
                              int(meta["shorter_side"]), banks)
        peak.append(dataclasses.replace(
            item, weights=w, feats={**item.feats, **f}, resid={**item.resid, **r},
            extra={"crop": _crop_region(crop["peak_tokens"], crop["peak_grid"]), "colour": crop["peak_colour"]}))
    if data_root is not None:        # the product's order (models.type_evaluation): its draws label the same images
        order = _product_order(data_root / folder.name, meta)
        names = [e["name"] for e in meta["items"]]
        kept = [n for n in names if colour_only or (folder / f"{n}.crop{size}.npz").is_file()]
        rank = sorted(range(len(kept)), key=lambda i: order[kept[i]])
        largest = [largest[i] for i in rank]
        peak = [peak[i] for i in rank] if len(peak) == len(largest) else peak
    return largest, peak


def _product_order(category_root: Path, meta: dict[str, Any]) -> dict[str, int]:
    """Image name -> its position in ``models.type_evaluation``'s list (the test folder's order)."""
    category = eval_load_category(category_root)
    names = [f"{t.defect_type}__{t.path.stem}" for t in category.test if t.label == 1]
    return {n: i for i, n in enumerate(names)}


def crop_vector(item: Item, spec: dict[str, Any]) -> np.ndarray:
    """The crop part of a descriptor: per block and source, the weighted mean and the maximum."""
    c = item.extra["crop"]
    w = c["weights"] / c["weights"].sum()
    parts = []
    for b in spec["blocks"]:
        for source in spec.get("sources", ("feat",)):
            x = c["feats"][b] if source == "feat" else c["bg"][b]
            parts.append(_unit(w @ x))
            if spec.get("pool", "mean+max") == "mean+max":
                parts.append(_unit(x.max(axis=0)))
    return _unit(np.concatenate(parts))


def fused_items(items: list[Item], spec: dict[str, Any]) -> list[Item]:
    """Items whose ``feats[0]`` holds the fused descriptor (448 part, crop part, colour part)."""
    out = []
    colour = np.stack([it.extra["colour"] for it in items])
    for it, col in zip(items, colour, strict=True):
        parts = []
        if spec.get("base_weight", 1.0) > 0:
            parts.append(spec.get("base_weight", 1.0) * describe(it, KEPT))
        if spec.get("crop"):
            parts.append(spec["crop_weight"] * crop_vector(it, spec["crop"]))
        vec = _unit(np.concatenate(parts))
        out.append(dataclasses.replace(it, feats={0: vec[None]}, resid={}, weights=np.ones(1, np.float32),
                                       shape=col if spec.get("colour") else it.shape))
    return out


def score(items: list[Item], spec: dict[str, Any], seeds: list[int], novel: bool) -> dict[str, Any]:
    fused = fused_items(items, spec)
    run_spec: dict[str, Any] = {"blocks": (0,), "classifier": "knn2", "centre": True, "pool": "mean",
                                "weighting": "anomaly", "reject_factor": 1.25, "reject_quantile": 1.0}
    if spec.get("colour") or spec.get("shape"):
        run_spec["shape_weight"] = spec.get("colour") or spec.get("shape")
    return run(fused, run_spec, n_labelled=5, seeds=seeds, novel=novel)


def grid(size: int) -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {"kept (448 only)": {}}
    for blocks in [(8,), (10,), (12,), (8, 12)]:
        for sources in [("feat",), ("bg",), ("feat", "bg")]:
            crop = {"blocks": blocks, "sources": sources}
            tag = f"crop{size} b{'+'.join(map(str, blocks))} {'+'.join(sources)}"
            v[f"{tag} only"] = {"base_weight": 0.0, "crop": crop, "crop_weight": 1.0}
            v[f"448 + {tag}"] = {"crop": crop, "crop_weight": 1.0}
    return v


def grid2(size: int) -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {"kept (448 only)": {}}
    for lam in (0.1, 0.2, 0.4, 0.8):
        v[f"448 + colour {lam}"] = {"colour": lam}
        v[f"448 + shape {lam}"] = {"shape": lam}
    return v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--categories", default="mvtec_transistor,visa_fryum,mtd_magnetic_tile")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seeds", default="100-119")
    p.add_argument("--grid", default="crop", choices=["crop", "colour", "final"])
    p.add_argument("--region", default="largest", choices=["largest", "peak", "both"])
    p.add_argument("--novel", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated variant names of the grid to run")
    p.add_argument("--colour-only", action="store_true",
                   help="no crops: the region's colour statistics only (grid colour), on every extracted image")
    p.add_argument("--data", type=Path, default=None,
                   help="the folder holding the categories: the images for --colour-only, and the "
                        "product's image order (so that a draw labels the same images as inspector evaluate)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    seeds = _seeds(args.seeds)
    data: dict[str, tuple[list[Item], list[Item]]] = {}
    for cat in args.categories.split(","):
        folder = args.features / cat
        start = time.perf_counter()
        pickled = folder / "items.pkl"      # type_variants' own cache of the loaded regions (benchmark only)
        n_items = len(json.loads((folder / "meta.json").read_text())["items"])
        items = pickle.loads(pickled.read_bytes()) if pickled.is_file() else None
        if items is None or len(items) != n_items:
            items = load_category(folder)[1]
            pickled.write_bytes(pickle.dumps(items))
        data[cat] = attach(folder, items, args.size, data_root=args.data, colour_only=args.colour_only)
        print(f"loaded {cat}: {len(data[cat][0])} of {len(items)} regions loaded, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    variants = {"crop": grid, "colour": grid2, "final": final}[args.grid](args.size)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    regions = ["largest", "peak"] if args.region == "both" else [args.region]
    if args.colour_only and (args.grid != "colour" or regions != ["largest"]):
        p.error("--colour-only runs --grid colour on the largest region only")
    results = []
    for region in regions:
        for name, spec in variants.items():
            row: dict[str, Any] = {"variant": name, "region": region, "spec": json.loads(json.dumps(spec))}
            for cat, (largest, peak) in data.items():
                row[cat] = score(largest if region == "largest" else peak, spec, seeds, args.novel)
            row["mean"] = float(np.mean([row[c]["accuracy"] for c in data]))
            cells = "  ".join(f"{c[:10]} {row[c]['accuracy']:.3f}/u{row[c]['unknown_share']:.2f}"
                              + (f"/n{row[c]['novel_unknown_share']:.2f}" if row[c]["novel_unknown_share"] is not None
                                 else "") for c in data)
            print(f"{row['mean']:.3f}  {cells}  [{region}] {name}", flush=True)
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "n_labelled": 5, "size": args.size, "results": results},
                                        indent=1))
    return 0


def final(size: int) -> dict[str, dict[str, Any]]:
    feat = {"blocks": (8,), "sources": ("feat",)}
    both = {"blocks": (8,), "sources": ("feat", "bg")}
    v: dict[str, dict[str, Any]] = {"kept (448 only)": {}}
    for lam in (0.2, 0.4, 0.8):
        v[f"448 + colour {lam}"] = {"colour": lam}
    v[f"448 + crop{size} b8 feat"] = {"crop": feat, "crop_weight": 1.0}
    v[f"448 + crop{size} b8 feat+bg"] = {"crop": both, "crop_weight": 1.0}
    v[f"448 + 0.5 crop{size} b8 feat+bg"] = {"crop": both, "crop_weight": 0.5}
    for lam in (0.2, 0.4):
        v[f"448 + crop{size} b8 feat + colour {lam}"] = {"crop": feat, "crop_weight": 1.0, "colour": lam}
        v[f"448 + crop{size} b8 feat+bg + colour {lam}"] = {"crop": both, "crop_weight": 1.0, "colour": lam}
    return v


if __name__ == "__main__":
    raise SystemExit(main())
