"""Build ``inspector/demo_data/visa_fryum`` from the VisA fryum category (MVTec AD layout).

The demo set is small enough to ship in the package: 20 good training images, 6 good test images
and 10 defective test images (the two or so with the largest defect area per defect type, so that
the defect is visible at demo size), downscaled to 600x400 (cv2.INTER_AREA, JPEG quality 85);
masks are resized with nearest neighbour and written as 0/255 PNG.

Usage:
    python benchmarks/make_demo_set.py ../shared/data/visa_fryum inspector/demo_data/visa_fryum
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Final

import cv2
import numpy as np

from models.evaluation import load_category, load_mask, select_shots

DEMO_SIZE: Final = (600, 400)        # (W, H): VisA fryum is 3:2 (1500x1000 originally)
JPEG_QUALITY: Final = 85
N_TRAIN: Final = 20
N_TEST_GOOD: Final = 6
# defect types in the order they are picked, with how many of each (10 in all); the types whose
# defects stay visible at 600x400 come first, the subtle "similar colour spot" gets one.
PICKS: Final = (
    ("burnt", 2),
    ("different_colour_spot", 1),
    ("middle_breakage", 2),
    ("corner_or_edge_breakage", 1),
    ("fryum_stuck_together", 2),
    ("similar_colour_spot", 1),
    ("combined", 1),
)


def _write_image(src: Path, dst: Path) -> None:
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None:
        msg = f"{src}: not a readable image"
        raise SystemExit(msg)
    small = cv2.resize(image, DEMO_SIZE, interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst.with_suffix(".jpg")), small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


def _write_mask(src: Path, dst: Path) -> None:
    mask = load_mask(src)
    small = cv2.resize(mask.astype(np.uint8) * 255, DEMO_SIZE, interpolation=cv2.INTER_NEAREST)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), small)


def build(source: Path, out: Path) -> None:
    """Write the demo set from ``source`` (the full category) into ``out`` (its image folders replaced)."""
    category = load_category(source)
    for sub in ("train", "test", "ground_truth"):       # README.md (the attribution) stays
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for path in select_shots(category.train_good, N_TRAIN, seed=0):
        _write_image(path, out / "train" / "good" / path.name)
    good = [t for t in category.test if t.label == 0]
    rng = np.random.default_rng(0)
    for i in sorted(rng.choice(len(good), size=N_TEST_GOOD, replace=False).tolist()):
        _write_image(good[i].path, out / "test" / "good" / good[i].path.name)
    for defect_type, count in PICKS:
        items = [t for t in category.test if t.defect_type == defect_type]
        # largest defect area first: those stay visible after the 2.5x downscale
        items.sort(key=lambda t: -int(load_mask(t.mask_path).sum()) if t.mask_path else 0)
        for item in items[:count]:
            assert item.mask_path is not None    # defective items always have one (load_category)
            _write_image(item.path, out / "test" / defect_type / item.path.name)
            _write_mask(item.mask_path, out / "ground_truth" / defect_type / f"{item.path.stem}_mask.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the VisA fryum category in MVTec AD layout")
    parser.add_argument("out", type=Path, help="the demo folder to (re)write")
    args = parser.parse_args(argv)
    build(args.source, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
