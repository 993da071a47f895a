"""PatchKNN with ``bank_spread``: distances in units of the good bank's own spread (``models.detectors._spread``).

The behaviour on the real DINOv2 weights (block 8): a part whose right half varies from good part to good part
(stripes of any angle and period) and whose left half is plain; a faint spot on the plain half. Plain distances
let a good part's new stripes outscore some spots; in units of the bank's spread every spot scores above every
good part. The mechanics (units, leave-one-out, state, frames added, tiling) on a random-init backbone.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.detectors import PatchKNN, PatchKNNConfig

SIZE = 112


def striped_part(rng: np.random.Generator) -> np.ndarray:
    """(112, 112, 3) uint8: plain grey on the left, stripes of a random angle, period, phase and contrast on the
    right (the half that varies among good parts)."""
    frame = np.clip(128 + rng.normal(0, 6, (SIZE, SIZE, 1)), 0, 255).repeat(3, axis=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    angle, phase, period = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi), rng.uniform(6, 14)
    stripes = 128 + rng.uniform(40, 90) * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
    frame[:, SIZE // 2 :, :] = stripes[:, SIZE // 2 :, None]
    return np.clip(frame, 0, 255).astype(np.uint8)


def spotted_part(rng: np.random.Generator) -> np.ndarray:
    frame = striped_part(rng)
    cv2.circle(frame, (28, 56), 4, (110, 110, 110), thickness=-1)         # a faint spot on the plain half
    return frame


def _detector(backbone: DinoBackbone, spread: bool, **options: object) -> PatchKNN:
    config = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False, masking="off", brightness="as_is",
                            second_scale=0, bank_spread=spread, **options)  # type: ignore[arg-type]
    return PatchKNN(backbone=backbone, config=config)


def test_spots_on_the_plain_half_outscore_good_parts_only_in_units_of_the_spread(real_backbone: DinoBackbone) -> None:
    worst_good, least_spot = {}, {}
    for spread in (False, True):
        rng = np.random.default_rng(0)
        detector = _detector(real_backbone, spread)
        detector.fit([striped_part(rng) for _ in range(8)])
        assert detector.spread.active == spread
        worst_good[spread] = float(detector.predict([striped_part(rng) for _ in range(8)]).pred_score.max())
        least_spot[spread] = float(detector.predict([spotted_part(rng) for _ in range(8)]).pred_score.min())
    assert least_spot[False] < worst_good[False], "plain distances: some spot hides among good parts' stripes"
    assert least_spot[True] > 1.2 * worst_good[True], (least_spot, worst_good)


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


def test_units_are_off_by_default_and_have_median_one(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(1)
    frames = [striped_part(rng) for _ in range(3)]
    assert not PatchKNNConfig().bank_spread
    plain = _detector(backbone, False)
    plain.fit(frames)
    assert not plain.spread.active and plain.export_state()[0].get("bank_scale") is None
    detector = _detector(backbone, True)
    detector.fit(frames)
    units = detector.spread.scale
    assert units is not None and units.shape == (detector.bank_size,)
    assert float(units.median()) == pytest.approx(1.0, abs=1e-3) and float(units.min()) > 0
    assert float(units.max()) > 1.5 * float(units.min())          # the striped half spreads more than the plain


def test_a_larger_floor_gives_softer_units_and_a_bad_floor_is_refused(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(1)
    frames = [striped_part(rng) for _ in range(3)]
    ranges = []
    for floor in (2.0, 8.0):
        detector = _detector(backbone, True, bank_spread_floor=floor)
        detector.fit(frames)
        units = detector.spread.scale
        assert units is not None and float(units.median()) == pytest.approx(1.0, abs=1e-3)
        ranges.append(float(units.max()) / float(units.min()))
    assert 1.0 < ranges[1] < ranges[0]                             # closer to plain distances, not plain
    for bad in (0, -1.0, True, "8"):
        with pytest.raises(ValueError, match="bank_spread_floor"):
            PatchKNNConfig(bank_spread_floor=bad)  # type: ignore[arg-type]


def test_leave_one_out_measures_the_spread_without_the_frame_left_out(backbone: DinoBackbone) -> None:
    """Two good frames: left out, the other frame's patches have no other frame to spread against, so all take
    the median unit, 1, and the leave-one-out scores are the plain ones (with the full bank's units, measured
    against the frame being scored, they would not be)."""
    rng = np.random.default_rng(2)
    frames = [striped_part(rng) for _ in range(2)]
    scores = {}
    for spread in (False, True):
        detector = _detector(backbone, spread)
        detector.fit(frames)
        scores[spread] = detector.train_scores
    assert len(scores[True]) == 2
    np.testing.assert_allclose(scores[True], scores[False], rtol=1e-4)


def test_units_survive_saving_follow_added_frames_and_skip_one_frame_and_tiles(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(3)
    detector = _detector(backbone, True)
    detector.fit([striped_part(rng) for _ in range(3)])
    frames = [striped_part(rng), spotted_part(rng)]
    expected = detector.predict(frames).pred_score
    tensors, info = detector.export_state()
    loaded = _detector(backbone, True)
    loaded.import_state(tensors, info)
    np.testing.assert_allclose(loaded.predict(frames).pred_score, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="bank_scale"):
        loaded.import_state({**tensors, "bank_scale": tensors["bank_scale"][:-1]}, info)
    detector.add_normal([striped_part(rng)])
    assert detector.spread.scale is not None and detector.spread.scale.shape == (detector.bank_size,)
    one = _detector(backbone, True)
    one.fit([striped_part(rng)])                              # no other frame to measure a spread against
    assert not one.spread.active and np.isfinite(one.predict(frames).pred_score).all()
    tiled = _detector(backbone, True, tiling="on", tile_size=56)
    tiled.fit([striped_part(rng) for _ in range(2)])
    assert tiled.tiling_active and not tiled.spread.active
