"""Few-shot defect typing: region embeddings, nearest-example classification, "unknown" by distance."""

from __future__ import annotations

import numpy as np
import pytest

from models.defect_types import (
    UNKNOWN,
    DefectTypeClassifier,
    DefectTypeConfig,
    region_embedding,
    region_weights,
)
from models.preprocess import crop_geometry, frame_to_grid


def _cluster(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float = 0.05) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, centre.size)).astype(np.float32)


def _axis(dim: int, i: int) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def test_types_by_nearest_labelled_example_and_learns_a_new_label_at_once() -> None:
    rng = np.random.default_rng(0)
    scratch, dent, stain = _axis(16, 0), _axis(16, 1), _axis(16, 2)
    classifier = DefectTypeClassifier()
    classifier.add_many(list(_cluster(rng, scratch, 5)) + list(_cluster(rng, dent, 5)), ["scratch"] * 5 + ["dent"] * 5)

    typed = classifier.predict_many(np.concatenate([_cluster(rng, scratch, 10), _cluster(rng, dent, 10)]))
    assert [t.defect_class for t in typed] == ["scratch"] * 10 + ["dent"] * 10
    assert all(0.5 < t.confidence <= 1.0 for t in typed)

    # a stain is far from every example: a new kind of defect is reported as unknown, not forced
    query = _cluster(rng, stain, 1)[0]
    first = classifier.predict(query)
    assert first.defect_class == UNKNOWN and first.confidence == 0.0
    assert first.distance > classifier.rejection_distance()

    classifier.add(_cluster(rng, stain, 1)[0], "stain")          # a reviewer labels one: used at once
    assert classifier.predict(query).defect_class == "stain"
    assert classifier.classes == ("dent", "scratch", "stain") and len(classifier) == 11


def test_confidence_drops_between_two_classes() -> None:
    classifier = DefectTypeClassifier(config=DefectTypeConfig(reject_distance=1.5))
    a, b = _axis(8, 0), _axis(8, 1)
    classifier.add_many([a, b], ["a", "b"])
    clear = classifier.predict(a + 0.05 * b)
    torn = classifier.predict(a + 0.95 * b)
    assert clear.defect_class == "a" and torn.defect_class == "a"
    assert clear.confidence > 0.99 > 0.7 > torn.confidence > 0.5


def test_without_labels_everything_is_unknown() -> None:
    prediction = DefectTypeClassifier().predict(np.ones(4, np.float32))
    assert prediction.defect_class == UNKNOWN and prediction.distance == np.inf


@pytest.mark.parametrize(("label", "match"), [("", "non-empty"), (UNKNOWN, "other than 'unknown'")])
def test_refuses_labels_it_cannot_learn(label: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DefectTypeClassifier().add(np.ones(4, np.float32), label)


def test_refuses_embeddings_of_another_length() -> None:
    classifier = DefectTypeClassifier()
    classifier.add(np.ones(4, np.float32), "a")
    with pytest.raises(ValueError, match="length 5 does not match .* 4"):
        classifier.add(np.ones(5, np.float32), "b")
    with pytest.raises(ValueError, match="zero or not finite"):
        classifier.predict(np.zeros(4, np.float32))


@pytest.mark.parametrize(("field", "value"), [("k", 0), ("temperature", 0.0), ("reject_quantile", 1.5),
                                              ("reject_distance", -1.0)])
def test_config_names_a_bad_option(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"DefectTypeConfig.{field}"):
        DefectTypeConfig(**{field: value})


def test_region_embedding_pools_the_patches_inside_the_region() -> None:
    # a 112 x 224 frame at shorter side 56 is a 56 x 112 input: a 4 x 8 grid of 14-px patches
    height, width, shorter = 112, 224, 56
    geo = crop_geometry(height, width, shorter_side=shorter)
    grid = (geo.crop[0] // 14, geo.crop[1] // 14)
    assert grid == (4, 8)
    left, right = _axis(6, 0), _axis(6, 1)
    features = np.empty((*grid, 6), np.float32)
    features[:, :4], features[:, 4:] = left, right
    anomaly_map = np.zeros((height, width), np.float32)
    anomaly_map[30:60, 150:200] = 0.8              # a defect in the right half
    weights = region_weights(anomaly_map, box=(150, 30, 50, 30), pixel_threshold=0.5)
    assert weights[40, 160] == pytest.approx(0.8) and weights[40, 20] == 0.0
    emb = region_embedding(features, weights, shorter_side=shorter)
    assert emb == pytest.approx(right, abs=1e-6)
    assert frame_to_grid(weights, grid, shorter_side=shorter)[:, :4].sum() == 0.0


def test_region_outside_the_map_is_refused() -> None:
    with pytest.raises(ValueError, match=r"region box \(90, 0, 5, 5\) lies outside the 56x56"):
        region_weights(np.zeros((56, 56), np.float32), box=(90, 0, 5, 5), pixel_threshold=0.1)


def test_predict_returns_the_patch_features_of_the_same_pass() -> None:
    from models.backbone import create_backbone
    from models.detectors import PatchKNN, PatchKNNConfig

    backbone = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=56, masking="off",
                                                                 augment_rotations=False))
    rng = np.random.default_rng(0)
    detector.fit([rng.integers(0, 255, (56, 84, 3), dtype=np.uint8) for _ in range(2)])
    frames = [rng.integers(0, 255, (56, 84, 3), dtype=np.uint8) for _ in range(2)]
    plain = detector.predict(frames)
    rich = detector.predict(frames, with_features=True)
    assert plain.patch_features is None
    assert rich.patch_features is not None and len(rich.patch_features) == 2
    grid = crop_geometry(56, 84, shorter_side=56).crop
    assert rich.patch_features[0].shape == (grid[0] // 14, grid[1] // 14, backbone.feature_dim)
    assert np.linalg.norm(rich.patch_features[0], axis=-1) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(plain.pred_score, rich.pred_score)
