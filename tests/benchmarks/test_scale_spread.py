"""``benchmarks/scale_spread.py``: the second scale's two spread rules, from a fine-only and a coarse-only detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import scale_spread
from benchmarks._features import CachedBackbone, FeatureStore
from models.detectors import PatchKNN, PatchKNNConfig
from models.evaluation import image_auroc, load_category, load_image_rgb, select_shots
from tests.helpers.images import write_two_type_category

CONFIG = PatchKNNConfig(shorter_side=112, second_scale=3)    # 8 x 8 patches


@pytest.mark.parametrize("shots", [1, 3])
def test_each_rule_is_the_product_fused_with_its_spreads(tmp_path: Path, store: FeatureStore, shots: int) -> None:
    root = write_two_type_category(tmp_path / "widget")
    row = scale_spread.category_seed(store, root, shots, 0, config=CONFIG)
    assert row["n_test"] == 9 and set(row["calibration"]) == {"fine", "coarse"}
    expected = {"fine", "coarse", "proportional"} | ({"measured"} if shots > 1 else set())
    assert set(row["image_auroc"]) == expected
    # the product: the default detector (second scale on) fitted on the same shots scores as the matching rule
    category = load_category(root)
    product = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=CONFIG)
    product.fit([load_image_rgb(p) for p in select_shots(category.train_good, shots, seed=0)])
    assert product.second_scale_active
    scores = [float(product.predict(load_image_rgb(item.path)).pred_score[0]) for item in category.test]
    labels = [item.label for item in category.test]
    rule = CONFIG.second_scale_spread if shots > 1 else "proportional"
    assert row["image_auroc"][rule] == pytest.approx(image_auroc(np.asarray(scores), labels), abs=1e-6)
    fusion = product.second_scale.fusion
    assert fusion is not None
    assert row["k"][rule] == pytest.approx(fusion.fine_std / fusion.coarse_std, rel=1e-4)
    if shots == 1:          # proportional: each spread is its mean
        assert row["k"]["proportional"] == pytest.approx(np.mean(row["calibration"]["fine"])
                                                         / np.mean(row["calibration"]["coarse"]), rel=1e-6)
