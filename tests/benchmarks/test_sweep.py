"""benchmarks/_sweep: every score and map the sweep derives equals a direct ``PatchKNN.predict`` with that setting."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

import benchmarks._sweep as sweep_module
import models.detectors._foreground as foreground_module
from benchmarks._features import CachedBackbone, FeatureStore
from benchmarks._sweep import Setting, SweepData, collect, derive, score
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors._scales import ScaleFusion
from models.evaluation import Category, TestItem, image_auroc, load_image_rgb
from tests.benchmarks.conftest import SHORTER_SIDE

VARIANTS = [((8,), 1), ((8, 10), 1), ((8,), 3)]
MASKED = [((8,), 1)]

AS_IS = "as_is"   # the sweep scores the frames as they are (benchmarks/_sweep.py, collect(brightness=...))


def stand_in_masks(features: torch.Tensor, **_: object) -> torch.Tensor:
    """(B, h, w, D) -> (B, h, w) bool: patches whose first feature is positive.

    The PCA foreground rule finds nothing in random-weights features (the tests' backbone), so both the
    sweep and PatchKNN get this rule instead; what is tested is how the harness applies masks (zeroed
    patches, the fallback for a small mask, "auto"), not the rule itself (tests/models covers it).
    """
    return features[..., 0] > 0


@pytest.fixture
def sweep(
    store: FeatureStore, parts: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch,
) -> tuple[SweepData, list[TestItem], list[Path]]:
    monkeypatch.setattr(sweep_module, "foreground_masks", stand_in_masks)
    monkeypatch.setattr(foreground_module, "foreground_masks", stand_in_masks)   # what PatchKNN masks with
    items = ([TestItem(path=p, label=0, defect_type="good", mask_path=None) for p in parts["good"]]
             + [TestItem(path=p, label=1, defect_type="blob", mask_path=m)
                for p, m in zip(parts["bad"], parts["masks"], strict=True)])
    category = Category(name="tiny", root=parts["train"][0].parent, train_good=tuple(parts["train"]),
                        test=tuple(items))
    data = collect(store, category, parts["train"], items, VARIANTS, shorter_side=SHORTER_SIDE,
                   mask_variants=MASKED, dtype=torch.float32, pixel_size=56)
    return data, items, parts["train"]


# (blocks, pool, k, top_percent, sigma, masking)
SETTINGS = [
    ((8,), 1, 1, 1.0, 4.0, "off"),
    ((8,), 1, 3, 10.0, 2.0, "off"),
    ((8, 10), 1, 1, 1.0, 4.0, "off"),
    ((8,), 3, 2, 5.0, 0.0, "off"),
    ((8,), 1, 1, 1.0, 4.0, "on"),
    ((8,), 1, 1, 1.0, 4.0, "auto"),
]


@pytest.mark.parametrize(("blocks", "pool", "k", "top_percent", "sigma", "masking"), SETTINGS)
def test_derived_scores_and_maps_equal_a_direct_predict(
    store: FeatureStore, sweep: tuple[SweepData, list[TestItem], list[Path]], blocks: tuple[int, ...], pool: int,
    k: int, top_percent: float, sigma: float, masking: Literal["auto", "on", "off"],
) -> None:
    data, items, train = sweep
    config = PatchKNNConfig(shorter_side=SHORTER_SIDE, k=k, top_percent=top_percent, blur_sigma=sigma,
                            patch_pooling=pool, masking=masking, augment_rotations=False, loo_max_images=0,
                            brightness=AS_IS)
    detector = PatchKNN(backbone=CachedBackbone(store, blocks=blocks), config=config)
    detector.fit([load_image_rgb(p) for p in train])
    direct = detector.predict([load_image_rgb(t.path) for t in items])
    setting = Setting(blocks=blocks, pool=pool, k=k, top_percent=top_percent, sigma=sigma, masking=masking)
    scores, maps, active = derive(data, setting, full_size=True)
    assert active == detector.masking_active
    np.testing.assert_allclose(scores, direct.pred_score, rtol=1e-5, atol=1e-6)
    # maps: distances near 0.004 in float32, summed in another order by the two paths; on some CPUs (vector width)
    # a few pixels differ by 1.2e-6 (a fresh machine's CI run), so the bound is 1e-5, still 400x under the values
    np.testing.assert_allclose(np.stack(maps), np.asarray(direct.anomaly_map), rtol=1e-5, atol=1e-5)
    metrics = score(data, blocks=blocks, pool=pool, k=k, top_percent=top_percent, sigma=sigma, masking=masking,
                    pixel_size=56)
    labels = np.array([t.label for t in items])
    assert metrics["image_auroc"] == pytest.approx(image_auroc(direct.pred_score, labels))
    assert set(metrics) == {"image_auroc", "masking_active", "aupro", "pixel_auroc"}


def test_masking_on_changes_the_scores(sweep: tuple[SweepData, list[TestItem], list[Path]]) -> None:
    """The masked settings above compare something: masking leaves out patches, and the fallback happens."""
    data = sweep[0]
    ref_fg = data.ref_fg[((8,), 1)][0]
    shares = [float(fg.float().mean()) for fg in data.fg[((8,), 1)]]
    assert 0.0 < ref_fg < 1.0 and any(0.5 * ref_fg <= s < 1.0 for s in shares)
    off = derive(data, Setting(blocks=(8,), masking="off"), maps=False)[0]
    on = derive(data, Setting(blocks=(8,), masking="on"), maps=False)[0]
    assert not np.allclose(off, on)


def test_asking_for_what_was_not_collected_names_it(sweep: tuple[SweepData, list[TestItem], list[Path]]) -> None:
    data = sweep[0]
    with pytest.raises(ValueError, match=r"no kNN distances were collected for \(\(9,\), 1\)"):
        derive(data, Setting(blocks=(9,)))
    with pytest.raises(ValueError, match="no foreground masks"):
        derive(data, Setting(blocks=(8, 10), masking="on"))
    with pytest.raises(ValueError, match="k must be in 1..5"):
        derive(data, Setting(blocks=(8,), k=6))


# ----------------------------------------------------------------------------- issue 11 levers


@pytest.fixture
def lever_sweep(store: FeatureStore, parts: dict[str, list[Path]]) -> tuple[SweepData, list[TestItem], list[Path]]:
    items = ([TestItem(path=p, label=0, defect_type="good", mask_path=None) for p in parts["good"]]
             + [TestItem(path=p, label=1, defect_type="blob", mask_path=m)
                for p, m in zip(parts["bad"], parts["masks"], strict=True)])
    category = Category(name="tiny", root=parts["train"][0].parent, train_good=tuple(parts["train"]),
                        test=tuple(items))
    data = collect(store, category, parts["train"], items, [((8,), 1), ((8,), 3)], shorter_side=SHORTER_SIDE,
                   dtype=torch.float32, pixel_size=56, loo=True, subspace=[((8,), 0.9)], mask_variants=[((8,), 1)])
    return data, items, parts["train"]


@pytest.mark.parametrize("pool", [1, 3])
def test_leave_one_out_distances_are_patch_knns_own(
    store: FeatureStore, lever_sweep: tuple[SweepData, list[TestItem], list[Path]], pool: int,
) -> None:
    """The sweep's leave-one-out scale is the mean of PatchKNN's leave-one-out training scores."""
    data, _, train = lever_sweep
    config = PatchKNNConfig(shorter_side=SHORTER_SIDE, patch_pooling=pool, masking="off", augment_rotations=False,
                            second_scale=0, brightness=AS_IS)
    detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=config)
    detector.fit([load_image_rgb(p) for p in train])
    assert len(detector.train_scores) == len(train) == len(data.loo_knn[((8,), pool)])
    assert sweep_module._loo_scale([d[..., 0] for d in data.loo_knn[((8,), pool)]], 1.0) == pytest.approx(
        float(np.mean(detector.train_scores)), rel=1e-4, abs=1e-6)


def test_multi_scale_fusion_is_the_scaled_mean_of_the_pooled_maps(
    lever_sweep: tuple[SweepData, list[TestItem], list[Path]],
) -> None:
    data = lever_sweep[0]
    one = sweep_module.fused_patch_maps(data, Setting(blocks=(8,), pool=1))
    three = sweep_module.fused_patch_maps(data, Setting(blocks=(8,), pool=3))
    plain = sweep_module.fused_patch_maps(data, Setting(blocks=(8,), pools=(1, 3), normalise=False))
    scaled = sweep_module.fused_patch_maps(data, Setting(blocks=(8,), pools=(1, 3)))
    s1 = sweep_module._loo_scale([d[..., 0] for d in data.loo_knn[((8,), 1)]], 1.0)
    s3 = sweep_module._loo_scale([d[..., 0] for d in data.loo_knn[((8,), 3)]], 1.0)
    assert s1 != pytest.approx(s3)
    for i in range(len(one)):
        torch.testing.assert_close(plain[i], (one[i] + three[i]) / 2)
        torch.testing.assert_close(scaled[i], s1 * (one[i] / s1 + three[i] / s3) / 2)
    assert not np.allclose(derive(data, Setting(blocks=(8,), pools=(1, 3)), maps=False)[0],
                           derive(data, Setting(blocks=(8,)), maps=False)[0])


@pytest.mark.parametrize("masking", ["off", "on"])
def test_max_z_fusion_keeps_the_larger_z_score_of_each_pooling(
    store: FeatureStore, lever_sweep: tuple[SweepData, list[TestItem], list[Path]], masking: str,
) -> None:
    """Image-level fusion: each pooling's image score as a z-score of PatchKNN's own leave-one-out scores at
    that pooling, the larger kept, in the r=1 score's units (GlobalFusion's arithmetic); the map is r=1's."""
    data, _, train = lever_sweep
    loo = {}
    for pool in (1, 3):
        config = PatchKNNConfig(shorter_side=SHORTER_SIDE, patch_pooling=pool, masking=masking,
                                augment_rotations=False, second_scale=0, brightness=AS_IS)
        detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=config)
        detector.fit([load_image_rgb(p) for p in train])
        loo[pool] = np.asarray(detector.train_scores, dtype=np.float64)
    single = {pool: derive(data, Setting(blocks=(8,), pool=pool, masking=masking), maps=False)[0] for pool in (1, 3)}
    z = [(single[pool] - loo[pool].mean()) / loo[pool].std() for pool in (1, 3)]
    fused, maps, active = derive(data, Setting(blocks=(8,), pools=(1, 3), masking=masking, fusion="max_z"))
    assert active == (masking == "on")
    np.testing.assert_allclose(fused, loo[1].mean() + loo[1].std() * np.maximum(*z), rtol=1e-4, atol=1e-6)
    one_maps = derive(data, Setting(blocks=(8,), masking=masking))[1]
    for got, want in zip(maps, one_maps, strict=True):
        np.testing.assert_array_equal(got, want)
    # one part alone: the z-score and back is the identity
    np.testing.assert_allclose(derive(data, Setting(blocks=(8,), pools=(1,), masking=masking, fusion="max_z"),
                                      maps=False)[0],
                               single[1], rtol=1e-5)
    with pytest.raises(ValueError, match="fusion must be"):
        derive(data, Setting(blocks=(8,), fusion="mean"), maps=False)


@pytest.mark.parametrize("masking", ["off", "on"])
def test_sum_z_fusion_is_the_products_second_scale(
    store: FeatureStore, lever_sweep: tuple[SweepData, list[TestItem], list[Path]], masking: str,
) -> None:
    """The levers row "z r=1 + w z r=R" is what PatchKNN scores with second_scale=R, second_scale_weight=w and the
    spreads measured."""
    data, items, train = lever_sweep
    config = PatchKNNConfig(shorter_side=SHORTER_SIDE, masking=masking, augment_rotations=False, second_scale=3,
                            second_scale_weight=0.4, second_scale_spread="measured", brightness=AS_IS)
    detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=config)
    detector.fit([load_image_rgb(p) for p in train])
    assert detector.second_scale_active
    product = detector.predict([load_image_rgb(t.path) for t in items]).pred_score
    swept = derive(data, Setting(blocks=(8,), pools=(1, 3), masking=masking, fusion="sum_z", z_weights=(1.0, 0.4)),
                   maps=False)[0]
    np.testing.assert_allclose(swept, product, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="one weight per part"):
        derive(data, Setting(blocks=(8,), pools=(1, 3), fusion="sum_z", z_weights=(1.0,)), maps=False)


@pytest.mark.parametrize("masking", ["off", "on"])
def test_proportional_sum_z_takes_each_spread_as_its_leave_one_out_mean(
    store: FeatureStore, lever_sweep: tuple[SweepData, list[TestItem], list[Path]], masking: str,
) -> None:
    """The levers row "..., proportional spreads" is a fine-only and a coarse-only PatchKNN fused by
    ScaleFusion.from_means's rule on their leave-one-out scores."""
    data, items, train = lever_sweep
    frames, test = [load_image_rgb(p) for p in train], [load_image_rgb(t.path) for t in items]

    def fitted(**options: int) -> PatchKNN:
        config = PatchKNNConfig(shorter_side=SHORTER_SIDE, masking=masking, augment_rotations=False, brightness=AS_IS,
                                **options)
        detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=config)
        detector.fit(frames)
        return detector

    fine, coarse = fitted(second_scale=0), fitted(second_scale=0, patch_pooling=3)
    fusion = ScaleFusion.from_means(fine.train_scores, coarse.train_scores, weight=0.4)
    want = fusion.fuse(torch.from_numpy(fine.predict(test).pred_score),
                       torch.from_numpy(coarse.predict(test).pred_score)).numpy()
    swept = derive(data, Setting(blocks=(8,), pools=(1, 3), masking=masking, fusion="sum_z_proportional",
                                 z_weights=(1.0, 0.4)), maps=False)[0]
    np.testing.assert_allclose(swept, want, rtol=1e-4, atol=1e-6)


def test_subspace_residual_matches_a_direct_pca(
    store: FeatureStore, lever_sweep: tuple[SweepData, list[TestItem], list[Path]],
) -> None:
    """Residuals of the test images (PCA on every bank patch) and of a training image (PCA without it),
    recomputed with numpy's SVD from the cached features."""
    data, items, train = lever_sweep

    def unit(path: Path) -> np.ndarray:
        x = sweep_module._features(store, path, SHORTER_SIDE)[:, :, 7].reshape(-1, 384).double().numpy()
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def residual(bank: np.ndarray, x: np.ndarray) -> np.ndarray:
        mean = bank.mean(0)
        _, sv, vt = np.linalg.svd(bank - mean, full_matrices=False)
        explained = np.cumsum(sv**2) / np.sum(sv**2)
        comps = vt[: int(np.searchsorted(explained, 0.9)) + 1].T
        c = x - mean
        return np.sum(c * c, 1) - np.sum((c @ comps) ** 2, 1)

    banks = [unit(p) for p in train]
    full = np.concatenate(banks)
    np.testing.assert_allclose(data.residual[((8,), 0.9)][-1].reshape(-1).numpy(),
                               residual(full, unit(items[-1].path)), rtol=1e-4, atol=1e-6)
    without_first = np.concatenate(banks[1:])
    np.testing.assert_allclose(data.loo_residual[((8,), 0.9)][0].reshape(-1).numpy(),
                               residual(without_first, banks[0]), rtol=1e-4, atol=1e-6)
    fused = derive(data, Setting(blocks=(8,), subspace=0.9), maps=False)[0]
    assert fused.shape == (len(items),) and not np.allclose(fused, derive(data, Setting(blocks=(8,)), maps=False)[0])
    with pytest.raises(ValueError, match="no PCA residuals were collected"):
        derive(data, Setting(blocks=(8,), subspace=0.5))


def test_auto_masks_only_leaves_out_masks_that_auto_would_not_use(
    store: FeatureStore, parts: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto_masks_only: "auto" still derives (off where the references say off); "on" names what is missing."""
    monkeypatch.setattr(sweep_module, "foreground_masks", lambda f, **_: torch.ones(f.shape[:3], dtype=torch.bool))
    items = [TestItem(path=p, label=0, defect_type="good", mask_path=None) for p in parts["good"]]
    category = Category(name="tiny", root=parts["train"][0].parent, train_good=tuple(parts["train"]),
                        test=tuple(items))
    data = collect(store, category, parts["train"], items, [((8,), 1), ((8,), 3)], shorter_side=SHORTER_SIDE,
                   mask_variants=[((8,), 1)], dtype=torch.float32, pixel_size=56, auto_masks_only=True)
    assert data.ref_fg[((8,), 1)] == (1.0, 1.0) and data.fg[((8,), 1)] == []      # all foreground: auto is off
    auto = derive(data, Setting(blocks=(8,), pool=3, masking="auto"), maps=False)
    assert not auto[2]
    np.testing.assert_array_equal(auto[0], derive(data, Setting(blocks=(8,), pool=3), maps=False)[0])
    with pytest.raises(ValueError, match="test masks .* were not collected"):
        derive(data, Setting(blocks=(8,), masking="on"))
