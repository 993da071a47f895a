"""Few-shot defect typing: region embeddings, nearest-example classification, "unknown" by distance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.defect_types import (
    COLOUR_DIMS,
    UNKNOWN,
    DefectTypeClassifier,
    DefectTypeConfig,
    crop_embedder,
    crop_weights,
    frame_weights,
    region_colour,
    region_crop_box,
    region_crop_descriptor,
    region_embedding,
    region_weights,
)
from models.preprocess import crop_geometry, frame_to_grid

# the classifier's tests below use hand-made feature vectors, which carry no colour statistics
PLAIN = DefectTypeConfig(colour_weight=0.0)


def _cluster(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float = 0.05) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, centre.size)).astype(np.float32)


def _axis(dim: int, i: int) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def test_types_by_nearest_labelled_example_and_learns_a_new_label_at_once() -> None:
    rng = np.random.default_rng(0)
    scratch, dent, stain = _axis(16, 0), _axis(16, 1), _axis(16, 2)
    classifier = DefectTypeClassifier(config=PLAIN)
    classifier.add_many(list(_cluster(rng, scratch, 5)) + list(_cluster(rng, dent, 5)), ["scratch"] * 5 + ["dent"] * 5)

    typed = classifier.predict_many(np.concatenate([_cluster(rng, scratch, 10), _cluster(rng, dent, 10)]))
    truth = ["scratch"] * 10 + ["dent"] * 10
    # conformal: a new example of a labelled type is as far out as the farthest example now and then
    assert all(t.defect_class in (k, UNKNOWN) for t, k in zip(typed, truth, strict=True))
    assert sum(t.defect_class == UNKNOWN for t in typed) <= 2
    assert all(0.5 < t.confidence <= 1.0 for t in typed if t.defect_class != UNKNOWN)

    # a stain is far from every example: a new kind of defect is reported as unknown, not forced
    query = _cluster(rng, stain, 1)[0]
    first = classifier.predict(query)
    assert first.defect_class == UNKNOWN and first.confidence == 0.0
    assert first.distance > max(classifier.rejection_distances().values())

    classifier.add(_cluster(rng, stain, 1)[0], "stain")          # a reviewer labels one: used at once
    assert classifier.predict(query).defect_class == "stain"
    assert classifier.classes == ("dent", "scratch", "stain") and len(classifier) == 11


def test_confidence_drops_between_two_classes() -> None:
    # plain cosine (no centring: with two examples it would push every query to one side)
    classifier = DefectTypeClassifier(config=DefectTypeConfig(reject_distance=1.5, centre=False, colour_weight=0.0))
    a, b = _axis(8, 0), _axis(8, 1)
    classifier.add_many([a, b], ["a", "b"])
    clear = classifier.predict(a + 0.05 * b)
    torn = classifier.predict(a + 0.95 * b)
    assert clear.defect_class == "a" and torn.defect_class == "a"
    assert clear.confidence > 0.99 > 0.7 > torn.confidence > 0.5


def test_a_lone_label_cannot_judge_and_one_type_is_not_sure_of_itself_by_default() -> None:
    """The first label of a recipe typed every region as it, at 100 % (a softmax over one class), burnt parts as
    the one type labelled: found on the demo under Xvfb. A guess needs a type with two examples."""
    rng = np.random.default_rng(1)
    scratch, stain = _axis(16, 0), _axis(16, 1)
    classifier = DefectTypeClassifier(config=PLAIN)
    assert not classifier.can_judge
    first, second = _cluster(rng, scratch, 2)
    classifier.add(first, "scratch")
    assert not classifier.can_judge, "one example: nothing to measure near or far by"
    classifier.add(second, "scratch")
    assert classifier.can_judge
    radius = classifier.rejection_distances()["scratch"]
    # one type: not centred (that took away the type itself, and every region came out as it, at 100 %)
    typed = [classifier.predict((first + second) / 2 + a * stain) for a in (0.0, 0.05, 0.1, 0.2, 0.4, 1.0)]
    inside = [t for t in typed if t.distance <= radius]
    assert len(inside) >= 2 and all(t.defect_class == "scratch" for t in inside)
    confidences = [t.confidence for t in inside]
    assert all(0.5 <= c < 0.99 for c in confidences) and confidences == sorted(confidences, reverse=True)
    assert typed[-1].defect_class == UNKNOWN, "another kind of defect beside the one type labelled"
    two = DefectTypeClassifier(config=PLAIN)
    two.add_many([scratch, stain], ["scratch", "stain"])
    assert not two.can_judge, "one example of each: no spread to tell near from far (every region was unknown)"
    two.add(_cluster(rng, stain, 1)[0], "stain")
    assert two.can_judge


def test_without_labels_everything_is_unknown() -> None:
    prediction = DefectTypeClassifier(config=PLAIN).predict(np.ones(4, np.float32))
    assert prediction.defect_class == UNKNOWN and prediction.distance == np.inf


@pytest.mark.parametrize(("label", "match"), [("", "non-empty"), (UNKNOWN, "other than 'unknown'")])
def test_refuses_labels_it_cannot_learn(label: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DefectTypeClassifier(config=PLAIN).add(np.ones(4, np.float32), label)


def test_refuses_embeddings_of_another_length() -> None:
    classifier = DefectTypeClassifier(config=PLAIN)
    classifier.add(np.ones(4, np.float32), "a")
    with pytest.raises(ValueError, match="length 5 does not match .* 4"):
        classifier.add(np.ones(5, np.float32), "b")
    with pytest.raises(ValueError, match="zero or not finite"):
        classifier.predict(np.zeros(4, np.float32))


@pytest.mark.parametrize(("field", "value"), [("k", 0), ("temperature", 0.0), ("reject_quantile", 1.5),
                                              ("reject_distance", -1.0), ("colour_weight", -0.1),
                                              ("colour_weight", float("nan")), ("scope", "image")])
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
    # mean and maximum of the region's patches, each a unit vector, joined: both are `right` here
    assert emb == pytest.approx(np.concatenate([right, right]) / np.sqrt(2), abs=1e-6)
    assert frame_to_grid(weights, grid, shorter_side=shorter)[:, :4].sum() == 0.0


def test_frame_weights_hold_every_regions_pixels_at_the_threshold_and_nothing_else() -> None:
    anomaly_map = np.full((40, 60), 0.1, np.float32)
    anomaly_map[5:10, 5:12] = 0.6                  # two parts of one defect, apart
    anomaly_map[25:30, 40:44] = 0.9
    anomaly_map[25, 45] = 0.2                      # below the threshold inside the second box's reach
    boxes = [(5, 5, 7, 5), (40, 25, 6, 5)]
    whole = frame_weights(anomaly_map, boxes=boxes, pixel_threshold=0.5)
    assert np.count_nonzero(whole) == 7 * 5 + 4 * 5
    assert whole[7, 8] == pytest.approx(0.6) and whole[27, 42] == pytest.approx(0.9) and whole[25, 45] == 0.0
    np.testing.assert_array_equal(whole, np.maximum(*(region_weights(anomaly_map, box=b, pixel_threshold=0.5)
                                                       for b in boxes)))
    with pytest.raises(ValueError, match="at least one region"):
        frame_weights(anomaly_map, boxes=[], pixel_threshold=0.5)


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


def test_the_maximum_keeps_a_small_part_of_the_region_that_the_mean_drowns() -> None:
    # a 4 x 4 grid (56 px, 14-px patches); the region covers the whole frame, one patch differs
    plain, spot = _axis(4, 0), _axis(4, 1)
    features = np.tile(plain, (4, 4, 1)).astype(np.float32)
    features[1, 2] = _unit(plain + 3 * spot)
    weights = np.ones((56, 56), np.float32)
    emb = region_embedding(features, weights, shorter_side=56)
    mean, peak = emb[:4] * np.sqrt(2), emb[4:] * np.sqrt(2)
    assert mean[1] < 0.1 < 0.6 < peak[1]      # the mean barely shows the spot, the maximum does


def test_residual_half_describes_what_differs_from_the_nearest_good_patch() -> None:
    good, defect = _axis(4, 0), _axis(4, 2)
    features = np.tile(good, (4, 4, 1)).astype(np.float32)
    features[:, :2] = _unit(good + defect)       # the defect patches still look partly like the part
    weights = np.zeros((56, 56), np.float32)
    weights[:, :28] = 1.0
    bank = np.stack([good, _axis(4, 1)])

    def nearest_good(patches: np.ndarray) -> np.ndarray:
        return bank[np.argmax(patches @ bank.T, axis=1)]

    emb = region_embedding(features, weights, shorter_side=56, nearest_good=nearest_good)
    assert emb.shape == (16,) and np.linalg.norm(emb) == pytest.approx(1.0)
    residual_mean = _unit(emb[8:12])
    # what is left once the good patch is taken away points to the defect, and away from the part
    assert residual_mean[2] > 0.7 and residual_mean[0] < 0.0
    # a region identical to the good bank has no residual: that half is zero, not an error
    same = region_embedding(np.tile(good, (4, 4, 1)).astype(np.float32), weights, shorter_side=56,
                            nearest_good=nearest_good)
    assert np.all(same[8:] == 0.0)


def test_unknown_is_per_type_a_tight_type_rejects_sooner_than_a_spread_one() -> None:
    rng = np.random.default_rng(1)
    tight, wide, novel = _axis(32, 0), _axis(32, 1), _axis(32, 2)
    classifier = DefectTypeClassifier(config=DefectTypeConfig(centre=False, colour_weight=0.0))
    classifier.add_many(list(_cluster(rng, tight, 5, 0.02)) + list(_cluster(rng, wide, 5, 0.15)),
                        ["tight"] * 5 + ["wide"] * 5)
    limits = classifier.rejection_distances()
    assert set(limits) == {"tight", "wide"} and limits["tight"] < limits["wide"]
    # new examples of each labelled type are typed (their distances are like the examples' own) ...
    typed = classifier.predict_many(np.concatenate([_cluster(rng, tight, 20, 0.02), _cluster(rng, wide, 20, 0.15)]))
    assert sum(t.defect_class == UNKNOWN for t in typed) <= 2
    # ... a defect half-way between a tight type and a new direction is unknown, though it is nearer
    # to "tight" than the spread type's examples are to each other
    between = classifier.predict_many(_cluster(rng, _unit(tight + 0.5 * novel), 10, 0.02))
    assert all(t.defect_class == UNKNOWN for t in between)
    assert max(t.distance for t in between) < limits["wide"]


def test_centring_separates_types_that_share_what_the_part_looks_like() -> None:
    # every defect of a part carries the part's look (a large shared component); the types differ
    # only in a small one: plain cosine sees them all alike, centred cosine tells them apart
    rng = np.random.default_rng(2)
    part = 5.0 * _axis(16, 0)
    kinds = {"a": _axis(16, 1), "b": _axis(16, 2), "c": _axis(16, 3)}
    examples = {k: _cluster(rng, part + v, 5, 0.3) for k, v in kinds.items()}
    queries = {k: _cluster(rng, part + v, 30, 0.3) for k, v in kinds.items()}

    def typed(centre: bool) -> tuple[float, float]:
        config = DefectTypeConfig(centre=centre, reject_distance=2.0, colour_weight=0.0)
        classifier = DefectTypeClassifier(config=config)
        classifier.add_many([e for k in kinds for e in examples[k]], [k for k in kinds for _ in range(5)])
        out = classifier.predict_many(np.concatenate([queries[k] for k in kinds]))
        truth = [k for k in kinds for _ in range(30)]
        return (float(np.mean([t.defect_class == k for t, k in zip(out, truth, strict=True)])),
                float(np.mean([t.confidence for t in out])))

    (acc_centred, conf_centred), (acc_plain, conf_plain) = typed(centre=True), typed(centre=False)
    assert acc_centred >= acc_plain and acc_centred > 0.9
    # plain cosine distances all look alike (about 1 - 25/26), so its confidence is a coin toss
    assert conf_centred > 0.8 > 0.6 > conf_plain


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.mark.parametrize(("box", "frame"), [((10, 10, 20, 5), (1024, 1024)), ((1000, 990, 24, 34), (1024, 1024)),
                                            ((0, 0, 900, 30), (500, 1000)), ((300, 200, 3, 3), (480, 640))])
def test_crop_window_holds_the_region_stays_in_the_frame_and_gives_a_dot_some_context(
        box: tuple[int, int, int, int], frame: tuple[int, int]) -> None:
    from models.defect_types import CROP_MIN_SHARE, region_crop_box

    x, y, side = region_crop_box(box, frame)
    height, width = frame
    assert 0 <= x and 0 <= y and x + side <= width and y + side <= height
    assert side <= min(frame)
    assert side >= min(min(frame), round(CROP_MIN_SHARE * min(frame)))
    bx, by, bw, bh = box
    if max(bw, bh) * 2 <= min(frame):          # the region fits: the window holds all of it
        assert x <= bx and y <= by and bx + bw <= x + side and by + bh <= y + side


def test_crop_weights_put_the_region_on_the_crop_patches_it_covers() -> None:
    from models.defect_types import crop_weights, region_crop_box

    amap = np.zeros((200, 300), np.float32)
    amap[100:110, 150:190] = 1.0                                     # a horizontal streak
    weights = region_weights(amap, box=(150, 100, 40, 10), pixel_threshold=0.5)
    window = region_crop_box((150, 100, 40, 10), amap.shape)
    grid = crop_weights(weights, window, (16, 16))
    rows, cols = np.nonzero(grid > 0)
    assert grid.shape == (16, 16)
    assert 4 <= rows.min() and rows.max() <= 11 and cols.max() - cols.min() > rows.max() - rows.min()
    thin = np.zeros((200, 300), np.float32)
    thin[120, 20] = 1.0                                               # thinner than a crop patch: its patch
    w1 = region_weights(thin, box=(20, 120, 1, 1), pixel_threshold=0.5)
    assert crop_weights(w1, region_crop_box((20, 120, 1, 1), thin.shape), (16, 16)).sum() > 0


def test_region_colour_tells_a_dark_spot_from_a_bright_one_and_a_streak_from_a_blob() -> None:
    from models.defect_types import region_colour

    frame = np.full((120, 160, 3), 128, np.uint8)
    frame[40:50, 40:50] = 30                                          # dark spot
    frame[80:84, 90:150] = (230, 60, 60)                               # bright red streak
    dark = np.zeros((120, 160), np.float32)
    dark[40:50, 40:50] = 1.0
    streak = np.zeros((120, 160), np.float32)
    streak[80:84, 90:150] = 1.0
    d, s = region_colour(frame, dark), region_colour(frame, streak)
    assert d.shape == s.shape == (10,)
    assert d[0] < -0.2 and s[0] > -0.05 and s[1] > 0.1           # L darker; a redder than the grey ring
    assert s[9] > d[9] + 1.0                                      # elongation
    assert d[8] > np.log(100 / (120 * 160)) - 0.01                 # log area share
    with pytest.raises(ValueError, match="no pixel"):
        region_colour(frame, np.zeros((120, 160), np.float32))


def _spot_frame(rng: np.random.Generator, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(64, 64, 3) uint8 RGB grey part with a round spot of grey ``level``, and the spot's region weights."""
    frame = np.clip(128 + rng.normal(0.0, 4.0, (64, 64, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    cy, cx = (int(v) for v in rng.integers(20, 44, size=2))
    spot = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    frame[spot] = level
    return frame, np.where(spot, 0.8, 0.0).astype(np.float32)


def test_colour_statistics_tell_apart_types_whose_features_look_alike() -> None:
    # a burn (dark spot) and a light stain whose patch features are the same cluster: features alone
    # type them at chance, the region's colour against its ring tells them apart
    rng = np.random.default_rng(3)
    look = _axis(16, 0)

    def embedded(level: int) -> np.ndarray:
        frame, weights = _spot_frame(rng, level)
        head = _unit(_cluster(rng, look, 1, 0.02)[0])
        return np.concatenate([head, region_colour(frame, weights)])

    labelled = [embedded(30) for _ in range(5)] + [embedded(230) for _ in range(5)]
    queries = [embedded(30) for _ in range(20)] + [embedded(230) for _ in range(20)]
    truth = ["burn"] * 20 + ["stain"] * 20

    def accuracy(weight: float) -> float:
        classifier = DefectTypeClassifier(config=DefectTypeConfig(colour_weight=weight, reject_distance=2.0))
        if weight > 0:
            classifier.add_many(labelled, ["burn"] * 5 + ["stain"] * 5)
            typed = classifier.predict_many(np.stack(queries))
        else:           # the same feature parts without the colour tail
            classifier.add_many([e[:-COLOUR_DIMS] for e in labelled], ["burn"] * 5 + ["stain"] * 5)
            typed = classifier.predict_many(np.stack([q[:-COLOUR_DIMS] for q in queries]))
        return float(np.mean([t.defect_class == k for t, k in zip(typed, truth, strict=True)]))

    assert accuracy(0.2) >= 0.95
    assert accuracy(0.0) < 0.8


def test_colour_needs_its_statistics_and_enough_examples_to_scale_them() -> None:
    rng = np.random.default_rng(4)
    frame, weights = _spot_frame(rng, 30)
    stats = region_colour(frame, weights)
    assert stats.shape == (COLOUR_DIMS,) and stats[0] < -0.1      # darker than its ring
    features = np.tile(_axis(6, 0), (4, 4, 1)).astype(np.float32)
    with_colour = region_embedding(features, np.ones((56, 56), np.float32), shorter_side=56, colour=stats)
    assert with_colour.shape == (12 + COLOUR_DIMS,)
    np.testing.assert_allclose(np.linalg.norm(with_colour[:-COLOUR_DIMS]), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="10 finite numbers"):
        region_embedding(features, np.ones((56, 56), np.float32), shorter_side=56, colour=stats[:3])
    classifier = DefectTypeClassifier()                       # colour on by default
    with pytest.raises(ValueError, match="no colour statistics"):
        classifier.add(_unit(np.ones(24, np.float32)), "burn")   # a plain unit feature vector: no tail
    # below COLOUR_MIN_EXAMPLES labelled examples the colour part is left out: one example per type still types
    classifier.add_many([with_colour, np.concatenate([_axis(12, 1), stats])], ["burn", "scratch"])
    assert classifier.predict(with_colour).defect_class == "burn"


def test_each_regions_crop_is_embedded_once_in_one_batch_and_pooled_where_the_region_lies() -> None:
    frame = np.zeros((200, 300, 3), np.uint8)
    amap = np.zeros((200, 300), np.float32)
    amap[40:52, 60:66] = 1.0                       # a small streak
    amap[150:190, 200:280] = 0.6                   # a large blob near the corner
    boxes = [(60, 40, 6, 12), (200, 150, 80, 40)]
    regions = [(box, region_weights(amap, box=box, pixel_threshold=0.5)) for box in boxes]
    calls: list[tuple[list[tuple[int, ...]], int]] = []

    def embed(crops, side):                        # patch (i, j) of a 4 x 4 grid is the unit vector e_(4i + j)
        calls.append(([c.shape for c in crops], side))
        return np.tile(np.eye(16, dtype=np.float32).reshape(1, 4, 4, 16), (len(crops), 1, 1, 1))

    out = region_crop_descriptor(frame, regions, embed, side=56)
    windows = [region_crop_box(box, frame.shape[:2]) for box in boxes]
    assert calls == [([(s, s, 3) for _, _, s in windows], 56)]
    for (_, weights), window, vector in zip(regions, windows, out, strict=True):
        grid = crop_weights(weights, window, (4, 4)).reshape(-1)
        assert vector.shape == (32,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
        mean, peak = vector[:16], vector[16:]
        # the mean is weighted by how much of each crop patch the region covers; the maximum is flat over them
        np.testing.assert_allclose(mean / np.linalg.norm(mean), grid / np.linalg.norm(grid), atol=1e-6)
        np.testing.assert_array_equal(np.flatnonzero(peak), np.flatnonzero(grid > 0))
    assert region_crop_descriptor(frame, [], embed, side=56) == []


def test_the_crop_part_joins_the_frames_features_and_must_match_their_length() -> None:
    features = np.tile(_axis(6, 0), (4, 4, 1)).astype(np.float32)
    weights = np.ones((56, 56), np.float32)
    crop = _unit(np.concatenate([_axis(6, 1), _axis(6, 2)]))
    plain = region_embedding(features, weights, shorter_side=56)
    joined = region_embedding(features, weights, shorter_side=56, crop=crop)
    assert joined.shape == (24,) and np.linalg.norm(joined) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(joined[:12], plain / np.sqrt(2), atol=1e-6)   # each half unit, then the whole
    np.testing.assert_allclose(joined[12:], crop / np.sqrt(2), atol=1e-6)
    with pytest.raises(ValueError, match="12 numbers"):
        region_embedding(features, weights, shorter_side=56, crop=crop[:6])
    # a region left out of the crop pass: its frame pooling (mean and maximum) stands in, same layout
    stand_in = region_embedding(features, weights, shorter_side=56, crop="frame")
    np.testing.assert_allclose(stand_in, np.concatenate([plain, plain]) / np.sqrt(2), atol=1e-6)
    with pytest.raises(ValueError, match="'frame'"):
        region_embedding(features, weights, shorter_side=56, crop="crop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop_side"):
        DefectTypeConfig(crop_side=20)
    assert DefectTypeConfig(crop_side=0).crop_side == 0


def test_the_detectors_own_backbone_embeds_crops_of_any_size_at_the_crop_side() -> None:
    from models.backbone import create_backbone
    from models.detectors import PatchKNN, PatchKNNConfig

    backbone = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=56, masking="off",
                                                                 augment_rotations=False))
    embed = crop_embedder(detector)                # an unfitted detector is enough: only its backbone runs
    assert embed is not None and crop_embedder(object()) is None
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)]
    out = embed(crops, 56)
    assert out.shape == (2, 4, 4, backbone.feature_dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    alone = embed(crops[1:], 56)                   # batching changes nothing
    np.testing.assert_allclose(out[1], alone[0], atol=1e-4)


def _arc(degrees: np.ndarray, lift: float = 0.0) -> np.ndarray:
    """Unit vectors at these angles in the plane of the first two axes, lifted along the third by ``lift``."""
    rad = np.radians(degrees)
    out = np.zeros((len(rad), 16), np.float32)
    out[:, 0], out[:, 1], out[:, 2] = np.cos(rad), np.sin(rad), lift
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_label_spreading_follows_a_type_along_its_unlabelled_regions() -> None:
    """A chain of unlabelled regions joins a far query to its type; the nearest examples alone say the other type."""
    labelled_a, chain, query = _arc(np.array([0.0, 3.0, 6.0])), _arc(np.arange(9.0, 58.0, 3.0)), _arc(np.array([60.0]))
    labelled_b = _arc(np.array([80.0, 81.0, 82.0]), lift=0.05)
    # b's unlabelled regions: a cluster of its own, so that its members' nearest neighbours are each other
    chain = np.concatenate([chain, _arc(np.array([79.5, 80.5, 81.5, 82.5]), lift=0.05)])
    config = DefectTypeConfig(centre=False, colour_weight=0.0, reject_distance=2.0)
    examples, classes = np.concatenate([labelled_a, labelled_b]), ["a"] * 3 + ["b"] * 3

    knn = DefectTypeClassifier(config=dataclasses.replace(config, spread_alpha=0.0))
    knn.add_many(examples, classes)
    knn.add_unlabelled(chain)
    assert knn.predict(query[0]).defect_class == "b"           # 20 degrees from b, 54 from the nearest a

    spreading = DefectTypeClassifier(config=config)
    spreading.add_many(examples, classes)
    assert spreading.predict(query[0]).defect_class == "b"     # nothing unlabelled yet: the k-NN's answer
    assert spreading.add_unlabelled(chain) == len(chain) and spreading.n_unlabelled == len(chain)
    typed = spreading.predict(query[0])
    assert typed.defect_class == "a" and typed.confidence < 0.5    # overruled: the k-NN's confidence says so
    # the same regions typed together, with no pool held: they are each other's unlabelled neighbours
    together = DefectTypeClassifier(config=config)
    together.add_many(examples, classes)
    assert together.predict_many(np.concatenate([chain, query]))[-1].defect_class == "a"
    assert [t.defect_class for t in together.predict_many(chain[-4:])] == ["b"] * 4


def test_the_unlabelled_pool_keeps_the_newest_of_the_labelled_length() -> None:
    classifier = DefectTypeClassifier(config=DefectTypeConfig(colour_weight=0.0, pool_size=4))
    classifier.add(np.eye(8, dtype=np.float32)[0], "a")
    assert classifier.add_unlabelled([np.eye(8, dtype=np.float32)[i] for i in range(1, 7)]) == 6
    assert classifier.n_unlabelled == 4
    assert classifier.add_unlabelled([np.ones(5, np.float32), np.zeros(8, np.float32)]) == 0   # length, zero
    assert classifier.n_unlabelled == 4
    with pytest.raises(ValueError, match="spread_alpha"):
        DefectTypeConfig(spread_alpha=1.0)
    with pytest.raises(ValueError, match="pool_size"):
        DefectTypeConfig(pool_size=0)
