"""``benchmarks/one_shot.py``: both one-image stand-ins beside the good test images' scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import one_shot
from benchmarks._features import CachedBackbone, FeatureStore
from models.detectors import PatchKNN, PatchKNNConfig
from models.evaluation import load_image_rgb, select_shots
from tests.helpers.images import write_two_type_category

CONFIG = PatchKNNConfig(shorter_side=112)    # 8 x 8 patches: radii 1-3 fit


def test_the_stand_ins_and_the_good_scores_of_one_seed(tmp_path: Path, store: FeatureStore) -> None:
    root = write_two_type_category(tmp_path / "widget")
    row = one_shot.category_seed(store, root, 1, None, config=CONFIG)
    assert row["rotations"] and row["n_good"] == 1
    turned, alone = np.asarray(row["turned"]["scores"]), np.asarray(row["frame_only"]["scores"])
    assert turned.shape == alone.shape == (3,)
    assert (turned <= alone + 1e-6).all(), (turned, alone)      # more places to match, never its own
    assert row["turned"]["good_p90_over_max"] == pytest.approx(row["good"]["p90"] / turned.max(), rel=1e-6)
    # the product's stand-in: what PatchKNN fitted on the seed's one shot keeps as its calibration scores
    product = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=CONFIG)
    product.fit([load_image_rgb(select_shots(sorted((root / "train" / "good").iterdir()), 1, seed=1)[0])])
    np.testing.assert_allclose(turned, product.train_scores, rtol=1e-5)
    good = float(product.predict(load_image_rgb(root / "test" / "good" / "000.png")).pred_score[0])
    assert row["good"]["median"] == row["good"]["max"] == row["good"]["p90"]
    np.testing.assert_allclose(row["good"]["median"], good, rtol=1e-5)
