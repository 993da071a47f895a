"""Aligned parts (issue 11): position-restricted kNN, the global descriptor fused with it, the alignment check.

Synthetic parts, made here: a board with dark components at fixed places (a few pixels of jitter, as on a
fixture), a board whose every place looks different (a colour gradient under the components), and a
texture of blobs at random places. A random-init ViT-S/14 cut at block 2 (as in ``test_patch_knn.py``)
tells a dark component from the light board.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.calibration import calibrate
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors._aligned import GlobalFusion, aligned_share, descriptors, global_distances
from models.saved import load_detector, save_detector

SIZE = 112  # 8 x 8 patches of 14 px
# component top-left corners (x, y), each a 28 x 28 dark square covering 2 x 2 patches
COMPONENTS = ((14, 14), (70, 14), (14, 70), (70, 70))


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


def board(rng: np.random.Generator, *, gradient: bool = False, missing: int | None = None,
          moved: tuple[int, tuple[int, int]] | None = None) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 RGB: a light board with dark components, shifted by up to 2 px.

    ``missing``: that component is left out; ``moved``: (component, new top-left) puts it elsewhere;
    ``gradient``: the board's colour changes across the frame, so every place looks different.
    """
    frame = np.full((SIZE, SIZE, 3), 200.0)
    if gradient:
        ramp = np.linspace(0.0, 1.0, SIZE)
        frame[..., 0] = 60 + 190 * ramp[None, :]
        frame[..., 1] = 60 + 190 * ramp[:, None]
    frame += rng.normal(0.0, 6.0, (SIZE, SIZE, 1))
    dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
    for i, (x, y) in enumerate(COMPONENTS):
        if i == missing:
            continue
        if moved is not None and moved[0] == i:
            x, y = moved[1]
        cv2.rectangle(frame, (x + dx, y + dy), (x + dx + 27, y + dy + 27), (30, 30, 30), thickness=-1)
    return np.clip(frame, 0, 255).astype(np.uint8)


def texture(rng: np.random.Generator) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 RGB: dark blobs at random places on a light ground (no place is special)."""
    frame = np.full((SIZE, SIZE, 3), 200.0) + rng.normal(0.0, 6.0, (SIZE, SIZE, 1))
    for _ in range(14):
        x, y = (int(v) for v in rng.integers(0, SIZE, size=2))
        cv2.circle(frame, (x, y), int(rng.integers(4, 9)), (30, 30, 30), thickness=-1)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _config(**changes: object) -> PatchKNNConfig:
    base: dict[str, object] = {"shorter_side": SIZE, "augment_rotations": False, "masking": "off"}
    return PatchKNNConfig(**{**base, **changes})  # type: ignore[arg-type]


def test_a_missing_part_is_found_by_position_restriction(backbone: DinoBackbone) -> None:
    """A component left out shows plain board, which is normal elsewhere on the part: only a search near
    each patch's own place sees that the board does not belong there."""
    rng = np.random.default_rng(0)
    goods = [board(rng) for _ in range(6)]
    tests = [board(rng), board(rng, missing=1)]
    scores = {}
    for alignment in ("off", "on"):
        detector = PatchKNN(backbone=backbone, config=_config(alignment=alignment))
        detector.fit(goods)
        assert detector.aligned == (alignment == "on")
        scores[alignment] = detector.predict(tests).pred_score
        assert np.all(np.isfinite(scores[alignment]))
    good_on, missing_on = scores["on"]
    good_off, missing_off = scores["off"]
    assert missing_on > 3 * good_on, scores
    assert missing_on > 3 * missing_off, f"the free search should find the plain board normal: {scores}"
    assert missing_off < 3 * good_off, scores


def test_alignment_on_with_one_good_frame_says_it_is_not_used(backbone: DinoBackbone,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """One frame has no leave-one-out scores to fuse on: the fit says so rather than silently ignoring "on"."""
    detector = PatchKNN(backbone=backbone, config=_config(alignment="on"))
    with caplog.at_level("WARNING", logger="models.detectors.patch_knn"):
        detector.fit([board(np.random.default_rng(1))])
    assert not detector.aligned and detector.search_radius is None
    assert "alignment 'on' is not used with one good frame" in caplog.text


def test_a_moved_part_raises_the_global_distance() -> None:
    """The global descriptor (coarse grid of pooled features) sees a component moved to an empty place."""
    rng = np.random.default_rng(1)

    def features(frame: np.ndarray) -> torch.Tensor:
        # a stand-in for patch features with a known meaning: each 14 px patch's mean colour, L2-normalised
        patches = frame.reshape(8, 14, 8, 14, 3).mean(axis=(1, 3)) + 1.0
        return torch.nn.functional.normalize(torch.from_numpy(patches).float(), dim=-1)[None]

    bank = torch.cat([descriptors(features(board(rng, gradient=True)), 4) for _ in range(5)])
    good = descriptors(features(board(rng, gradient=True)), 4)
    moved = descriptors(features(board(rng, gradient=True, moved=(0, (42, 42)))), 4)
    d_good, d_moved = global_distances(torch.cat([good, moved]), bank).tolist()
    assert d_moved > 3 * d_good
    owners = torch.arange(5)
    loo = global_distances(bank, bank, query_owner=owners, bank_owner=owners)
    assert torch.isfinite(loo).all() and (loo > 0).all(), "leave-one-out never compares a frame with itself"


def test_alignment_auto_tells_an_aligned_part_from_a_texture(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(2)
    decided = {}
    for name, make in (("part", lambda: board(rng, gradient=True)), ("texture", lambda: texture(rng))):
        detector = PatchKNN(backbone=backbone, config=_config(alignment="auto"))
        detector.fit([make() for _ in range(6)])
        decided[name] = (detector.aligned, detector.alignment_state.share)
    assert decided["part"][0] and not decided["texture"][0], decided
    part_share, texture_share = decided["part"][1], decided["texture"][1]
    assert part_share is not None and texture_share is not None
    assert part_share > 0.5 > texture_share, decided


def test_auto_alignment_fuses_the_global_term_and_saves_it(backbone: DinoBackbone) -> None:
    """On an aligned part "auto" finds a missing component, the fused scores keep their calibration meaning
    (the good frames' leave-one-out scores), and the model saves and loads with the same scores."""
    rng = np.random.default_rng(3)
    cfg = _config(alignment="auto")
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit([board(rng, gradient=True) for _ in range(6)])
    assert detector.aligned and detector.search_radius == cfg.alignment_radius
    assert detector.alignment_state.fusion is not None
    assert detector.train_scores.shape == (6,) and np.isfinite(detector.train_scores).all()
    tests = [board(rng, gradient=True), board(rng, gradient=True, missing=2)]
    scores = detector.predict(tests).pred_score
    assert scores[1] > max(detector.train_scores) and scores[0] < scores[1]

    tensors, info = detector.export_state()
    assert tensors["global_bank"].shape == (6, 16, backbone.feature_dim) and info["aligned"] is True
    loaded = PatchKNN(backbone=backbone, config=cfg)
    loaded.import_state(tensors, info)
    assert loaded.aligned
    np.testing.assert_allclose(loaded.predict(tests).pred_score, scores, rtol=1e-5)
    del tensors["global_bank"]
    with pytest.raises(ValueError, match="global_bank"):
        PatchKNN(backbone=backbone, config=cfg).import_state(tensors, info)


def test_an_aligned_model_saves_and_loads_through_the_model_folder(backbone: DinoBackbone, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    detector = PatchKNN(backbone=backbone, config=_config(alignment="on"))
    detector.fit([board(rng) for _ in range(4)])
    folder = save_detector(detector, calibrate(detector.train_scores), tmp_path / "model", weights=None)
    loaded, _, _ = load_detector(folder, backbone=backbone, device="cpu")
    frames = [board(rng), board(rng, missing=0)]
    assert loaded.aligned
    np.testing.assert_allclose(loaded.predict(frames).pred_score, detector.predict(frames).pred_score, rtol=1e-6)


def test_alignment_off_saves_the_old_layout(backbone: DinoBackbone) -> None:
    detector = PatchKNN(backbone=backbone, config=_config())
    detector.fit([board(np.random.default_rng(4)) for _ in range(3)])
    tensors, info = detector.export_state()
    assert "global_bank" not in tensors and "aligned" not in info
    assert not detector.aligned and detector.search_radius is None


def test_fusion_keeps_the_patch_units_and_takes_the_larger_z_score() -> None:
    fusion = GlobalFusion.from_loo(np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]))
    patch = torch.tensor([0.2, 0.2, 0.5])
    glob = torch.tensor([2.0, 4.0, 2.0])
    fused = fusion.fuse(patch, glob)
    std = float(np.std([0.1, 0.2, 0.3]))
    # a normal frame keeps its patch score; a far global distance counts at its z-score; so does a patch one
    np.testing.assert_allclose(fused.numpy(), [0.2, 0.2 + std * 2.0 / np.std([1.0, 2.0, 3.0]), 0.5], rtol=1e-5)
    assert GlobalFusion.from_dict(fusion.to_dict()) == fusion
    with pytest.raises(ValueError, match="finite leave-one-out"):
        GlobalFusion.from_loo(np.array([0.1, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="global_std"):
        GlobalFusion.from_dict({"patch_mean": 0.1, "patch_std": 0.1, "global_mean": 1.0})


def test_aligned_share_ignores_masked_and_unscored_patches() -> None:
    free = torch.tensor([0.0, 0.2, 0.2, 0.3, float("inf")])
    near = torch.tensor([0.0, 0.2, 0.5, 0.3, 0.1])
    assert aligned_share(free, near) == pytest.approx(2 / 3)
    assert aligned_share(torch.zeros(3), torch.zeros(3)) is None


@pytest.mark.parametrize(("changes", "match"), [
    ({"alignment": "sometimes"}, "alignment must be"),
    ({"alignment_radius": 0.0}, "alignment_radius must be > 0"),
    ({"alignment_min_share": 1.5}, "alignment_min_share must be in"),
    ({"alignment": "on", "tiling": "on"}, "alignment 'on' cannot be combined with tiling"),
])
def test_bad_alignment_options_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PatchKNNConfig(**changes)  # type: ignore[arg-type]
