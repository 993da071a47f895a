"""Re-embed each defect region's crop at a higher resolution, for the defect-typing sweep.

Reads what ``benchmarks/type_features.py`` extracted (per defect image: the anomaly map at the frame's
size; the meta with the pixel threshold). For the region the product types (the largest at the
pixel threshold, ``models.type_evaluation.largest_region_box``) and for the region with the highest
score (``find_regions`` sorts by it), cuts a square crop of the frame around the region's box
(``models.defect_types.region_crop_box``: the box enlarged by a margin, at least a share of the
frame's shorter side), resizes it to ``--size`` px and runs the same backbone on it once (blocks
6, 8, 10 and 12 kept, fp16), with the region's weights on the crop's patch grid and the region's
colour statistics (``models.defect_types.region_colour``). One ``.npz`` per image and region under
``OUT/CAT``, next to the extraction's files. The backbone time of each crop and, every
``--time-every`` images, of the frame at the recipe's 448 px are recorded interleaved (ratios only).

Usage:
    python -m benchmarks.type_crops DATA/mvtec_transistor --features FEAT --size 224
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from inspector.recipe import DetectorSettings  # noqa: E402
from models.backbone import create_backbone  # noqa: E402
from models.defect_types import crop_weights, region_colour, region_crop_box, region_weights  # noqa: E402
from models.evaluation import load_category, load_image_rgb  # noqa: E402
from models.preprocess import to_model_input  # noqa: E402
from models.regions import find_regions  # noqa: E402
from models.type_evaluation import largest_region_box  # noqa: E402
from models.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("type_crops")
BLOCKS = (6, 8, 10, 12)   # kept per crop (the sweep reads them)


def peak_region_box(amap: np.ndarray, pixel_threshold: float) -> tuple[int, int, int, int] | None:
    """The box of the region holding the highest score (None when nothing reaches the threshold)."""
    regions = find_regions(amap, pixel_threshold=pixel_threshold)
    if not regions:
        return None
    best = regions[0]                              # find_regions sorts by max_score, highest first
    return best.x, best.y, best.width, best.height


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("category", type=Path)
    p.add_argument("--features", type=Path, required=True, help="the type_features.py --out folder")
    p.add_argument("--size", type=int, default=224, help="crop side fed to the backbone (px)")
    p.add_argument("--weights", default=None)
    p.add_argument("--time-every", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    defaults = DetectorSettings()
    resolved = resolve_weights(defaults.backbone, args.weights)
    backbone = create_backbone(defaults.backbone, state_dict=resolved.state_dict, blocks=BLOCKS)
    category = load_category(args.category)
    paths = {f"{t.defect_type}__{t.path.stem}": t.path for t in category.test if t.label == 1}
    folder = args.features / category.name
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    threshold0 = float(meta["pixel_threshold"])
    shorter = int(meta["shorter_side"])
    timing: list[dict[str, float]] = []
    start = time.perf_counter()
    for n, entry in enumerate(meta["items"]):
        name = entry["name"]
        target = folder / f"{name}.crop{args.size}.npz"
        if target.is_file():
            continue
        with np.load(folder / f"{name}.npz") as data:
            amap = data["anomaly_map"].astype(np.float32)
        frame_rgb = load_image_rgb(paths[name])
        box, threshold, _ = largest_region_box(amap, threshold0)
        peak = peak_region_box(amap, threshold) or box
        out: dict[str, Any] = {"threshold": np.float32(threshold)}
        for kind, b in (("largest", box), ("peak", peak)):
            if kind == "peak" and b == box:
                continue
            weights = region_weights(amap, box=b, pixel_threshold=threshold)
            window = region_crop_box(b, frame_rgb.shape[:2])
            x, y, s = window
            crop_rgb = np.ascontiguousarray(frame_rgb[y:y + s, x:x + s])
            tick = time.perf_counter()
            with torch.inference_mode():
                tokens = backbone(to_model_input(crop_rgb, shorter_side=args.size))[0]   # (h, w, 4 D)
            crop_s = time.perf_counter() - tick
            h, w, _ = tokens.shape
            out[f"{kind}_tokens"] = tokens.reshape(h, w, len(BLOCKS), -1).numpy().astype(np.float16)
            out[f"{kind}_grid"] = crop_weights(weights, window, (h, w))
            out[f"{kind}_colour"] = region_colour(frame_rgb, weights)
            out[f"{kind}_box"] = np.asarray(b)
            if kind == "largest":
                timing.append({"crop_s": crop_s})
        if n % args.time_every == 0:                  # the frame's own pass, interleaved, for the ratio
            tick = time.perf_counter()
            with torch.inference_mode():
                backbone(to_model_input(frame_rgb, shorter_side=shorter))
            timing[-1]["frame_s"] = time.perf_counter() - tick
        partial = target.with_suffix(".part.npz")
        np.savez(partial, **out)
        partial.replace(target)
        logger.info("%s %d/%d %s (%.0f s)", category.name, n + 1, len(meta["items"]), name,
                    time.perf_counter() - start)
    if timing:
        crop = [t["crop_s"] for t in timing]
        pairs = [(t["crop_s"], t["frame_s"]) for t in timing if "frame_s" in t]
        summary = {"category": category.name, "size": args.size, "crops": len(crop),
                   "crop_s_median": float(np.median(crop)),
                   "frame_s_median": float(np.median([f for _, f in pairs])) if pairs else None,
                   "crop_over_frame_median": float(np.median([c / f for c, f in pairs])) if pairs else None,
                   "blocks_run": max(BLOCKS), "frame_blocks_run": max(BLOCKS), "threads": 2,
                   "load_average_1min_at_end": os.getloadavg()[0]}
        (folder / f"crop{args.size}_timing.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
