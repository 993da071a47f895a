"""Brightness standardisation (PatchKNNConfig.brightness): the frame transform, and a detector that no longer
flags a good part lit darker while it still finds a defect (random-init ViT-S/14 cut at block 2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.detectors import PatchKNN, PatchKNNConfig
from models.preprocess import BRIGHTNESS_MEAN, BRIGHTNESS_SD, StandardisedFrames, standardise_brightness

SIZE = 112


def part(rng: np.random.Generator) -> np.ndarray:
    """A grey disc with a ring on a darker noisy background: (SIZE, SIZE, 3) uint8 RGB."""
    image = np.full((SIZE, SIZE, 3), 70, np.uint8)
    cv2.circle(image, (SIZE // 2, SIZE // 2), 40, (150, 160, 170), thickness=-1)
    cv2.circle(image, (SIZE // 2, SIZE // 2), 22, (110, 120, 130), thickness=3)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def lit(image: np.ndarray, gain: float, offset: float = 0.0) -> np.ndarray:
    """The same frame under other lighting: one gain and offset for every channel."""
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def with_defect(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    cv2.circle(out, (70, 44), 9, (20, 200, 40), thickness=-1)
    return out


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


def test_standardised_frames_have_one_mean_and_spread_whatever_the_lighting() -> None:
    frame = part(np.random.default_rng(0))
    outs = [standardise_brightness(lit(frame, gain, offset)) for gain, offset in ((1.0, 0), (0.6, 0), (1.2, -30))]
    for out in outs:
        assert out.dtype == np.uint8 and out.shape == frame.shape
        assert abs(float(out.mean()) - BRIGHTNESS_MEAN) < 1.0 and abs(float(out.std()) - BRIGHTNESS_SD) < 1.0
    # the same part under three lightings is (to rounding) one frame
    assert max(int(np.abs(o.astype(int) - outs[0].astype(int)).max()) for o in outs) <= 2
    flat = np.full((8, 8, 3), 30, np.uint8)
    np.testing.assert_array_equal(standardise_brightness(flat), np.full_like(flat, int(BRIGHTNESS_MEAN)))


def test_standardised_frames_are_checked_lazily_and_name_a_bad_frame() -> None:
    good = part(np.random.default_rng(0))
    frames = StandardisedFrames([good, good[..., 0], good.astype(np.float32)])
    assert len(frames) == 3
    it = iter(frames)
    assert next(it).shape == good.shape and next(it).shape == good.shape    # grayscale stacked to RGB
    with pytest.raises(ValueError, match="image 2 has dtype float32"):
        next(it)


def test_the_option_is_checked_and_saved_with_the_config() -> None:
    cfg = PatchKNNConfig(brightness="standardise")
    assert PatchKNNConfig.from_dict(cfg.to_dict()).brightness == "standardise"
    assert PatchKNNConfig().brightness == "auto"
    with pytest.raises(ValueError, match="brightness must be one of auto, as_is, standardise"):
        PatchKNNConfig(brightness="on")  # type: ignore[arg-type]


def test_a_darker_good_part_passes_and_a_defect_is_still_found(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(1)
    goods = [part(rng) for _ in range(5)]
    held_out = part(rng)
    darker = lit(held_out, 0.55)
    defect = with_defect(held_out)
    scores = {}
    for mode in ("as_is", "standardise"):
        detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(
            shorter_side=SIZE, masking="off", augment_rotations=False, brightness=mode))  # type: ignore[arg-type]
        detector.fit(iter(goods))       # any iterable: counted once it is listed
        scores[mode] = detector.predict([held_out, darker, defect]).pred_score
    good_as_is, dark_as_is, defect_as_is = scores["as_is"]
    good_std, dark_std, defect_std = scores["standardise"]
    assert dark_as_is > 3.0 * good_as_is, "as is, the darker lighting alone moves the score"
    assert dark_std < good_std + 0.25 * (defect_std - good_std), scores
    assert defect_std > 2.0 * max(good_std, dark_std), scores


def test_added_good_frames_are_standardised_too(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(2)
    cfg = PatchKNNConfig(shorter_side=SIZE, masking="off", augment_rotations=False, brightness="standardise")
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit([part(rng) for _ in range(3)])
    extra = part(rng)
    before = float(detector.predict(extra).pred_score[0])
    detector.add_normal([lit(extra, 0.5)])      # the same part, darker: standardised it is the frame above
    assert float(detector.predict(extra).pred_score[0]) < 0.5 * before


@pytest.mark.parametrize(("brightness", "masking", "active"), [
    ("auto", "off", True), ("auto", "on", False), ("as_is", "off", False), ("standardise", "on", True)])
def test_auto_standardises_a_scene_that_fills_the_frame_and_not_a_part_on_a_background(
        backbone: DinoBackbone, brightness: str, masking: str, active: bool) -> None:
    cfg = PatchKNNConfig(shorter_side=SIZE, masking=masking, augment_rotations=False,  # type: ignore[arg-type]
                         brightness=brightness)  # type: ignore[arg-type]
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit([part(np.random.default_rng(i)) for i in range(3)])
    assert detector.brightness_active is active
    tensors, info = detector.export_state()
    assert info["brightness_active"] is active
    info.pop("brightness_active")       # a model saved before the option: frames as they are
    old = PatchKNN(backbone=backbone, config=cfg)
    old.import_state(tensors, info)
    assert old.brightness_active is False


REAL_SIDE = 224


def loose_part(rng: np.random.Generator) -> np.ndarray:
    """A small part on a flat background (the border ring is background): (REAL_SIDE, REAL_SIDE, 3) uint8."""
    image = np.full((REAL_SIDE, REAL_SIDE, 3), 40, np.uint8)
    cv2.ellipse(image, (REAL_SIDE // 2, REAL_SIDE // 2), (50, 34), 30, 0, 360, (170, 140, 90), thickness=-1)
    cv2.circle(image, (REAL_SIDE // 2, REAL_SIDE // 2), 14, (90, 70, 40), thickness=-1)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def texture(rng: np.random.Generator) -> np.ndarray:
    """A surface that fills the frame: (REAL_SIDE, REAL_SIDE, 3) uint8."""
    noise = cv2.GaussianBlur(rng.normal(0, 1, (REAL_SIDE, REAL_SIDE)).astype(np.float32), (0, 0), 3)
    return np.clip(120 + 400 * noise[..., None], 0, 255).astype(np.uint8).repeat(3, axis=2)


def test_auto_decides_as_masking_would_on_the_real_features(real_backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(3)
    decided = {}
    for name, make in (("part", loose_part), ("texture", texture)):
        detector = PatchKNN(backbone=real_backbone,
                            config=PatchKNNConfig(shorter_side=REAL_SIDE, augment_rotations=False))
        detector.fit([make(rng) for _ in range(2)])
        decided[name] = (detector.brightness_active, detector.masking_active)
    assert decided == {"part": (False, True), "texture": (True, False)}


@pytest.mark.parametrize("rotations", [False, True])
def test_fit_keeps_the_probed_frames_features_when_auto_leaves_them_as_is(
        real_backbone: DinoBackbone, rotations: bool) -> None:
    """The brightness probe's backbone passes are not repeated by the fit: the same bank, each view extracted once."""
    rng = np.random.default_rng(7)
    frames = [loose_part(rng) for _ in range(5)] + [loose_part(rng)[:, 16:]]      # the last one of another size
    seen: list[int] = []
    hook = real_backbone.register_forward_hook(lambda module, args, out: seen.append(int(args[0].shape[0])))
    fitted, progress = {}, []
    try:
        for mode in ("auto", "as_is"):
            seen.clear()
            detector = PatchKNN(backbone=real_backbone, config=PatchKNNConfig(
                shorter_side=REAL_SIDE, augment_rotations=rotations, brightness=mode, fit_batch_size=3,
                loo_max_images=0))  # type: ignore[arg-type]
            detector.fit(frames, progress=lambda done, total, mode=mode: progress.append((mode, done, total)))
            views = len(frames) * len(detector.config.rotation_angles if rotations else (0.0,))
            assert sum(seen) == views, (mode, seen)       # every view through the backbone once
            fitted[mode] = detector
    finally:
        hook.remove()
    auto, plain = fitted["auto"], fitted["as_is"]
    assert auto.brightness_active is False and auto.masking_active is True
    torch.testing.assert_close(auto.bank_owner, plain.bank_owner, rtol=0, atol=0)     # the views in one order
    torch.testing.assert_close(auto.memory_bank.float(), plain.memory_bank.float(), atol=2e-2, rtol=1e-2)
    assert [p[1:] for p in progress if p[0] == "auto"] == [(i, len(frames)) for i in range(1, len(frames) + 1)]


def test_zero_shot_decides_on_the_batch_as_the_few_shot_path(real_backbone: DinoBackbone) -> None:
    from models.detectors.zero_shot import ZeroShotConfig, ZeroShotScorer

    rng = np.random.default_rng(4)
    decided = {}
    for name, make in (("part", loose_part), ("texture", texture)):
        scorer = ZeroShotScorer(backbone=real_backbone, config=ZeroShotConfig(shorter_side=REAL_SIDE))
        assert scorer.brightness_active is None                   # "auto": not known before the first frames
        scorer.add([make(rng) for _ in range(2)])
        decided[name] = scorer.brightness_active
    assert decided == {"part": False, "texture": True}
    with pytest.raises(ValueError, match="brightness must be one of auto, as_is, standardise"):
        ZeroShotConfig(brightness="on")


def test_zero_shot_standardised_a_darker_frame_of_the_lot_is_not_an_outlier(backbone: DinoBackbone) -> None:
    from models.detectors.zero_shot import ZeroShotConfig, ZeroShotScorer

    rng = np.random.default_rng(5)
    batch = [part(rng) for _ in range(7)] + [lit(part(rng), 0.55)]
    scores = {}
    for mode in ("as_is", "standardise"):
        scorer = ZeroShotScorer(backbone=backbone, config=ZeroShotConfig(
            shorter_side=SIZE, brightness=mode, scales=(1,), rescore_k=()))
        scorer.add(batch)
        assert scorer.brightness_active is (mode == "standardise")
        scores[mode] = scorer.score().pred_score
    assert scores["as_is"][7] > 2.0 * scores["as_is"][:7].max(), scores
    assert scores["standardise"][7] < 1.5 * float(np.median(scores["standardise"][:7])), scores


def test_zero_shot_auto_keeps_the_probed_frames_features_when_it_leaves_them_as_is(real_backbone: DinoBackbone) -> None:
    """The decision's extra backbone passes are not wasted where the frames stay as they are."""
    from models.detectors.zero_shot import ZeroShotConfig, ZeroShotScorer

    rng = np.random.default_rng(6)
    frames = [loose_part(rng) for _ in range(6)]
    seen: list[int] = []
    hook = real_backbone.register_forward_hook(lambda module, args, out: seen.append(int(args[0].shape[0])))
    try:
        scorers = {}
        for mode in ("auto", "as_is"):
            seen.clear()
            scorers[mode] = ZeroShotScorer(backbone=real_backbone, config=ZeroShotConfig(shorter_side=REAL_SIDE,
                                                                                          brightness=mode))
            with torch.inference_mode():
                scorers[mode].add(frames)
            assert sum(seen) == len(frames), (mode, seen)       # each frame through the backbone once
    finally:
        hook.remove()
    assert scorers["auto"].brightness_active is False and len(scorers["auto"]) == len(frames)
    for auto, plain in zip(scorers["auto"]._entries, scorers["as_is"]._entries, strict=True):
        assert auto.grid == plain.grid
        torch.testing.assert_close(auto.features.float(), plain.features.float(), atol=2e-2, rtol=1e-2)
