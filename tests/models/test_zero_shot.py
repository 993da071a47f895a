"""Zero-shot mutual scoring (MuSc): exactness against a brute-force reference, ranking, maps, thresholds, errors.

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
    rescore,
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


def _pooled(features: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """Each patch feature averaged over the r x r neighbours that exist, then L2-normalised, written plainly."""
    h, w = grid
    f = features.float().reshape(h, w, -1)
    out = torch.empty_like(f)
    for y in range(h):
        for x in range(w):
            out[y, x] = f[max(0, y - r // 2): y + r // 2 + 1, max(0, x - r // 2): x + r // 2 + 1].mean(dim=(0, 1))
    return torch.nn.functional.normalize(out.reshape(h * w, -1), dim=-1)


def _brute_force(scorer: ZeroShotScorer, config: ZeroShotConfig) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The definition, written plainly: (image scores, top-patch scores, patch-score grids).

    Per scale r and patch: the min distance to each other reference image, then the mean of the
    smallest few; the mean over the scales; the top patches; then each image's score re-scored with
    its k most similar images by the mean patch feature.
    """
    entries = scorer._entries
    refs = scorer.references()
    fused = [torch.zeros(e.features.shape[0]) for e in entries]
    for r in config.scales:
        feats = [_pooled(e.features, e.grid, r) for e in entries]
        stored = [f.half().float() for f in feats]        # the reference bank is kept in float16
        for i, f in enumerate(feats):
            minima = [(1.0 - f @ stored[j].T).clamp(0, 2).min(dim=1).values for j in refs if j != i]
            stacked = torch.stack(minima, dim=1).sort(dim=1).values
            k = max(1, round(config.neighbour_fraction * stacked.shape[1]))
            fused[i] += stacked[:, :k].mean(dim=1) / len(config.scales)
    top, grids = [], []
    for i, per_patch in enumerate(fused):
        n_top = max(int(per_patch.numel() * config.top_percent / 100), 1)
        top.append(float(per_patch.topk(n_top).values.mean()))
        grids.append(per_patch.reshape(entries[i].grid).numpy())
    desc = np.stack([torch.nn.functional.normalize(e.features.float().mean(dim=0), dim=0).numpy() for e in entries])
    rescored = []
    for i in range(len(entries)):
        order = [i] + [j for j in np.argsort(-(desc @ desc[i]), kind="stable") if j != i]
        per_k = []
        for k in config.rescore_k:
            weights = [1.0] + [max(float(desc[j] @ desc[i]), 0.0) for j in order[1:k]]
            per_k.append(sum(wt * top[j] for wt, j in zip(weights, order[:k], strict=True)) / sum(weights))
        rescored.append(float(np.mean(per_k)) if per_k else top[i])
    return np.array(rescored, dtype=np.float32), np.array(top, dtype=np.float32), grids


@pytest.mark.parametrize(
    ("max_references", "block_elements", "scales", "rescore_k"),
    [(200, 1 << 24, (1, 3, 5), (1, 2, 3)),  # MuSc's defaults: all images as references in one block
     (4, 500, (1, 3), (2,)),               # a reference subset, in many small blocks
     (200, 1 << 24, (1,), ())],            # one scale, no re-scoring
)
def test_scores_match_the_brute_force_definition(backbone: DinoBackbone, max_references: int, block_elements: int,
                                                 scales: tuple[int, ...], rescore_k: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    # Mixed sizes: references of fewer patches are padded, and the padding must never match.
    frames = [_rgb(textured_part(rng, SIZE)) for _ in range(4)] + [_rgb(textured_part(rng, 112)) for _ in range(2)]
    frames.insert(2, _rgb(cv2.resize(textured_part(rng, SIZE), (126, SIZE))))
    config = ZeroShotConfig(shorter_side=SIZE, neighbour_fraction=0.4, max_references=max_references,
                            block_elements=block_elements, scales=scales, rescore_k=rescore_k)
    scorer = ZeroShotScorer(backbone=backbone, config=config)
    scorer.add(frames[:3])
    scorer.add(frames[3:])
    assert len(scorer) == 7
    assert len(scorer.references()) == min(7, max_references)
    result = scorer.score()
    expected_scores, expected_top, expected_grids = _brute_force(scorer, config)
    np.testing.assert_allclose(result.top_score, expected_top, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.pred_score, expected_scores, rtol=1e-4, atol=1e-5)
    if rescore_k == ():
        np.testing.assert_array_equal(result.pred_score, result.top_score)
    for got, want in zip(result.patch_scores, expected_grids, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_planted_defects_score_highest_and_maps_peak_inside(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(1)
    good = [_rgb(textured_part(rng, SIZE)) for _ in range(10)]
    planted = [with_defect(textured_part(rng, SIZE), rng) for _ in range(2)]
    # No neighbourhood aggregation: on a 6 x 6 grid a 3 x 3 mean moves the peak of a blob this small.
    config = ZeroShotConfig(shorter_side=SIZE, scales=(1,))
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


def test_rescore_is_a_similarity_weighted_mean_of_the_nearest_images() -> None:
    desc = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    scores = np.array([1.0, 0.0, 5.0], dtype=np.float32)
    # k=1: itself; k=2: image 0's nearest other is image 1 (cosine 0.8), image 2's is image 1 (0.6).
    np.testing.assert_allclose(rescore(scores, desc, (1,)), scores)
    np.testing.assert_allclose(rescore(scores, desc, (2,)), [1.0 / 1.8, (0.8 * 1.0) / 1.8, 5.0 / 1.6], rtol=1e-6)
    np.testing.assert_allclose(rescore(scores, desc, ()), scores)
    np.testing.assert_allclose(rescore(scores, desc, (1, 2), block_rows=1),
                               (scores + rescore(scores, desc, (2,))) / 2, rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: robust_thresholds([]), "at least one finite score"),
        (lambda: robust_thresholds([1.0], k_review=3, k_fail=2), "k_fail"),
        (lambda: ZeroShotConfig(neighbour_fraction=0.0), "neighbour_fraction"),
        (lambda: ZeroShotConfig(scales=(1, 2)), "scales must be a non-empty tuple of odd integers"),
        (lambda: ZeroShotConfig(scales=()), "scales must be a non-empty tuple"),
        (lambda: ZeroShotConfig(rescore_k=(0,)), "rescore_k must be a tuple of integers >= 1"),
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
    # The verdicts are the review's: the batch's robust rule on the re-scored image scores.
    review, fail, rule = robust_thresholds(report.scores)
    assert (report.thresholds["review"], report.thresholds["fail"]) == pytest.approx((review, fail))
    assert report.thresholds["rule"] == rule and "median" in rule
    labels = np.array([t.label for t in load_category(root).test])
    flagged = np.asarray(report.scores) >= review
    assert report.operating_point["defect_flag_rate"] == pytest.approx(flagged[labels == 1].mean())
    assert report.operating_point["good_flag_rate"] == pytest.approx(flagged[labels == 0].mean())
