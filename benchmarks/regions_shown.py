"""Which regions a flagged frame shows: every region at the pixel threshold, or those whose peak reaches the peak.

A station draws the defect regions of every REVIEW or FAIL frame (connected areas of the anomaly map at or above the
calibrated pixel threshold). The pixel threshold is the 99.9th percentile of the good leave-one-out maps, so each
good map keeps a few pixels above it, and a flagged frame showed its defect among three to four other boxes.
Since ``Thresholds.region_peak`` the station shows a region when its peak reaches the highest value of any good
map (the frame's strongest always: ``models.regions.shown_count``); the pixel threshold still gives each shown
region its extent. This benchmark measures both on the test frames that the calibrated thresholds flag:

* ``per_defect``: regions shown per flagged defective frame;
* ``precision``: the share of those regions whose box touches the defect's mask;
* ``defect_found``: flagged defective frames with at least one shown region on the defect;
* ``largest_on_defect``: flagged defective frames whose largest shown region is on the defect (what the typer of
  issue 16 describes first);
* ``per_good``: regions shown per flagged good frame;
* ``coverage``: the share of the defect's mask pixels inside the shown regions' boxes (flagged defective frames);
* ``tightness``: the share of the shown boxes' pixels on the defect's mask (flagged defective frames): a box that
  touches the defect (``precision``) may still be mostly beside it.

``--pixel-quantile`` sets the calibration's pixel quantile (the regions' extent; 0.999 as the product).

Regions as the station finds them (``find_regions``: 8-connectivity, fragments within one feature patch merged,
the recipe's default minimum area). Scored from the feature cache (``benchmarks._features``), detector as taught by
``--config`` (JSON options of ``PatchKNNConfig``)::

    python -m benchmarks.regions_shown --data ../shared/data --categories mvtec_transistor --seeds 0,1,2 \\
        --config '{"whitening": true}' --cache-dir CACHE --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from inspector.recipe import Recipe  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.regions import find_regions, patch_gap_px, shown_count  # noqa: E402

MIN_AREA_PX: Final = Recipe.min_defect_area_px   # a recipe's default minimum region area


@dataclass(frozen=True)
class FrameRegions:
    """One test frame: its label and score, and its regions (highest peak first) with whether each is on the defect."""

    label: int                          # 1 defective, 0 good
    score: float
    peaks: tuple[float, ...]
    areas: tuple[int, ...]
    on_defect: tuple[bool, ...]
    covered: tuple[float, ...] = ()     # the share of the mask inside the first 1, 2, ... regions' boxes
    tight: tuple[float, ...] = ()       # the share of those boxes' pixels on the mask


def frame_regions(anomaly_map: np.ndarray, mask: np.ndarray | None, *, label: int, score: float, pixel: float,
                  shorter_side: int, min_area_px: int = MIN_AREA_PX) -> FrameRegions:
    """The frame's regions as a station finds them (``inspector.station.Station._regions``), each checked against
    the defect mask (its box touches the mask; None: a good frame)."""
    regions = find_regions(anomaly_map, pixel_threshold=pixel, min_area_px=min_area_px,
                           merge_gap_px=patch_gap_px(anomaly_map.shape, shorter_side))
    on = tuple(bool(mask is not None and mask[r.y : r.y + r.height, r.x : r.x + r.width].any()) for r in regions)
    covered: list[float] = []
    tight: list[float] = []
    if mask is not None and mask.any():
        boxes = np.zeros(mask.shape, bool)
        for r in regions:
            boxes[r.y : r.y + r.height, r.x : r.x + r.width] = True
            covered.append(float((boxes & mask).sum() / mask.sum()))
            tight.append(float((boxes & mask).sum() / boxes.sum()))
    return FrameRegions(label=label, score=score, peaks=tuple(r.max_score for r in regions),
                        areas=tuple(r.area_px for r in regions), on_defect=on, covered=tuple(covered),
                        tight=tuple(tight))


def region_stats(frames: Sequence[FrameRegions], *, review: float, region_peak: float | None) -> dict[str, float]:
    """The shares in the module docstring over the frames at or above ``review``, with the regions shown at
    ``region_peak`` (None: every region)."""
    flagged = [f for f in frames if f.score >= review]
    defects = [f for f in flagged if f.label]
    goods = [f for f in flagged if not f.label]
    shown, on, found, largest = 0, 0, 0, 0
    coverage: list[float] = []
    tightness: list[float] = []
    for f in defects:
        n = shown_count(f.peaks, region_peak)
        if f.covered:
            coverage.append(f.covered[n - 1] if n else 0.0)
            if n:
                tightness.append(f.tight[n - 1])
        shown += n
        on += sum(f.on_defect[:n])
        found += any(f.on_defect[:n])
        if n:
            largest += f.on_defect[int(np.argmax(f.areas[:n]))]
    good_regions = sum(shown_count(f.peaks, region_peak) for f in goods)
    return {"flagged_defects": len(defects), "flagged_goods": len(goods),
            "per_defect": shown / len(defects) if defects else float("nan"),
            "precision": on / shown if shown else float("nan"),
            "defect_found": found / len(defects) if defects else float("nan"),
            "largest_on_defect": largest / len(defects) if defects else float("nan"),
            "per_good": good_regions / len(goods) if goods else float("nan"),
            "coverage": float(np.mean(coverage)) if coverage else float("nan"),
            "tightness": float(np.mean(tightness)) if tightness else float("nan")}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    parser.add_argument("--categories", required=True, help="comma-separated category folder names")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the good shots")
    parser.add_argument("--shots", type=int, default=16, help="good training images")
    parser.add_argument("--pixel-quantile", type=float, default=0.999,
                        help="the calibration's pixel quantile (models.calibration.calibrate; 0.999 as the product)")
    parser.add_argument("--config", default="{}", help="PatchKNNConfig options as JSON (the teach step's choice)")
    parser.add_argument("--cache-dir", type=Path, required=True, help="the feature cache (benchmarks._features)")
    parser.add_argument("--weights", default=None, help="DINOv2 weights file (default: models.weights resolution)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks._features import CachedBackbone, open_store
    from models.calibration import calibrate
    from models.detectors import PatchKNN, PatchKNNConfig
    from models.evaluation import load_category, load_image_rgb, load_mask, select_shots

    args = _parse_args(argv)
    options = json.loads(args.config)
    store, resolved = open_store(args.cache_dir, args.weights)
    rows: list[dict[str, Any]] = []
    for name in [c.strip() for c in args.categories.split(",") if c.strip()]:
        category = load_category(args.data / name)
        for seed in [int(s) for s in args.seeds.split(",")]:
            start = time.perf_counter()
            config = PatchKNNConfig.from_dict(options)
            detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=config)
            detector.fit([load_image_rgb(p) for p in select_shots(category.train_good, args.shots, seed=seed)])
            thresholds = calibrate(detector.train_scores, good_maps=detector.train_maps,
                                   pixel_quantile=args.pixel_quantile)
            frames = []
            for item in category.test:
                image = load_image_rgb(item.path)
                detection = detector.predict(image[None])
                mask = None
                if item.label:
                    mask = (load_mask(item.mask_path, image.shape[:2]) if item.mask_path
                            else np.zeros(image.shape[:2], bool))
                frames.append(frame_regions(np.asarray(detection.anomaly_map[0]), mask, label=item.label,
                                            score=float(detection.pred_score[0]), pixel=thresholds.pixel,
                                            shorter_side=config.shorter_side))
            row = {"category": name, "seed": seed, "shots": args.shots, "config": options,
                   "pixel_quantile": args.pixel_quantile,
                   "pixel": thresholds.pixel, "region_peak": thresholds.region_peak, "review": thresholds.review,
                   "every": region_stats(frames, review=thresholds.review, region_peak=None),
                   "shown": region_stats(frames, review=thresholds.review, region_peak=thresholds.region_peak),
                   "seconds": time.perf_counter() - start}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("category", "seed", "every", "shown")}), flush=True)
    if args.json is not None:
        out = {"command": "python -m benchmarks.regions_shown " + " ".join(sys.argv[1:] if argv is None else argv),
               "weights": asdict(resolved.info), "rows": rows}
        atomic_write(args.json, json.dumps(out, indent=1, default=str).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
