"""The probe benchmarks/map_probe.py: it scores as the product does (image scores and the product's own map) and
keeps each weight's map, the fine map alone at weight 0 and the product's map at the image score's weight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import benchmarks.map_probe as map_probe
from benchmarks._features import CachedBackbone, FeatureStore
from models.detectors.patch_knn import PatchKNN, PatchKNNConfig
from models.evaluation import load_image_rgb
from tests.benchmarks.conftest import SHORTER_SIDE


def _fit(store: FeatureStore, train: list[np.ndarray], *, in_map: bool) -> PatchKNN:
    config = PatchKNNConfig(shorter_side=SHORTER_SIDE, second_scale_map=in_map)
    detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=config)
    detector.fit(train)
    assert detector.second_scale_active
    return detector


def test_the_probe_scores_as_the_product_and_keeps_each_weights_map(
    parts: dict[str, list[Path]], store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = [load_image_rgb(p) for p in parts["train"]]
    test = [load_image_rgb(p) for p in parts["bad"] + parts["good"]]
    fine_only, both = _fit(store, train, in_map=False), _fit(store, train, in_map=True)
    want_fine, want_both = fine_only.predict(test), both.predict(test)
    assert not np.allclose(want_fine.anomaly_map, want_both.anomaly_map)

    monkeypatch.setattr(map_probe, "_WEIGHTS", [0.0, 0.2])
    monkeypatch.setattr(map_probe, "_STASH", [])
    monkeypatch.setattr(PatchKNN, "_score_frames_and_features", map_probe._score)
    for detector, want in ((both, want_both), (fine_only, want_fine)):
        map_probe._STASH.clear()
        got = detector.predict(test)
        np.testing.assert_allclose(got.pred_score, want.pred_score, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=1e-5, atol=1e-6)
        assert len(map_probe._STASH) == len(test)
        for i, entry in enumerate(map_probe._STASH):
            np.testing.assert_allclose(entry[0.0], want_fine.anomaly_map[i], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(entry[0.2], want_both.anomaly_map[i], rtol=1e-5, atol=1e-6)
