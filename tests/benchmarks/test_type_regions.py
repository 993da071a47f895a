"""``benchmarks/type_regions.py``: its "largest" row is the product's typing accuracy, its oracle sits on the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import type_regions
from tests.models.test_type_evaluation import evaluated_widget


def test_the_largest_region_row_reproduces_evaluate_and_the_oracle_uses_the_mask(tmp_path: Path) -> None:
    data, cache, product = evaluated_widget(tmp_path, config=type_regions.FRAME_ONLY)
    result = type_regions.category_run(data, cache, "widget", [0, 1, 2], n_labelled=2)
    assert result["defect_images"] == 8
    assert result["variants"]["largest"]["per_draw"] == list(product.accuracy_per_draw)
    assert set(result["variants"]) == set(type_regions.VARIANTS) | set(type_regions.JOINED)
    assert 0.0 <= result["largest_hits_defect"] <= 1.0


def test_a_capped_category_reads_the_images_its_seed_chose_and_names_one_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache, _ = evaluated_widget(tmp_path, config=type_regions.FRAME_ONLY)
    monkeypatch.setitem(type_regions.CATEGORIES, "widget", 3)    # as `--type-max-images 3` would choose
    seeded = [type_regions.load_typing_cache(data, cache, "widget", subset_seed=s).defects for s in (0, 1, 2)]
    assert all(len(d) == 6 for d in seeded) and len({tuple(x.path for x in d) for d in seeded}) > 1
    result = type_regions.category_run(data, cache, "widget", [0], n_labelled=2, subset_seed=1)
    assert result["defect_images"] == 6
    gone = seeded[1][0]
    next((cache).glob(f"*/{gone.defect_type}__{gone.path.stem}.npz")).unlink()
    with pytest.raises(SystemExit, match=f"1 of the 6 defect images .* not cached, e.g. {gone.defect_type}__"):
        type_regions.load_typing_cache(data, cache, "widget", subset_seed=1)


def test_region_weights_of_the_variants() -> None:
    amap = np.zeros((40, 40), np.float32)
    amap[5:15, 5:15] = 1.0          # the larger region, flat
    amap[8:12, 8:12] = 3.0          # with a peak
    amap[30:33, 30:33] = 2.0        # a smaller one
    mask = np.zeros((40, 40), bool)
    mask[30:33, 30:33] = True       # the defect is the small one
    largest = type_regions._largest(amap, 0.5, mask)
    assert (largest[5:15, 5:15] > 0).all() and largest[30:, 30:].sum() == 0
    oracle = type_regions._oracle(amap, 0.5, mask)
    assert (oracle > 0).sum() == 9 and (oracle[mask] > 0).all()
    core = type_regions._core(0.5)(amap, 0.5, mask)          # level 0.5 + 0.5 * (3 - 0.5) = 1.75
    assert (core > 0).sum() == 16 and (core[8:12, 8:12] > 0).all()
    mass = type_regions._mass(amap, 0.5, mask)               # 0.5 * 84 + 2.5 * 16 = 82 > 1.5 * 9
    assert (mass[5:15, 5:15] > 0).all()
    high = type_regions._high(0.5)(amap, 0.5, mask)          # threshold 1.75: only the peak is left
    assert (high > 0).sum() == 16
    union = type_regions._union(excess=False)(amap, 0.5, mask)   # both regions, the map's own scores
    assert (union > 0).sum() == 100 + 9 and union[31, 31] == 2.0
    strong = type_regions._strong(0.75)(amap, 0.5, mask)   # peaks >= 0.5 + 0.75 * 2.5: the small one's 2.0 is not
    assert (strong > 0).sum() == 100
    soft = type_regions._soft(0.5)(amap, 0.5, mask)          # no region: everything above 0.25, less 0.25
    assert (soft > 0).sum() == 109 and soft[31, 31] == np.float32(1.75 + 1e-6)
