"""benchmarks/self_tune: the synthetic anomalies change only their region, and the self-check scores are PatchKNN's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks._features import CachedBackbone, FeatureStore
from benchmarks.self_tune import KINDS, SelfCheck, plan_synthetics, self_check, synthesize
from models.detectors import PatchKNN, PatchKNNConfig
from models.evaluation import load_image_rgb
from tests.benchmarks.conftest import SHORTER_SIDE, part


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_anomaly_changes_only_its_masked_region(kind: str) -> None:
    rng = np.random.default_rng(3)
    image, other = part(rng)[0][..., ::-1].copy(), part(rng)[0][..., ::-1].copy()
    out, mask = synthesize(image, other, kind, np.random.default_rng(7))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert 0 < mask.sum() < 0.2 * mask.size                              # a local defect, not a new image
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert np.abs(out[mask].astype(int) - image[mask].astype(int)).mean() > 5
    again, _ = synthesize(image, other, kind, np.random.default_rng(7))
    np.testing.assert_array_equal(out, again)


def test_an_unknown_kind_is_named() -> None:
    image = np.zeros((56, 70, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown synthetic anomaly kind 'scratch'"):
        synthesize(image, image, "scratch", np.random.default_rng(0))


def test_a_shot_gets_the_same_synthetic_images_whichever_seed_chose_it(
    parts: dict[str, list[Path]], tmp_path: Path,
) -> None:
    train = parts["train"]
    first = plan_synthetics(train, train, tmp_path / "a")
    later = plan_synthetics(train, [train[2], train[0]], tmp_path / "b")
    assert len(first) == 2 * len(train) and len(later) == 4
    assert {s.kind for s in first} == set(KINDS)
    by_name = {(s.shot, s.kind): s for s in first}
    for s in later:
        twin = by_name[(s.shot, s.kind)]
        assert s.source == twin.source != s.shot
        np.testing.assert_array_equal(load_image_rgb(s.path), load_image_rgb(twin.path))


@pytest.mark.parametrize("pool", [1, 3])
def test_self_check_scores_are_patch_knns_on_the_bank_without_the_shot_and_its_source(
    store: FeatureStore, parts: dict[str, list[Path]], tmp_path: Path, pool: int,
) -> None:
    train = parts["train"]
    synthetics = plan_synthetics(train, train, tmp_path / "synth")
    check = SelfCheck(store, train, pools=(1, 3), shorter_side=SHORTER_SIDE, masking="off")
    s = synthetics[0]
    kept = [p for p in train if p not in (s.shot, s.source)]
    # the study's check (benchmarks/self_tune.py) scores the frames as they are
    config = PatchKNNConfig(shorter_side=SHORTER_SIDE, patch_pooling=pool, masking="off", augment_rotations=False,
                            loo_max_images=0, top_percent=1.0, brightness="as_is")
    detector = PatchKNN(backbone=CachedBackbone(store, blocks=(8,)), config=config)
    detector.fit([load_image_rgb(p) for p in kept])
    direct = detector.predict([load_image_rgb(s.path), load_image_rgb(s.shot)]).pred_score
    assert check.score(s.path, [s.shot, s.source])[pool] == pytest.approx(float(direct[0]), rel=1e-4, abs=1e-6)
    assert check.score(s.shot, [s.shot, s.source])[pool] == pytest.approx(float(direct[1]), rel=1e-4, abs=1e-6)


def test_self_check_reports_an_auroc_and_a_pick_per_pooling(
    store: FeatureStore, parts: dict[str, list[Path]], tmp_path: Path,
) -> None:
    train = parts["train"]
    synthetics = plan_synthetics(train, train, tmp_path / "synth")
    result = self_check(SelfCheck(store, train, shorter_side=SHORTER_SIDE, masking="off"), synthetics)
    assert result["pick_synthetic"] in (1, 3) and result["pick_loo_cv"] in (1, 3)
    for r in ("1", "3"):
        per = result["per_pool"][r]
        assert len(per["good_loo_scores"]) == len(train) and len(per["synthetic_scores"]) == len(synthetics)
        assert 0.0 <= per["synthetic_auroc"] <= 1.0 and per["loo_cv"] > 0
        assert set(per["per_kind_auroc"]) == set(KINDS)
    # the pick is the pooling with the higher synthetic AUROC (r = 1 on a tie)
    a1, a3 = result["per_pool"]["1"]["synthetic_auroc"], result["per_pool"]["3"]["synthetic_auroc"]
    assert result["pick_synthetic"] == (3 if a3 > a1 else 1)
