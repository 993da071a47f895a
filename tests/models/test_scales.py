"""The second, coarser scale of PatchKNN (models.detectors._scales): its fusion arithmetic, that a fused
detector scores exactly as its two single-scale parts fused, when it stays off, and that it is saved."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.calibration import calibrate
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors._scales import ScaleFusion, pooled_unit
from models.saved import load_detector, save_detector

SIZE = 112  # 8 x 8 patches


def good_frame(rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, 12.0, (SIZE, SIZE, 1))
    return np.clip(128.0 + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)


def defect_frame(rng: np.random.Generator) -> np.ndarray:
    frame = good_frame(rng)
    cv2.rectangle(frame, (30, 30), (80, 60), (30, 30, 30), thickness=-1)   # a large dark part of the frame
    return frame


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


def _fit(backbone: DinoBackbone, frames: list[np.ndarray], **options: object) -> PatchKNN:
    config = PatchKNNConfig(**{"shorter_side": SIZE, "augment_rotations": False, **options})  # type: ignore[arg-type]
    detector = PatchKNN(backbone=backbone, config=config)
    detector.fit(frames)
    return detector


def test_fusion_adds_the_weighted_coarse_z_score_in_the_fine_units() -> None:
    fusion = ScaleFusion.from_loo(np.array([1.0, 3.0]), np.array([10.0, 30.0]), weight=0.5)
    assert (fusion.fine_mean, fusion.fine_std, fusion.coarse_mean, fusion.coarse_std) == (2.0, 1.0, 20.0, 10.0)
    fused = fusion.fuse(torch.tensor([2.0, 4.0, 2.0]), torch.tensor([20.0, 20.0, 40.0]))
    # z_fine 0, 2, 0 and z_coarse 0, 0, 2: 2 + 1 * (z_fine + 0.5 z_coarse)
    np.testing.assert_allclose(fused.numpy(), [2.0, 4.0, 3.0])
    assert ScaleFusion.from_dict(fusion.to_dict()) == fusion
    # identical leave-one-out scores (no spread) still give finite scores
    flat = ScaleFusion.from_loo(np.array([1.0, 1.0]), np.array([2.0, 2.0]), weight=0.2)
    assert all(math.isfinite(v) for v in flat.fuse(torch.tensor([1.5]), torch.tensor([2.5])).tolist())


@pytest.mark.parametrize(("fine", "coarse", "message"), [
    ([1.0], [2.0], "2 or more"),
    ([1.0, 2.0], [1.0, 2.0, 3.0], "same 2 or more"),
    ([1.0, float("nan")], [1.0, 2.0], "finite"),
])
def test_fusion_refuses_too_few_or_bad_scores(fine: list[float], coarse: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScaleFusion.from_loo(np.array(fine), np.array(coarse), weight=0.2)


def test_a_saved_fusion_without_a_field_is_refused() -> None:
    data = ScaleFusion.from_loo(np.array([1.0, 2.0]), np.array([1.0, 3.0]), weight=0.2).to_dict()
    del data["coarse_std"]
    with pytest.raises(ValueError, match="coarse_std"):
        ScaleFusion.from_dict(data)


def test_pooled_unit_is_the_cores_pooling() -> None:
    raw = torch.randn(2, 5, 7, 16)
    pooled = pooled_unit(raw, 5)
    assert pooled.shape == raw.shape
    np.testing.assert_allclose(pooled.norm(dim=-1).numpy(), 1.0, rtol=1e-5)
    # the centre patch of a 5 x 7 grid averages its full 5 x 5 neighbourhood
    centre = torch.nn.functional.normalize(raw[:, 0:5, 1:6].mean(dim=(1, 2)), dim=-1)
    np.testing.assert_allclose(pooled[:, 2, 3].numpy(), centre.numpy(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled_unit(raw, 1), torch.nn.functional.normalize(raw, dim=-1))


@pytest.mark.parametrize("masking", ["off", "on"])
def test_a_fused_detector_scores_as_its_two_scales_fused(backbone: DinoBackbone, masking: str) -> None:
    """The fused detector's leave-one-out statistics, image scores and maps are exactly those of a fine-only
    detector (r=1) and a coarse-only one (pooling r=5) fitted on the same frames, fused."""
    rng = np.random.default_rng(0)
    frames = [good_frame(rng) for _ in range(5)]
    fused = _fit(backbone, frames, masking=masking, second_scale=5, second_scale_weight=0.3,
                 second_scale_spread="measured")
    fine = _fit(backbone, frames, masking=masking, second_scale=0)
    coarse = _fit(backbone, frames, masking=masking, second_scale=0, patch_pooling=5)
    assert fused.second_scale_active and not fine.second_scale_active
    assert fused.second_scale.bank.shape == fused.memory_bank.shape
    expected = ScaleFusion.from_loo(fine.train_scores, coarse.train_scores, weight=0.3)
    assert fused.second_scale.fusion is not None
    for name in ("fine_mean", "fine_std", "coarse_mean", "coarse_std", "weight"):
        assert getattr(fused.second_scale.fusion, name) == pytest.approx(getattr(expected, name), rel=1e-5, abs=1e-7)
    loo = expected.fuse(torch.from_numpy(fine.train_scores), torch.from_numpy(coarse.train_scores)).numpy()
    np.testing.assert_allclose(fused.train_scores, loo, rtol=1e-5, atol=1e-6)

    test = [defect_frame(np.random.default_rng(3)), good_frame(np.random.default_rng(4))]
    got, f, c = fused.predict(test), fine.predict(test), coarse.predict(test)
    want = expected.fuse(torch.from_numpy(f.pred_score), torch.from_numpy(c.pred_score)).numpy()
    np.testing.assert_allclose(got.pred_score, want, rtol=1e-5, atol=1e-6)
    # the map holds both scales, at the image score's weight and units, and so do the calibration maps
    np.testing.assert_allclose(got.anomaly_map, expected.fuse_maps(f.anomaly_map, c.anomaly_map), rtol=1e-5,
                               atol=1e-6)
    assert len(fused.train_maps) == len(fine.train_maps) == len(coarse.train_maps)
    for g, a, b in zip(fused.train_maps, fine.train_maps, coarse.train_maps, strict=True):
        np.testing.assert_allclose(g, expected.fuse_maps(a, b), rtol=1e-5, atol=1e-6)
    assert got.pred_score[0] > got.pred_score[1]


def test_fusion_from_means_takes_each_spread_in_proportion_to_its_mean() -> None:
    fusion = ScaleFusion.from_means(np.array([0.2, 0.3, 0.4]), np.array([0.05, 0.1, 0.15]), weight=0.5)
    assert fusion.fine_mean == pytest.approx(0.3) and fusion.coarse_mean == pytest.approx(0.1)
    # fine + 0.5 * (0.3 / 0.1) * (coarse - 0.1)
    fused = fusion.fuse(torch.tensor([0.3, 0.3, 0.5]), torch.tensor([0.1, 0.3, 0.1]))
    np.testing.assert_allclose(fused.numpy(), [0.3, 0.6, 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="same radii"):
        ScaleFusion.from_means(np.array([0.2, 0.3]), np.array([0.1]), weight=0.2)


@pytest.mark.parametrize(("rotations", "masking"), [(False, "off"), (True, "off"), (False, "on")])
def test_one_good_frame_fuses_its_region_scores_at_both_scales(
    backbone: DinoBackbone, rotations: bool, masking: str
) -> None:
    """Taught from one frame, the scales are fused by the one frame's region-leave-out scores (models.detectors.
    one_shot): scores and calibration scores are those of a fine-only and a coarse-only detector on that frame."""
    frame = [good_frame(np.random.default_rng(5))]
    fused = _fit(backbone, frame, masking=masking, augment_rotations=rotations)
    fine = _fit(backbone, frame, masking=masking, augment_rotations=rotations, second_scale=0)
    coarse = _fit(backbone, frame, masking=masking, augment_rotations=rotations, second_scale=0, patch_pooling=5)
    assert fused.second_scale_active and fused.rotations_used is rotations
    assert fused.second_scale.bank.shape == fused.memory_bank.shape
    expected = ScaleFusion.from_means(fine.train_scores, coarse.train_scores, weight=0.2)
    assert fused.second_scale.fusion is not None
    for name in ("fine_mean", "fine_std", "coarse_mean", "coarse_std", "weight"):
        assert getattr(fused.second_scale.fusion, name) == pytest.approx(getattr(expected, name), rel=1e-5, abs=1e-7)
    calibration = expected.fuse(torch.from_numpy(fine.train_scores), torch.from_numpy(coarse.train_scores)).numpy()
    np.testing.assert_allclose(fused.train_scores, calibration, rtol=1e-5, atol=1e-6)
    assert len(fused.train_maps) == len(fine.train_maps)

    test = [defect_frame(np.random.default_rng(3)), good_frame(np.random.default_rng(4))]
    got, f, c = fused.predict(test), fine.predict(test), coarse.predict(test)
    want = expected.fuse(torch.from_numpy(f.pred_score), torch.from_numpy(c.pred_score)).numpy()
    np.testing.assert_allclose(got.pred_score, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.anomaly_map, expected.fuse_maps(f.anomaly_map, c.anomaly_map), rtol=1e-5,
                               atol=1e-6)
    for g, a, b in zip(fused.train_maps, fine.train_maps, coarse.train_maps, strict=True):
        np.testing.assert_allclose(g, expected.fuse_maps(a, b), rtol=1e-5, atol=1e-6)
    assert got.pred_score[0] > got.pred_score[1]
    assert np.isfinite(fused.train_scores).all()
    if masking == "off":   # (this noise frame's own foreground mask is empty: its region scores are all 0)
        assert calibrate(fused.train_scores).fail > 0


def test_fused_maps_are_in_the_fine_maps_units() -> None:
    fusion = ScaleFusion.from_means(np.array([0.2, 0.3, 0.4]), np.array([0.05, 0.1, 0.15]), weight=0.5)
    fine, coarse = np.array([[0.3, 0.6]]), np.array([[0.1, 0.0]])
    # (fine + 0.5 * (0.3 / 0.1) * coarse) / 1.5: a patch at both scales' mean keeps the fine mean
    np.testing.assert_allclose(fusion.fuse_maps(fine, coarse), [[0.3, 0.4]], rtol=1e-6)
    torch.testing.assert_close(fusion.fuse_maps(torch.from_numpy(fine), torch.from_numpy(coarse)),
                               torch.tensor([[0.3, 0.4]], dtype=torch.float64))


def test_the_map_can_stay_the_fine_scales(backbone: DinoBackbone) -> None:
    """second_scale_map=False (models saved before it): the image score fuses both scales, the map is the fine
    scale's alone, and so are the calibration maps."""
    rng = np.random.default_rng(6)
    frames = [good_frame(rng) for _ in range(4)]
    fine_map = _fit(backbone, frames, masking="off", second_scale_map=False)
    both = _fit(backbone, frames, masking="off")
    fine = _fit(backbone, frames, masking="off", second_scale=0)
    test = [defect_frame(np.random.default_rng(8))]
    got = fine_map.predict(test)
    np.testing.assert_allclose(got.pred_score, both.predict(test).pred_score, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.anomaly_map, fine.predict(test).anomaly_map, rtol=1e-5, atol=1e-6)
    assert not np.allclose(both.predict(test).anomaly_map, got.anomaly_map, rtol=1e-3, atol=1e-4)
    for g, f in zip(fine_map.train_maps, fine.train_maps, strict=True):
        np.testing.assert_allclose(g, f, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="second_scale_map must be true or false"):
        PatchKNNConfig(second_scale_map="yes")  # type: ignore[arg-type]


def test_weight_zero_scores_as_the_fine_scale(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(1)
    frames = [good_frame(rng) for _ in range(4)]
    zero = _fit(backbone, frames, masking="off", second_scale=5, second_scale_weight=0.0)
    fine = _fit(backbone, frames, masking="off", second_scale=0)
    test = [defect_frame(np.random.default_rng(2))]
    np.testing.assert_allclose(zero.predict(test).pred_score, fine.predict(test).pred_score, rtol=1e-5)
    np.testing.assert_allclose(zero.train_scores, fine.train_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zero.predict(test).anomaly_map, fine.predict(test).anomaly_map, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("frames", "options"), [
    (3, {"patch_pooling": 5}),                          # not coarser than the fine scale
    (3, {"second_scale": 0}),                           # off
    (3, {"tiling": "on", "shorter_side": 56}),          # tiled frames
    (3, {"loo_max_images": 0}),                         # no leave-one-out scores asked for
    (1, {"loo_max_images": 0}),                         # nor from one frame
])
def test_the_second_scale_stays_off_where_it_cannot_be_calibrated(
    backbone: DinoBackbone, frames: int, options: dict[str, object]
) -> None:
    rng = np.random.default_rng(2)
    detector = _fit(backbone, [good_frame(rng) for _ in range(frames)], **{"masking": "off", **options})
    assert not detector.second_scale_active and detector.second_scale.bank.shape[0] == 0
    assert detector.predict(good_frame(rng)).pred_score.shape == (1,)


def test_add_normal_grows_both_banks_row_for_row(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(5)
    detector = _fit(backbone, [good_frame(rng) for _ in range(3)], masking="off")
    before = detector.bank_size
    odd = defect_frame(np.random.default_rng(6))
    high = float(detector.predict(odd).pred_score[0])
    detector.add_normal([odd])
    assert detector.second_scale.bank.shape == detector.memory_bank.shape and detector.bank_size > before
    assert float(detector.predict(odd).pred_score[0]) < high


def test_coreset_keeps_the_same_rows_of_both_banks(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(7)
    frames = [good_frame(rng) for _ in range(3)]
    small = _fit(backbone, frames, masking="off", max_bank_size=50)
    full = _fit(backbone, frames, masking="off")
    assert small.bank_size == 50 and small.second_scale.bank.shape == (50, full.second_scale.bank.shape[1])
    rows = [int(torch.nonzero((full.memory_bank == row).all(dim=1))[0, 0]) for row in small.memory_bank]
    torch.testing.assert_close(small.second_scale.bank, full.second_scale.bank[rows])


def test_saved_and_loaded_it_scores_the_same(backbone: DinoBackbone, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    detector = _fit(backbone, [good_frame(rng) for _ in range(4)], masking="off")
    thresholds = calibrate(detector.train_scores, good_maps=detector.train_maps)
    save_detector(detector, thresholds, tmp_path / "model", weights=None)
    loaded, _, _ = load_detector(tmp_path / "model", backbone=backbone, device="cpu")
    assert loaded.second_scale_active and loaded.second_scale.fusion == detector.second_scale.fusion
    frame = defect_frame(np.random.default_rng(9))
    np.testing.assert_allclose(loaded.predict(frame).pred_score, detector.predict(frame).pred_score, rtol=1e-5)


def test_a_model_saved_before_the_second_scale_loads_with_the_fine_scale_alone(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(10)
    detector = _fit(backbone, [good_frame(rng) for _ in range(3)], masking="off")
    tensors, info = detector.export_state()
    tensors.pop("second_bank")
    info.pop("scale_fusion")
    old = PatchKNN(backbone=backbone, config=detector.config)
    old.import_state(tensors, info)
    same = np.random.default_rng(10)    # the same three frames
    fine = _fit(backbone, [good_frame(same) for _ in range(3)], masking="off", second_scale=0)
    frame = defect_frame(np.random.default_rng(11))
    assert not old.second_scale_active
    np.testing.assert_allclose(old.predict(frame).pred_score, fine.predict(frame).pred_score, rtol=1e-5)


def test_a_saved_second_scale_must_match_its_bank_and_config(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(12)
    detector = _fit(backbone, [good_frame(rng) for _ in range(3)], masking="off")
    tensors, info = detector.export_state()
    broken = PatchKNN(backbone=backbone, config=detector.config)
    with pytest.raises(ValueError, match="second_bank"):
        broken.import_state({**tensors, "second_bank": tensors["second_bank"][:5]}, info)
    other = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, second_scale=3))
    with pytest.raises(ValueError, match="second_scale=3"):
        other.import_state(tensors, info)


@pytest.mark.parametrize(("options", "message"), [
    ({"second_scale": 1}, "second_scale must be 0"),
    ({"second_scale": -3}, "second_scale must be 0"),
    ({"second_scale_weight": -0.1}, "second_scale_weight"),
    ({"second_scale_weight": float("nan")}, "second_scale_weight"),
])
def test_config_refuses_bad_second_scale_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PatchKNNConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("spread", [None, "measured", "proportional"])
def test_good_frames_set_the_spreads_in_proportion_to_the_means_or_measured(
    backbone: DinoBackbone, spread: str | None
) -> None:
    """From several good frames each scale's spread is taken in proportion to its mean, as from one frame (the
    default), or (option "measured") is their leave-one-out scores' standard deviation: the fusion and the
    calibration follow."""
    rng = np.random.default_rng(7)
    frames = [good_frame(rng) for _ in range(4)]
    fused = _fit(backbone, frames, masking="off", **({"second_scale_spread": spread} if spread else {}))
    fine = _fit(backbone, frames, masking="off", second_scale=0)
    coarse = _fit(backbone, frames, masking="off", second_scale=0, patch_pooling=5)
    make = ScaleFusion.from_loo if spread == "measured" else ScaleFusion.from_means
    expected = make(fine.train_scores, coarse.train_scores, weight=0.2)
    assert fused.second_scale.fusion is not None
    for name in ("fine_mean", "fine_std", "coarse_mean", "coarse_std"):
        assert getattr(fused.second_scale.fusion, name) == pytest.approx(getattr(expected, name), rel=1e-5, abs=1e-7)
    calibration = expected.fuse(torch.from_numpy(fine.train_scores), torch.from_numpy(coarse.train_scores)).numpy()
    np.testing.assert_allclose(fused.train_scores, calibration, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="second_scale_spread"):
        PatchKNNConfig(second_scale_spread="median")
