"""find_regions / defect_mask on hand-made anomaly maps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.regions import Region, defect_mask, find_regions, patch_gap_px


def hand_map() -> np.ndarray:
    """(60, 80) float32 map: a 10x10 block scoring 0.9, a 3x3 block 0.6 and a diagonal pair 0.7."""
    anomaly_map = np.zeros((60, 80), np.float32)
    anomaly_map[5:15, 10:20] = 0.9
    anomaly_map[12, 12] = 1.0  # the block's peak
    anomaly_map[40:43, 50:53] = 0.6
    anomaly_map[30, 70] = anomaly_map[31, 71] = 0.7  # touch at a corner: one region with 8-connectivity
    return anomaly_map


def test_regions_have_boxes_areas_and_scores_sorted_by_max() -> None:
    regions = find_regions(hand_map(), pixel_threshold=0.5)
    assert [r.max_score for r in regions] == pytest.approx([1.0, 0.7, 0.6])
    block, pair, small = regions
    assert (block.x, block.y, block.width, block.height, block.area_px) == (10, 5, 10, 10, 100)
    assert block.mean_score == pytest.approx((99 * 0.9 + 1.0) / 100)
    assert (pair.x, pair.y, pair.width, pair.height, pair.area_px) == (70, 30, 2, 2, 2)
    assert (small.area_px, small.mean_score) == (9, pytest.approx(0.6))
    assert all(r.area_mm2 is None for r in regions)
    assert isinstance(block, Region)


def test_mm_per_px_gives_square_millimetres_and_min_area_filters() -> None:
    regions = find_regions(hand_map(), pixel_threshold=0.5, min_area_px=9, mm_per_px=0.1)
    assert [r.area_px for r in regions] == [100, 9]
    assert [r.area_mm2 for r in regions] == pytest.approx([1.0, 0.09])


def test_threshold_is_inclusive_and_nothing_above_gives_no_regions() -> None:
    assert [r.area_px for r in find_regions(hand_map(), pixel_threshold=0.9)] == [100]
    assert find_regions(hand_map(), pixel_threshold=1.5) == []
    mask = defect_mask(hand_map(), 0.6)
    assert mask.dtype == bool and mask.shape == (60, 80) and int(mask.sum()) == 100 + 9 + 2


def test_min_peak_keeps_the_regions_that_reach_it_at_their_full_extent() -> None:
    # hysteresis: the 0.7 pair and the 0.6 block reach the pixel threshold but not the peak
    regions = find_regions(hand_map(), pixel_threshold=0.5, min_peak=0.95)
    assert [(r.max_score, r.area_px) for r in regions] == [(pytest.approx(1.0), 100)]
    # the extent comes from the pixel threshold, not from the peak: the whole block, not its peak pixel
    assert (regions[0].width, regions[0].height) == (10, 10)
    assert [r.max_score for r in find_regions(hand_map(), pixel_threshold=0.5, min_peak=0.65)] == pytest.approx(
        [1.0, 0.7])
    assert len(find_regions(hand_map(), pixel_threshold=0.5, min_peak=None)) == 3


def test_min_peak_above_every_region_keeps_the_strongest_only() -> None:
    # a flagged frame shows why: its strongest region, even when no region reaches the peak
    weak = hand_map()
    weak[5:15, 10:20] = 0.55
    regions = find_regions(weak, pixel_threshold=0.5, min_peak=0.95)
    assert [(r.max_score, r.area_px) for r in regions] == [(pytest.approx(0.7), 2)]
    assert find_regions(weak, pixel_threshold=0.8, min_peak=0.95) == []       # nothing at the pixel threshold


def test_min_peak_counts_only_regions_of_at_least_min_area() -> None:
    # the 100-pixel block is the only region of >= 9 px that reaches 0.95; below it, the strongest large one
    assert [r.area_px for r in find_regions(hand_map(), pixel_threshold=0.5, min_area_px=9, min_peak=0.95)] == [100]
    assert [r.area_px for r in find_regions(hand_map(), pixel_threshold=0.5, min_area_px=3, min_peak=0.65)] == [100]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"anomaly_map": np.zeros((2, 3, 4))}, r"anomaly_map must be a non-empty \(H, W\) array"),
        ({"min_area_px": -1}, "min_area_px must be >= 0"),
        ({"mm_per_px": 0.0}, "mm_per_px must be a positive number"),
        ({"min_peak": float("nan")}, "min_peak must be a finite score or None"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    args = {"anomaly_map": hand_map(), "pixel_threshold": 0.5} | kwargs
    with pytest.raises(ValueError, match=message):
        find_regions(**args)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), threshold=st.floats(0.05, 0.95))
def test_regions_partition_the_defect_mask(seed: int, threshold: float) -> None:
    anomaly_map = np.random.default_rng(seed).random((24, 32)).astype(np.float32)
    regions = find_regions(anomaly_map, pixel_threshold=threshold)
    mask = defect_mask(anomaly_map, threshold)
    assert sum(r.area_px for r in regions) == int(mask.sum())
    for r in regions:
        box = anomaly_map[r.y : r.y + r.height, r.x : r.x + r.width]
        assert box.max() >= r.max_score >= r.mean_score >= threshold
    assert [r.max_score for r in regions] == sorted((r.max_score for r in regions), reverse=True)


def test_fragments_closer_than_the_merge_gap_are_one_region() -> None:
    anomaly_map = np.zeros((40, 60), np.float32)
    anomaly_map[10:20, 10:20] = 0.9          # two fragments of one defect, 4 px apart
    anomaly_map[10:20, 24:30] = 0.8
    anomaly_map[30:33, 50:53] = 0.7          # a separate spot, far away
    assert len(find_regions(anomaly_map, pixel_threshold=0.5)) == 3
    assert len(find_regions(anomaly_map, pixel_threshold=0.5, merge_gap_px=3)) == 3
    merged, spot = find_regions(anomaly_map, pixel_threshold=0.5, merge_gap_px=5)
    assert (merged.x, merged.y, merged.width, merged.height) == (10, 10, 20, 10)
    assert merged.area_px == 100 + 60, "only pixels over the threshold count, not the gap"
    assert merged.max_score == pytest.approx(0.9)
    assert merged.mean_score == pytest.approx((100 * 0.9 + 60 * 0.8) / 160)
    assert (spot.x, spot.y, spot.area_px) == (50, 30, 9)
    with pytest.raises(ValueError, match="merge_gap_px"):
        find_regions(anomaly_map, pixel_threshold=0.5, merge_gap_px=-1)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), gap=st.integers(1, 12))
def test_merging_keeps_every_pixel_and_never_adds_regions(seed: int, gap: int) -> None:
    rng = np.random.default_rng(seed)
    anomaly_map = rng.random((32, 48)).astype(np.float32)
    plain = find_regions(anomaly_map, pixel_threshold=0.9)
    merged = find_regions(anomaly_map, pixel_threshold=0.9, merge_gap_px=gap)
    assert sum(r.area_px for r in merged) == sum(r.area_px for r in plain) == int((anomaly_map >= 0.9).sum())
    assert len(merged) <= len(plain)
    for region in merged:
        box = anomaly_map[region.y : region.y + region.height, region.x : region.x + region.width]
        assert 0.9 <= region.max_score <= box.max()
        assert region.area_px <= box.size


def test_patch_gap_is_one_feature_patch_in_map_pixels() -> None:
    assert patch_gap_px((448, 600), 448) == 14           # scored at its own size
    assert patch_gap_px((1000, 896), 448) == 28          # the shorter side halved for the model: a patch is 28 px
    assert patch_gap_px((300, 300, 3), 448, patch_size=16) == 11
