"""benchmarks/batch_fusion: the fusions keep the order they should, and images are joined by name, not by luck."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks._sweep import SweepData
from benchmarks.batch_fusion import joined_scores, rank_mean, robust_z_sum
from models.evaluation import TestItem, image_auroc


def _data(tmp_path: Path) -> SweepData:
    items = [TestItem(path=tmp_path / "good" / "000.png", label=0, defect_type="good", mask_path=None),
             TestItem(path=tmp_path / "good" / "001.png", label=0, defect_type="good", mask_path=None),
             TestItem(path=tmp_path / "crack" / "000.png", label=1, defect_type="crack", mask_path=None)]
    return SweepData(category="tiny", items=items, geos=[], masks_gt=[], frame_masks=[])


def test_images_are_joined_by_name_whatever_the_order(tmp_path: Path) -> None:
    data = _data(tmp_path)
    shuffled = [{"score": 0.3, "label": 1, "defect_type": "crack", "image": "crack/000.png"},
                {"score": 0.2, "label": 0, "defect_type": "good", "image": "good/001.png"},
                {"score": 0.1, "label": 0, "defect_type": "good", "image": "good/000.png"}]
    np.testing.assert_array_equal(joined_scores(data, shuffled), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="lacks 1 of the test images"):
        joined_scores(data, shuffled[:2] + [{**shuffled[2], "image": "good/002.png"}])
    # an older JSON without names: only the same labels and types in the same order are accepted
    unnamed = [{k: v for k, v in im.items() if k != "image"} for im in reversed(shuffled)]
    np.testing.assert_array_equal(joined_scores(data, unnamed), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same order"):
        joined_scores(data, [{k: v for k, v in im.items() if k != "image"} for im in shuffled])


def test_fusions_rank_an_image_that_both_scores_rank_high_highest() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200), np.ones(40)]
    truth = labels * 1.5
    a = truth + rng.normal(0, 1, 240)                  # two noisy views of the same truth, on other scales
    b = 1000.0 + 50.0 * (truth + rng.normal(0, 1, 240))
    for fused in (rank_mean(a, b), robust_z_sum(a, b)):
        assert image_auroc(fused, labels) > max(image_auroc(a, labels), image_auroc(b, labels))
    # the scale of one score does not change either fusion's order
    np.testing.assert_array_equal(np.argsort(rank_mean(a, b)), np.argsort(rank_mean(a, b * 7.0)))
    np.testing.assert_array_equal(np.argsort(robust_z_sum(a, b)), np.argsort(robust_z_sum(a, b * 7.0 + 3.0)))
