"""benchmarks/regions_shown.py: the regions a station finds on a frame, and the shares of the flagged frames' regions
that are on the defect, with every region and with the region peak."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.regions_shown import FrameRegions, frame_regions, region_stats


def test_frame_regions_are_the_stations_and_know_which_touch_the_defect() -> None:
    amap = np.zeros((112, 112), np.float32)
    amap[10:30, 10:30] = 0.9          # the defect
    amap[80:90, 80:90] = 0.6          # a weak spot elsewhere
    amap[60:62, 10:12] = 0.7          # 4 px: below the recipe's minimum area
    mask = np.zeros_like(amap, bool)
    mask[15:25, 15:25] = True
    frame = frame_regions(amap, mask, label=1, score=0.5, pixel=0.5, shorter_side=112)
    assert frame.peaks == pytest.approx((0.9, 0.6)) and frame.areas == (400, 100)
    assert frame.on_defect == (True, False)
    assert frame.covered == (1.0, 1.0)                # the defect's box holds the whole mask
    assert frame.tight == pytest.approx((100 / 400, 100 / 500))   # a quarter of its box is on the mask; then the spot
    good = frame_regions(amap, None, label=0, score=0.1, pixel=0.5, shorter_side=112)
    assert good.on_defect == (False, False)


def test_region_stats_count_the_flagged_frames_regions_shown_at_the_peak() -> None:
    frames = [
        # a defect shown beside a weak spot: the spot's peak is below the region peak
        FrameRegions(label=1, score=0.9, peaks=(0.9, 0.5), areas=(100, 300), on_defect=(True, False),
                     covered=(0.8, 0.8), tight=(0.6, 0.3)),
        # a defect that is weaker than a spot: only the strongest (the spot) is shown at the peak
        FrameRegions(label=1, score=0.8, peaks=(0.6, 0.55), areas=(50, 80), on_defect=(False, True),
                     covered=(0.0, 0.5), tight=(0.0, 0.2)),
        # not flagged: left out
        FrameRegions(label=1, score=0.1, peaks=(0.9,), areas=(10,), on_defect=(True,)),
        FrameRegions(label=0, score=0.7, peaks=(0.65, 0.6, 0.52), areas=(5, 5, 5), on_defect=(False,) * 3),
    ]
    every = region_stats(frames, review=0.5, region_peak=None)
    assert (every["flagged_defects"], every["flagged_goods"]) == (2, 1)
    assert every["per_defect"] == 2.0 and every["precision"] == 0.5 and every["defect_found"] == 1.0
    assert every["largest_on_defect"] == 0.5              # the first frame's largest is the spot
    assert every["per_good"] == 3.0 and every["coverage"] == pytest.approx((0.8 + 0.5) / 2)
    assert every["tightness"] == pytest.approx((0.3 + 0.2) / 2)
    shown = region_stats(frames, review=0.5, region_peak=0.7)
    assert shown["per_defect"] == 1.0 and shown["precision"] == 0.5 and shown["defect_found"] == 0.5
    assert shown["largest_on_defect"] == 0.5 and shown["per_good"] == 1.0
    assert shown["coverage"] == pytest.approx((0.8 + 0.0) / 2)
    assert shown["tightness"] == pytest.approx((0.6 + 0.0) / 2)
    assert math.isnan(region_stats(frames, review=2.0, region_peak=0.7)["per_defect"])
