"""PatchKNN: fit/predict on tiny synthetic frames, kNN and coreset exactness, masking, errors.

Most tests use a random-init ViT-S/14 (timm, no weights) cut at block 2 for speed: its patch
features still tell a drawn blob from a flat noisy texture. One test checks the same on the real
DINOv2 weights (block 8).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.detectors import (
    Detection,
    PatchKNN,
    PatchKNNConfig,
    available_detectors,
    create_detector,
)
from models.detectors._foreground import foreground_masks, mask_fractions
from models.detectors._knn import greedy_coreset, knn_distances

SIZE = 112  # frames are 112 x 112: 8 x 8 patches at shorter_side 112
CFG = PatchKNNConfig(shorter_side=SIZE)
PATCHES = (SIZE // 14) ** 2
# frames here are flat noise, which brightness standardisation amplifies about 3x, on random features: tests of
# mechanisms whose numbers were set on the raw frames keep them as they are (tests/models/test_brightness.py)
AS_IS = "as_is"


def good_frame(rng: np.random.Generator, size: int = SIZE, width: int | None = None) -> np.ndarray:
    """A flat grey part with fine noise: (size, width, 3) uint8 RGB."""
    width = width or size
    noise = rng.normal(0.0, 12.0, (size, width, 1))
    return np.clip(128.0 + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)


def defect_frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A good frame with a green blob drawn at (70, 40): (frame uint8 RGB, mask bool)."""
    frame = good_frame(rng)
    cv2.circle(frame, (70, 40), 10, (20, 200, 40), thickness=-1)
    mask = np.zeros(frame.shape[:2], np.uint8)
    cv2.circle(mask, (70, 40), 10, 1, thickness=-1)
    return frame, mask.astype(bool)


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


@pytest.fixture(scope="module")
def fitted(backbone: DinoBackbone) -> PatchKNN:
    rng = np.random.default_rng(0)
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, augment_rotations=False))
    detector.fit([good_frame(rng) for _ in range(4)])
    return detector


# ------------------------------------------------------------------------------- fit and predict


def test_fit_builds_bank_with_rotations_and_reports_progress(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(0)
    calls: list[tuple[int, int]] = []
    detector = PatchKNN(backbone=backbone, config=CFG)
    frames = [good_frame(rng) for _ in range(2)]
    detector.fit(frames, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert detector.rotations_used  # "auto": 2 shots <= rotation_max_shots
    assert detector.bank_size == 2 * 8 * PATCHES
    assert detector.train_scores.shape == (2,) and detector.train_scores.dtype == np.float32
    assert np.isfinite(detector.train_scores).all()
    assert [m.shape for m in detector.train_maps] == [(SIZE, SIZE)] * 2


@pytest.mark.parametrize(("rotations", "max_shots", "views"), [(False, 8, 1), ("auto", 1, 1), (True, 1, 3)])
def test_rotation_option(backbone: DinoBackbone, rotations: bool | str, max_shots: int, views: int) -> None:
    rng = np.random.default_rng(0)
    cfg = PatchKNNConfig(shorter_side=56, augment_rotations=rotations, rotation_max_shots=max_shots,
                         rotation_angles=(0, 45, 90), rotation_background=True)  # every view's patches counted
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit(iter([good_frame(rng, 56), good_frame(rng, 56)]))  # a plain iterator works too
    assert detector.bank_size == 2 * views * 16


def test_predict_shapes_for_one_frame_a_batch_and_mixed_sizes(fitted: PatchKNN) -> None:
    rng = np.random.default_rng(1)
    one = fitted.predict(good_frame(rng))
    assert isinstance(one, Detection)
    assert one.pred_score.shape == (1,) and one.pred_score.dtype == np.float32
    assert one.anomaly_map.shape == (1, SIZE, SIZE) and one.anomaly_map.dtype == np.float32

    batch = np.stack([good_frame(rng) for _ in range(3)])
    out = fitted.predict(batch, batch_size=2)
    assert out.pred_score.shape == (3,) and out.anomaly_map.shape == (3, SIZE, SIZE)

    frames = [good_frame(rng, 70, 98), good_frame(rng), good_frame(rng, 70, 98)[..., 0]]  # last: grayscale
    mixed = fitted.predict(frames)
    assert isinstance(mixed.anomaly_map, list)
    assert [m.shape for m in mixed.anomaly_map] == [(70, 98), (SIZE, SIZE), (70, 98)]
    # the same frame gives the same score alone and in a mixed batch
    alone = fitted.predict(frames[0])
    np.testing.assert_allclose(alone.pred_score[0], mixed.pred_score[0], rtol=1e-5)


def test_tiny_frame_is_upscaled(fitted: PatchKNN) -> None:
    out = fitted.predict(good_frame(np.random.default_rng(2), 9, 12))
    assert out.anomaly_map.shape == (1, 9, 12)
    assert np.isfinite(out.pred_score).all()


def test_defect_scores_above_good_and_heatmap_peak_in_mask(fitted: PatchKNN) -> None:
    rng = np.random.default_rng(3)
    goods = fitted.predict([good_frame(rng) for _ in range(4)])
    frame, mask = defect_frame(rng)
    bad = fitted.predict(frame)
    assert bad.pred_score[0] > goods.pred_score.max(), (bad.pred_score, goods.pred_score)
    peak = np.unravel_index(np.argmax(bad.anomaly_map[0]), mask.shape)
    assert mask[peak], f"heatmap peak {peak} is outside the drawn defect"


def test_real_backbone_finds_the_blob(real_backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(4)
    cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False)
    detector = PatchKNN(backbone=real_backbone, config=cfg)
    detector.fit([good_frame(rng) for _ in range(2)])
    frame, mask = defect_frame(rng)
    out = detector.predict([good_frame(rng), frame])
    assert out.pred_score[1] > out.pred_score[0]
    assert mask[np.unravel_index(np.argmax(out.anomaly_map[1]), mask.shape)]


def test_add_normal_teaches_a_new_look(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(5)
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, augment_rotations=False))
    detector.fit([good_frame(rng) for _ in range(2)])
    frame, _ = defect_frame(rng)
    before = detector.predict(frame).pred_score[0]
    size = detector.bank_size
    detector.add_normal([frame])
    assert detector.bank_size == size + PATCHES
    assert detector.predict(frame).pred_score[0] < 0.5 * before


def test_leave_one_out_excludes_the_frames_own_rotations(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(6)
    frames = [good_frame(rng), good_frame(rng)]
    cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=True, rotation_angles=(0, 90, 180, 270))
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit(frames)
    # against the full bank a training frame matches itself exactly; leave-one-out must not
    assert detector.predict(frames[0]).pred_score[0] < 1e-3
    assert (detector.train_scores > 1e-2).all(), detector.train_scores


def test_single_shot_calibrates_on_regions_of_the_one_frame(backbone: DinoBackbone) -> None:
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE))
    frame = good_frame(np.random.default_rng(7))
    detector.fit([frame])
    assert detector.bank_size == 8 * PATCHES
    # no second frame to leave out: one score per left-out radius (1, 2, 3 patches), each patch
    # matched only by patches of the same frame farther away than the radius
    scores = detector.train_scores
    assert scores.shape == (3,) and np.isfinite(scores).all() and (scores > 1e-3).all(), scores
    assert [m.shape for m in detector.train_maps] == [(SIZE, SIZE)] * 3
    # leaving more out never makes a patch's nearest match nearer
    assert scores[0] <= scores[1] + 1e-6 <= scores[2] + 2e-6, scores
    # a defect scores above them all
    assert detector.predict(defect_frame(np.random.default_rng(8))[0]).pred_score[0] > scores.max()


def test_one_good_image_real_weights_flags_a_seeded_defect(real_backbone: DinoBackbone) -> None:
    from models.calibration import calibrate
    from tests.helpers.images import textured_part, with_defect

    rng = np.random.default_rng(12)
    size = 168                                   # 12 x 12 patches

    def rgb(bgr: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    detector = PatchKNN(backbone=real_backbone, config=PatchKNNConfig(shorter_side=size))
    detector.fit([rgb(textured_part(rng, size))])               # ONE good image, rotations on ("auto")
    t = calibrate(detector.train_scores, good_maps=detector.train_maps)
    goods = [float(detector.predict(rgb(textured_part(rng, size))).pred_score[0]) for _ in range(3)]
    defects = [float(detector.predict(rgb(with_defect(textured_part(rng, size), rng)[0])).pred_score[0])
               for _ in range(3)]
    assert max(goods) < t.review, (goods, t.review)
    assert min(defects) >= t.review, (defects, t.review)        # every seeded defect is flagged


def test_single_shot_on_a_tiny_grid_has_no_calibration_scores(backbone: DinoBackbone) -> None:
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=56))
    detector.fit([good_frame(np.random.default_rng(7), 56)])       # 4 x 4 patches: no region to leave out
    assert detector.bank_size == 8 * 16
    assert detector.train_scores.shape == (0,)


def test_coreset_reduces_bank_to_requested_size(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(8)
    cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False, max_bank_size=50)
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit([good_frame(rng) for _ in range(3)])
    assert detector.bank_size == 50
    assert detector.bank_owner.shape == (50,)
    assert detector.train_scores.shape == (3,)


def test_masking_paths_run(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(9)
    for masking in ("on", "auto", "off"):
        cfg = PatchKNNConfig(shorter_side=SIZE, masking=masking, augment_rotations=False, brightness=AS_IS)
        detector = PatchKNN(backbone=backbone, config=cfg)
        detector.fit([good_frame(rng) for _ in range(2)])
        assert detector.masking_active == (masking == "on")  # random features: auto finds no object
        out = detector.predict(defect_frame(rng)[0])
        assert np.isfinite(out.pred_score).all()


def part_on_plain_background(rng: np.random.Generator) -> np.ndarray:
    """A bright textured ellipse on a dark flat background: (SIZE, SIZE, 3) uint8 RGB."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    part = ((yy - SIZE / 2) / 30) ** 2 + ((xx - SIZE / 2) / 18) ** 2 < 1
    noise = rng.normal(0, 1, (SIZE, SIZE, 1))
    frame = np.where(part[..., None], 170.0 + 25 * noise, 30.0 + 3 * noise)
    return np.clip(frame, 0, 255).astype(np.uint8).repeat(3, axis=2)


def test_rotated_views_bank_their_foreground_only_when_frames_are_masked(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(21)
    frames = [part_on_plain_background(rng) for _ in range(3)]
    more = part_on_plain_background(rng)
    fitted = {}
    for background in (True, False):
        cfg = PatchKNNConfig(shorter_side=SIZE, masking="on", augment_rotations=True, rotation_background=background,
                             brightness=AS_IS)
        fitted[background] = PatchKNN(backbone=backbone, config=cfg)
        fitted[background].fit(frames)
    full, lean = fitted[True], fitted[False]
    assert full.bank_size == 3 * 8 * PATCHES
    assert 3 * PATCHES < lean.bank_size < full.bank_size / 2   # the frames' own views whole, rotations' part only
    for owner in range(3):   # each frame's own view is banked whole
        assert int((lean.bank_owner == owner).sum()) >= PATCHES
    nearest = torch.cdist(lean.memory_bank.float(), full.memory_bank.float(),
                          compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert float(nearest.max()) < 1e-5   # rows kept, not changed
    assert lean.second_scale.bank.shape[0] in (0, lean.bank_size)   # the coarse bank follows row for row
    # a good part scores as before: its patches are matched on the part, which both banks hold
    test = part_on_plain_background(rng)
    assert lean.predict(test).pred_score[0] == pytest.approx(full.predict(test).pred_score[0], rel=0.1)
    # frames added later are banked the same way
    before = lean.bank_size
    lean.add_normal([more])
    assert PATCHES < lean.bank_size - before < 8 * PATCHES / 2
    # unmasked frames bank every view whole, whatever the option
    unmasked = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, masking="off", brightness=AS_IS,
                                                                 augment_rotations=True, rotation_background=False))
    unmasked.fit(frames)
    assert unmasked.bank_size == full.bank_size


@pytest.mark.parametrize("pooling", [2, 3])
def test_patch_pooling_keeps_the_grid(backbone: DinoBackbone, pooling: int) -> None:
    rng = np.random.default_rng(11)
    cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False, patch_pooling=pooling, brightness=AS_IS)
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit([good_frame(rng) for _ in range(2)])
    assert detector.bank_size == 2 * PATCHES
    frame, mask = defect_frame(rng)
    out = detector.predict([good_frame(rng), frame])
    assert out.pred_score[1] > out.pred_score[0]
    assert torch.allclose(detector.memory_bank.norm(dim=1), torch.ones(1), atol=1e-5)


def test_position_radius_finds_a_swapped_layout(backbone: DinoBackbone) -> None:
    """Dark left / bright right is the good layout; the mirrored frame only looks wrong by position."""
    rng = np.random.default_rng(13)

    def layout(flipped: bool) -> np.ndarray:
        frame = good_frame(rng)
        frame[:, : SIZE // 2] //= 3  # dark half
        return np.ascontiguousarray(frame[:, ::-1]) if flipped else frame

    scores = {}
    for radius in (None, 0.3):
        cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False, position_radius=radius)
        detector = PatchKNN(backbone=backbone, config=cfg)
        detector.fit([layout(False) for _ in range(2)])
        assert detector.bank_pos.shape == (detector.bank_size, 2)
        out = detector.predict([layout(False), layout(True)])
        scores[radius] = out.pred_score
    good, swapped = scores[0.3]
    assert swapped > 2 * good, scores
    assert swapped > 2 * scores[None][1], "only the positional search should see the swap"


# ------------------------------------------------------------------------------- masks


def _object_features(flip: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Features of an object (the central 9x9) on a background: one strong direction separates them."""
    h = w = d = 16
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, h, w, d, generator=gen)
    obj = np.zeros((h, w), bool)
    obj[3:12, 3:12] = True  # exactly the central crop (border 0.2 of 16 patches)
    direction = torch.zeros(d)
    direction[0] = 1.0
    sign = -1.0 if flip else 1.0
    feats[0][torch.from_numpy(obj)] += sign * 40.0 * direction
    feats[0][torch.from_numpy(~obj)] -= sign * 40.0 * direction
    return feats, obj


@pytest.mark.parametrize("flip", [False, True])
def test_foreground_mask_finds_the_object_whatever_the_pc_sign(flip: bool) -> None:
    feats, obj = _object_features(flip=flip)
    mask = foreground_masks(feats, threshold=10.0, kernel_size=1)[0].numpy()
    np.testing.assert_array_equal(mask, obj)
    dilated = foreground_masks(feats, threshold=10.0, kernel_size=3)[0].numpy()
    kernel = np.ones((3, 3), np.uint8)  # AnomalyDINO's cleanup in cv2, as anomalib does it
    dilated_cv2 = cv2.dilate(obj.astype(np.uint8), kernel)
    expected = cv2.morphologyEx(dilated_cv2, cv2.MORPH_CLOSE, kernel).astype(bool)
    np.testing.assert_array_equal(dilated, expected)
    overall, border = mask_fractions(torch.from_numpy(obj)[None], border=0.2)
    assert float(border[0]) == 0.0 and float(overall[0]) == pytest.approx(81 / 256)


def test_masked_out_patches_score_zero(backbone: DinoBackbone, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(10)
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, masking="on",
                                                                 augment_rotations=False, blur_sigma=0))
    detector.fit([good_frame(rng) for _ in range(2)])
    keep = torch.zeros(1, 8, 8, dtype=torch.bool)  # 8 x 8 patches
    keep[:, 2:6, 2:6] = True
    monkeypatch.setattr(detector, "_masks", lambda raw: keep.clone())
    detector.reference_foreground = 0.25
    patch_scores = detector._patch_scores(detector._features([defect_frame(rng)[0]])[0])
    assert (patch_scores[~keep] == 0).all() and (patch_scores[keep] > 0).all()
    # a frame whose mask is much smaller than the references' is scored everywhere instead
    detector.reference_foreground = 1.0
    patch_scores = detector._patch_scores(detector._features([defect_frame(rng)[0]])[0])
    assert (patch_scores > 0).all()


# ------------------------------------------------------------------------------- kNN and coreset


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)


@pytest.mark.parametrize("k", [1, 3])
def test_chunked_knn_equals_unchunked(k: int) -> None:
    queries, bank = _unit(300, 32, 0), _unit(1000, 32, 1)
    full = knn_distances(queries, bank, k=k, chunk_size=10**6, query_chunk_size=10**6)
    chunked = knn_distances(queries, bank, k=k, chunk_size=97, query_chunk_size=41)
    brute = (1 - queries @ bank.T).clamp(0, 2).topk(k, dim=1, largest=False).values.mean(dim=1)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(full, brute, rtol=0, atol=1e-6)


def test_knn_skips_bank_entries_of_the_same_owner() -> None:
    bank = _unit(40, 8, 2)
    queries = bank[:5].clone()
    owners = torch.arange(40) // 10  # 4 owners of 10 entries
    plain = knn_distances(queries, bank, chunk_size=7)
    assert (plain < 1e-5).all()  # each query is in the bank
    query_owner = torch.zeros(5, dtype=torch.int64)
    loo = knn_distances(queries, bank, chunk_size=7, query_owner=query_owner, bank_owner=owners)
    expected = (1 - queries @ bank[10:].T).min(dim=1).values
    torch.testing.assert_close(loo, expected, rtol=0, atol=1e-6)


def test_knn_radius_only_matches_nearby_positions() -> None:
    bank = _unit(50, 8, 3)
    queries = bank[:4].clone()
    bank_pos = torch.rand(50, 2, generator=torch.Generator().manual_seed(0))
    query_pos = bank_pos[:4] + 0.5  # every query far from its own twin in the bank
    near = torch.cdist(query_pos, bank_pos) <= 0.4
    out = knn_distances(queries, bank, chunk_size=9, query_pos=query_pos, bank_pos=bank_pos, radius=0.4)
    dist = (1 - queries @ bank.T).masked_fill(~near, float("inf"))
    torch.testing.assert_close(out, dist.min(dim=1).values.clamp(min=0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="a search radius needs query_pos and bank_pos"):
        knn_distances(queries, bank, radius=0.4)


def test_coreset_keeps_the_farthest_points() -> None:
    gen = torch.Generator().manual_seed(0)
    cluster = torch.randn(500, 256, generator=gen) * 0.01
    far = torch.eye(256)[:5] * 10.0  # five isolated points far from the cluster and each other
    features = torch.cat([cluster, far])
    chosen = greedy_coreset(features, 6, projection_dim=128, seed=0)
    assert chosen.shape == (6,)
    assert set(range(500, 505)) <= set(chosen.tolist())
    assert greedy_coreset(features, 10_000).shape == (505,)


# ------------------------------------------------------------------------------- errors and registry


def test_predict_before_fit_says_so(backbone: DinoBackbone) -> None:
    with pytest.raises(ValueError, match=r"not fitted: call fit\(\) with good images first"):
        PatchKNN(backbone=backbone, config=CFG).predict(good_frame(np.random.default_rng(0)))


def test_fit_without_images_says_so(backbone: DinoBackbone) -> None:
    with pytest.raises(ValueError, match="no good images to fit on"):
        PatchKNN(backbone=backbone, config=CFG).fit([])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), r"image 0 is empty \(shape \(0, 10, 3\)\)"),
        (np.zeros((20, 20, 3), np.float32), "image 0 has dtype float32; expected uint8"),
        (np.zeros((20, 20, 4), np.uint8), "image 0 has 4 channels .* expected 3"),
        (np.zeros((20, 20, 3, 2, 1), np.uint8), "expected \\(H, W, 3\\)"),
        (np.zeros((10, 400, 3), np.uint8), "too elongated"),
    ],
)
def test_bad_frames_get_clear_messages(fitted: PatchKNN, frame: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fitted.predict(frame)


def test_bad_frame_in_fit_is_named(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="image 1 has dtype uint16"):
        PatchKNN(backbone=backbone, config=CFG).fit([good_frame(rng), good_frame(rng).astype(np.uint16)])


def test_registry_names_and_unknown_name(backbone: DinoBackbone) -> None:
    assert "patch_knn" in available_detectors()
    assert isinstance(create_detector("patch_knn", backbone=backbone, config=CFG), PatchKNN)
    with pytest.raises(ValueError, match="unknown detector 'knn'; available: patch_knn"):
        create_detector("knn", backbone=backbone)


def test_config_validates_and_round_trips() -> None:
    cfg = PatchKNNConfig(k=3, max_bank_size=1000, masking="off")
    assert PatchKNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="PatchKNNConfig.k must be an integer >= 1, got 0"):
        PatchKNNConfig(k=0)
    with pytest.raises(ValueError, match="PatchKNNConfig.masking must be 'auto', 'on' or 'off'"):
        PatchKNNConfig(masking="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown PatchKNNConfig option.*'kk'"):
        PatchKNNConfig.from_dict({"kk": 1})
    with pytest.raises(ValueError, match="PatchKNNConfig.rotation_background must be true or false, got 'no'"):
        PatchKNNConfig(rotation_background="no")  # type: ignore[arg-type]


@pytest.mark.gpu
def test_cuda_matches_cpu(backbone: DinoBackbone) -> None:
    """fp16 kNN on CUDA agrees with the float32 CPU path (deselected by default: needs a GPU)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(12)
    frames = [good_frame(rng) for _ in range(3)]
    frame, mask = defect_frame(rng)
    cfg = PatchKNNConfig(shorter_side=SIZE)
    cpu = PatchKNN(backbone=backbone, config=cfg)
    cpu.fit(frames)
    gpu_backbone = create_backbone("vit_small_patch14_dinov2", blocks=(2,), device="cuda")
    gpu_backbone.load_state_dict(backbone.state_dict())
    gpu = PatchKNN(backbone=gpu_backbone, config=cfg)
    gpu.fit(frames)
    assert gpu.memory_bank.dtype == torch.float16 and gpu.bank_size == cpu.bank_size
    a, b = cpu.predict(frame), gpu.predict(frame)
    np.testing.assert_allclose(b.pred_score, a.pred_score, atol=5e-3)
    assert mask[np.unravel_index(np.argmax(b.anomaly_map[0]), mask.shape)]
    np.testing.assert_allclose(gpu.train_scores, cpu.train_scores, atol=5e-3)
    chosen = greedy_coreset(gpu.memory_bank, 100)
    assert chosen.device.type == "cuda" and chosen.unique().numel() == 100
