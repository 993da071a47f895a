"""Zero-shot mutual scoring: exactness against a brute-force reference, ranking, maps, thresholds, errors.

Uses a random-init ViT-S/14 (timm, no weights): its patch features still tell a drawn blob from a
textured part, which is all these tests need.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.detectors.zero_shot import (
    ZeroShotConfig,
    ZeroShotScorer,
    evaluate_zero_shot,
    patch_scores_to_map,
    robust_thresholds,
)
from models.evaluation import load_category
from tests.helpers.images import textured_part, with_defect, write_images

SIZE = 84  # 6 x 6 patches at shorter side 84


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(8,), device="cpu")


def _rgb(image_bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def _brute_force(scorer: ZeroShotScorer, config: ZeroShotConfig) -> tuple[np.ndarray, list[np.ndarray]]:
    """The definition, written plainly.

    Per patch: the min distance to each other reference image, then the mean of the smallest few.
    """
    feats = [e.features.float() for e in scorer._entries]
    refs = scorer.references()
    image_scores, grids = [], []
    for i, f in enumerate(feats):
        minima = [(1.0 - f @ feats[j].T).clamp(0, 2).min(dim=1).values for j in refs if j != i]
        stacked = torch.stack(minima, dim=1).sort(dim=1).values
        k = max(1, round(config.neighbour_fraction * stacked.shape[1]))
        per_patch = stacked[:, :k].mean(dim=1)
        n_top = max(int(per_patch.numel() * config.top_percent / 100), 1)
        image_scores.append(float(per_patch.topk(n_top).values.mean()))
        grids.append(per_patch.reshape(scorer._entries[i].grid).numpy())
    return np.array(image_scores, dtype=np.float32), grids


@pytest.mark.parametrize(
    ("max_references", "block_elements"),
    [(200, 1 << 24), (4, 500)],   # all images as references in one block; a subset, in many small blocks
)
def test_scores_match_the_brute_force_definition(backbone: DinoBackbone, max_references: int,
                                                 block_elements: int) -> None:
    rng = np.random.default_rng(0)
    # Mixed sizes: references of fewer patches are padded, and the padding must never match.
    frames = [_rgb(textured_part(rng, SIZE)) for _ in range(4)] + [_rgb(textured_part(rng, 112)) for _ in range(2)]
    frames.insert(2, _rgb(cv2.resize(textured_part(rng, SIZE), (126, SIZE))))
    config = ZeroShotConfig(shorter_side=SIZE, neighbour_fraction=0.4, max_references=max_references,
                            block_elements=block_elements)
    scorer = ZeroShotScorer(backbone=backbone, config=config)
    scorer.add(frames[:3])
    scorer.add(frames[3:])
    assert len(scorer) == 7
    assert len(scorer.references()) == min(7, max_references)
    result = scorer.score()
    expected_scores, expected_grids = _brute_force(scorer, config)
    np.testing.assert_allclose(result.pred_score, expected_scores, rtol=1e-4, atol=1e-5)
    for got, want in zip(result.patch_scores, expected_grids, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_planted_defects_score_highest_and_maps_peak_inside(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(1)
    good = [_rgb(textured_part(rng, SIZE)) for _ in range(10)]
    planted = [with_defect(textured_part(rng, SIZE), rng) for _ in range(2)]
    # No neighbourhood aggregation: on a 6 x 6 grid a 3 x 3 mean moves the peak of a blob this small.
    config = ZeroShotConfig(shorter_side=SIZE, aggregate=1)
    scorer = ZeroShotScorer(backbone=backbone, config=config)
    scorer.add(good + [_rgb(image) for image, _ in planted])
    progress: list[tuple[int, int]] = []
    result = scorer.score(progress=lambda done, total: progress.append((done, total)))
    assert progress[-1] == (12, 12)
    assert result.pred_score[10:].min() > result.pred_score[:10].max(), result.pred_score
    for index, (_, mask) in zip((10, 11), planted, strict=True):
        amap = scorer.anomaly_map(index, result.patch_scores[index])
        assert amap.shape == (SIZE, SIZE) and amap.dtype == np.float32
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        assert mask[peak], f"map peak {peak} outside the planted defect"
        rebuilt = patch_scores_to_map(result.patch_scores[index], (SIZE, SIZE), shorter_side=SIZE,
                                      blur_sigma=config.blur_sigma)
        np.testing.assert_allclose(rebuilt, amap)


def test_robust_thresholds_follow_median_and_mad() -> None:
    scores = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 5.0]
    review, fail, rule = robust_thresholds(scores, k_review=3, k_fail=6)
    sigma = 1.4826 * 0.05
    assert review == pytest.approx(1.0 + 3 * sigma)
    assert fail == pytest.approx(1.0 + 6 * sigma)
    assert review < 5.0, "the outlier does not drag the threshold up"
    assert "median" in rule and "7 images" in rule
    flat_review, flat_fail, _ = robust_thresholds([0.5, 0.5, 0.5])
    assert 0.5 < flat_review <= flat_fail < 0.5001, "equal scores: only strictly higher ones would be flagged"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: robust_thresholds([]), "at least one finite score"),
        (lambda: robust_thresholds([1.0], k_review=3, k_fail=2), "k_fail"),
        (lambda: ZeroShotConfig(neighbour_fraction=0.0), "neighbour_fraction"),
        (lambda: ZeroShotConfig(aggregate=2), "aggregate must be an odd integer"),
        (lambda: ZeroShotConfig(max_references=0), "max_references"),
        (lambda: ZeroShotConfig(top_percent=150), "top_percent"),
        (lambda: patch_scores_to_map(np.zeros((3, 3), np.float32), (84, 84), shorter_side=84), r"\(6, 6\)"),
    ],
)
def test_bad_arguments_are_refused_by_name(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_one_image_is_not_a_batch(backbone: DinoBackbone) -> None:
    scorer = ZeroShotScorer(backbone=backbone, config=ZeroShotConfig(shorter_side=SIZE))
    scorer.add([_rgb(textured_part(np.random.default_rng(2), SIZE))])
    with pytest.raises(ValueError, match="needs 2 or more"):
        scorer.score()


def test_evaluate_zero_shot_on_a_tiny_category(backbone: DinoBackbone, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    root = tmp_path / "tiny"
    write_images(root / "train" / "good", [textured_part(rng, SIZE)])
    write_images(root / "test" / "good", [textured_part(rng, SIZE) for _ in range(6)])
    planted = [with_defect(textured_part(rng, SIZE), rng) for _ in range(2)]
    write_images(root / "test" / "blob", [image for image, _ in planted])
    write_images(root / "ground_truth" / "blob", [mask.astype(np.uint8) * 255 for _, mask in planted], prefix="tmp")
    for i in range(2):
        masks = root / "ground_truth" / "blob"
        (masks / f"tmp_{i:03d}.png").rename(masks / f"img_{i:03d}_mask.png")
    ticks: list[tuple[int, int, str]] = []
    report = evaluate_zero_shot(backbone, load_category(root), config=ZeroShotConfig(shorter_side=SIZE),
                                progress=lambda done, total, message: ticks.append((done, total, message)))
    assert report.n_train == 0 and report.n_test == 8
    assert report.image_auroc == 1.0
    assert 0.5 < report.aupro <= 1.0 and not math.isnan(report.pixel_auroc)
    assert report.per_defect_auroc == {"blob": 1.0}
    assert ticks[-1][0] == ticks[-1][1]
    assert report.to_dict()["config"]["detector"] == "zero_shot"
