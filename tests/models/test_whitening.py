"""The good patches' feature space (models.detectors._whitening): the map's arithmetic, that it lifts a small
departure in a direction good patches never take above the large normal variation they do take, and that a
detector fits it, saves it, loads it, and leaves it off where it should."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import DinoBackbone, create_backbone
from models.calibration import calibrate
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors._scales import pooled_unit
from models.detectors._whitening import MIN_ROWS_PER_DIM, FeatureWhitening
from models.detectors.patch_knn_core import PatchKNNCore
from models.saved import load_detector, save_detector
from tests.helpers.images import textured_part, with_defect

SIZE = 224  # 16 x 16 patches: 16 good frames give ten patches per feature number of the test backbone


def _rows(rng: np.random.Generator, n: int, dim: int = 16) -> torch.Tensor:
    """Good patch features: a common part, a texture that varies in 8 directions (one of them a lot), and small
    noise in the others."""
    x = rng.normal(0.0, 0.1, (n, dim))
    x[:, :8] += rng.normal(0.0, 1.0, (n, 8))
    x[:, 0] += rng.normal(0.0, 4.0, n)
    x[:, 8] += 6.0
    return torch.from_numpy(x).float()


def test_the_map_whitens_the_good_rows_shrunk_towards_centring() -> None:
    rows = _rows(np.random.default_rng(0), 4000)
    whitening = FeatureWhitening()
    assert not whitening.active
    assert torch.equal(whitening(rows), rows)                     # unfitted: the identity
    whitening.fit([rows[:1500], rows[1500:]], shrink=1.0)
    assert whitening.active
    mapped = whitening(rows).double()
    assert mapped.mean(dim=0).abs().max() < 1e-4                   # centred
    evals = torch.linalg.eigvalsh(torch.cov(rows.double().T))
    want = evals / (evals + evals.mean())                          # each direction's variance after the map
    got = torch.linalg.eigvalsh(torch.cov(mapped.T))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-6)
    whitening.clear()
    assert not whitening.active


def test_the_map_refuses_what_it_cannot_fit_and_stays_off_on_too_few_patches() -> None:
    with pytest.raises(ValueError, match="needs good patches"):
        FeatureWhitening().fit([], shrink=1.0)
    with pytest.raises(ValueError, match="shrink must be > 0"):
        FeatureWhitening().fit([torch.randn(500, 4)], shrink=0.0)
    whitening = FeatureWhitening()
    assert whitening.fit([torch.randn(400, 16)], shrink=1.0)
    few = torch.randn(MIN_ROWS_PER_DIM * 16 - 1, 16)            # fewer than ten good patches per dimension
    assert not whitening.fit([few], shrink=1.0)
    assert not whitening.active and torch.equal(whitening(few), few)


def test_pooling_commutes_with_the_map() -> None:
    raw = torch.randn(4, 7, 8, 16) + 2.0
    whitening = FeatureWhitening()
    whitening.fit([raw.reshape(-1, 16)], shrink=0.5)
    pooled = pooled_unit(raw, 3, whitening)
    by_hand = F.normalize(whitening(_mean_pool(raw, 3)), dim=-1)
    np.testing.assert_allclose(pooled.numpy(), by_hand.numpy(), atol=1e-5)
    np.testing.assert_allclose(pooled.norm(dim=-1).numpy(), 1.0, rtol=1e-5)


def _mean_pool(raw: torch.Tensor, size: int) -> torch.Tensor:
    grid = F.avg_pool2d(raw.permute(0, 3, 1, 2), size, stride=1, padding=size // 2, count_include_pad=False)
    return grid.permute(0, 2, 3, 1)


def test_a_departure_good_patches_never_take_outranks_their_normal_variation() -> None:
    """A small step in a direction no good patch varies in, against new good patches of the same texture: the
    share of (defect, good) pairs ranked right (a patch AUROC) rises from about 0.8 to above 0.9 whitened."""
    rng = np.random.default_rng(0)
    bank_rows = _rows(rng, 200)
    good = _rows(rng, 400)
    defect = _rows(rng, 20)
    defect[:, 12] += 1.5
    queries = torch.cat([good, defect]).reshape(1, 1, -1, 16)

    def ranked_right(whitened: bool) -> float:
        core = PatchKNNCore(nn.Identity())
        if whitened:
            core.whitening.fit([bank_rows], shrink=1.0)
        bank = pooled_unit(bank_rows.reshape(1, 1, -1, 16), 1, core.whitening).reshape(-1, 16)
        scores = core.patch_scores(queries, bank).reshape(-1).numpy()
        return float((scores[400:, None] > scores[None, :400]).mean())

    plain, whitened = ranked_right(False), ranked_right(True)
    assert plain < 0.85
    assert whitened > 0.9 and whitened > plain + 0.1


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


def _frames(seed: int, n: int, *, defect: bool = False) -> list[np.ndarray]:
    """Textured parts on a background (RGB), each with a seeded defect when ``defect``."""
    rng = np.random.default_rng(seed)
    frames = [textured_part(rng, SIZE) for _ in range(n)]
    if defect:
        frames = [with_defect(frame, rng)[0] for frame in frames]
    return [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in frames]


def _fit(backbone: DinoBackbone, **options: object) -> PatchKNN:
    config = PatchKNNConfig(**{"shorter_side": SIZE, "augment_rotations": False, "whitening": True,
                               **options})  # type: ignore[arg-type]
    detector = PatchKNN(backbone=backbone, config=config)
    detector.fit(_frames(0, 16))
    return detector


@pytest.fixture(scope="module")
def fitted(real_backbone: DinoBackbone) -> PatchKNN:
    return _fit(real_backbone)


def test_a_detector_fits_the_map_and_flags_every_seeded_defect(fitted: PatchKNN, real_backbone: DinoBackbone) -> None:
    detector = fitted
    assert detector.core.whitening.active
    assert detector.second_scale.bank.shape[0] > 0                 # the coarse scale in the same space
    thresholds = calibrate(detector.train_scores, good_maps=detector.train_maps)
    good = detector.predict(_frames(1, 4)).pred_score
    bad = detector.predict(_frames(2, 4, defect=True)).pred_score
    assert good.max() < thresholds.review <= bad.min(), (good, thresholds.review, bad)
    assert not _fit(real_backbone, whitening=False).core.whitening.active


def test_a_tiled_fit_stays_in_the_raw_space_and_says_so(backbone: DinoBackbone,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, augment_rotations=False,
                                                                 tiling="on", tile_size=112, whitening=True))
    with caplog.at_level("WARNING", logger="models.detectors.patch_knn"):
        detector.fit(_frames(0, 2))                                # its tiles are embedded on their own path
    assert detector.tiling_active and not detector.core.whitening.active
    assert "whitening is not used for tiled frames" in caplog.text


def test_the_map_is_saved_and_a_model_saved_before_it_loads_without_one(fitted: PatchKNN, real_backbone: DinoBackbone,
                                                                        tmp_path: Path) -> None:
    detector = fitted
    frames = _frames(3, 2, defect=True)
    before = detector.predict(frames).pred_score
    save_detector(detector, calibrate(detector.train_scores), tmp_path / "model", weights=None)
    loaded, _, _ = load_detector(tmp_path / "model", backbone=real_backbone, device="cpu")
    assert isinstance(loaded, PatchKNN) and loaded.core.whitening.active
    np.testing.assert_allclose(loaded.predict(frames).pred_score, before, rtol=1e-5)
    tensors, info = detector.export_state()
    older = {k: v for k, v in tensors.items() if not k.startswith("whitening_")}
    fresh = PatchKNN(backbone=real_backbone, config=detector.config)
    fresh.import_state(older, info)
    assert not fresh.core.whitening.active
    with pytest.raises(ValueError, match="saved whitening"):
        fresh.import_state({**older, "whitening_shift": tensors["whitening_shift"]}, info)


def test_config_refuses_a_bad_shrink() -> None:
    with pytest.raises(ValueError, match="whitening_shrink"):
        PatchKNNConfig(whitening_shrink=0.0)
    with pytest.raises(ValueError, match="whitening must be"):
        PatchKNNConfig(whitening="yes")  # type: ignore[arg-type]
