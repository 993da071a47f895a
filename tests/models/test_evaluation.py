"""The MVTec-AD loader, the metric plumbing on hand-made maps, and one end-to-end evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.calibration import operating_point
from models.evaluation import (
    Category,
    aupro,
    best_f1,
    evaluate,
    f1_at,
    image_auroc,
    load_category,
    load_image_rgb,
    load_mask,
    pixel_auroc,
    resize_for_pixel_metrics,
    select_shots,
    subset_test,
)

SIZE = 56   # px, a multiple of the 14-px patch


def _part(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A 'good part': a grey disc on a dark background with a little sensor noise (BGR uint8)."""
    image = np.full((size, size, 3), 40, np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 3, (170, 170, 170), -1)
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def _defect(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A part with a drawn defect and its 0/255 mask."""
    image = _part(rng)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if kind == "scratch":
        for target in (image, mask):
            cv2.line(target, (14, 18), (42, 36), (255, 255, 255) if target is mask else (20, 20, 230), 4)
    else:
        for target in (image, mask):
            cv2.circle(target, (30, 26), 7, (255, 255, 255) if target is mask else (0, 200, 255), -1)
    return image, mask


@pytest.fixture
def mvtec_dir(tmp_path: Path) -> Path:
    """A tiny MVTec-AD-layout category: 6 train/good, 3 test/good, 2 scratch, 2 blob (with masks)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "widget"
    subs = ("train/good", "test/good", "test/scratch", "test/blob",
            "ground_truth/scratch", "ground_truth/blob")
    for sub in subs:
        (root / sub).mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), _part(rng))
    for i in range(3):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), _part(rng))
    for kind in ("scratch", "blob"):
        for i in range(2):
            image, mask = _defect(rng, kind)
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), image)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return root


# ------------------------------------------------------------------------------------------ loader


def test_load_category_lists_train_and_test_with_masks(mvtec_dir: Path) -> None:
    category = load_category(mvtec_dir)
    assert isinstance(category, Category)
    assert category.name == "widget"
    assert len(category.train_good) == 6
    assert len(category.test) == 7
    assert category.defect_types == ("blob", "scratch")
    good = [t for t in category.test if t.label == 0]
    bad = [t for t in category.test if t.label == 1]
    assert len(good) == 3 and all(t.mask_path is None and t.defect_type == "good" for t in good)
    assert len(bad) == 4
    for item in bad:
        assert item.mask_path is not None
        assert item.mask_path.name == f"{item.path.stem}_mask.png"
        assert item.mask_path.parent.name == item.defect_type


@pytest.mark.parametrize(
    ("breakage", "match"),
    [
        ("no_root", "no such category folder"),
        ("no_train", "train/good"),
        ("empty_train", "holds no image"),
        ("no_test", "missing folder test/"),
        ("no_mask", r"without a mask; expected .*ground_truth[/\\]blob[/\\]001_mask\.png"),
    ],
)
def test_load_category_errors_name_the_problem(mvtec_dir: Path, breakage: str, match: str) -> None:
    root = mvtec_dir
    if breakage == "no_root":
        root = mvtec_dir / "nope"
    elif breakage == "no_train":
        for p in (mvtec_dir / "train/good").iterdir():
            p.unlink()
        (mvtec_dir / "train/good").rmdir()
    elif breakage == "empty_train":
        for p in (mvtec_dir / "train/good").iterdir():
            p.unlink()
    elif breakage == "no_test":
        import shutil

        shutil.rmtree(mvtec_dir / "test")
    elif breakage == "no_mask":
        (mvtec_dir / "ground_truth/blob/001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=match):
        load_category(root)


def test_load_image_rgb_converts_bgr_and_expands_grayscale(tmp_path: Path) -> None:
    bgr = np.zeros((SIZE, SIZE, 3), np.uint8)
    bgr[..., 2] = 255                                  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = load_image_rgb(tmp_path / "red.png")
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 0, 0]
    gray = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    expanded = load_image_rgb(tmp_path / "gray.png")
    assert expanded.shape == (SIZE, SIZE, 3)
    assert np.array_equal(expanded[..., 0], gray) and np.array_equal(expanded[..., 2], gray)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.png: cannot decode"):
        load_image_rgb(tmp_path / "broken.png")


def test_load_mask_is_bool_and_resizes_to_the_image(mvtec_dir: Path) -> None:
    path = mvtec_dir / "ground_truth/scratch/000_mask.png"
    mask = load_mask(path)
    assert mask.dtype == bool and mask.shape == (SIZE, SIZE) and 0 < mask.sum() < mask.size
    assert load_mask(path, (2 * SIZE, 2 * SIZE)).shape == (2 * SIZE, 2 * SIZE)


def test_select_shots_is_seeded_and_prefix_stable() -> None:
    paths = [Path(f"{i:03d}.png") for i in range(40)]
    four = select_shots(paths, 4, seed=0)
    assert four == select_shots(paths, 4, seed=0)
    assert len(four) == 4 and four == sorted(four)
    assert set(four) <= set(select_shots(paths, 16, seed=0))
    assert four != select_shots(paths, 4, seed=1)
    assert select_shots(paths, None) == paths
    assert select_shots(paths, 100) == paths
    with pytest.raises(ValueError, match="shots must be a positive"):
        select_shots(paths, 0)


def test_subset_test_keeps_every_defect_type(mvtec_dir: Path) -> None:
    category = load_category(mvtec_dir)
    subset = subset_test(category.test, 4, seed=0)
    assert len(subset) == 4
    assert {t.defect_type for t in subset} == {"good", "blob", "scratch"}
    assert subset_test(category.test, None) == list(category.test)


# ----------------------------------------------------------------------------------------- metrics


def test_image_auroc_perfect_inverted_and_random() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    assert image_auroc(np.r_[np.zeros(50), np.ones(50)] + 10.0, labels) == pytest.approx(1.0)
    assert image_auroc(np.r_[np.ones(50), np.zeros(50)], labels) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    many = rng.integers(0, 2, 4000)
    assert image_auroc(rng.random(4000), many) == pytest.approx(0.5, abs=0.03)
    assert math.isnan(image_auroc([0.1, 0.2], [0, 0]))


def test_auroc_does_not_depend_on_the_scale_of_the_scores() -> None:
    """torchmetrics pushes scores outside [0, 1] through a sigmoid, which rounds large ones to 1.0 (equal):
    ranks, z-scores or summed distances must give the AUROC of their order, as the docstrings promise."""
    rng = np.random.default_rng(1)
    labels = np.array([0] * 40 + [1] * 60)
    scores = np.r_[rng.normal(0.0, 1.0, 40), rng.normal(1.0, 1.0, 60)]
    expected = image_auroc((scores - scores.min()) / np.ptp(scores), labels)
    assert 0.6 < expected < 0.95
    ranks = np.argsort(np.argsort(scores)) + 1.0                     # 1 .. 100
    for scaled in (ranks, scores * 100.0, scores + 1e3, -1e3 + scores):
        assert image_auroc(scaled, labels) == pytest.approx(expected, abs=1e-9)
    # an infinite score is the highest (or lowest) one, not a NaN
    top = np.argmax(scores)
    assert image_auroc(np.where(np.arange(100) == top, np.inf, scores * 100.0), labels) == pytest.approx(expected)
    masks = [np.zeros((20, 20), bool) for _ in range(2)]
    masks[0][5:10, 5:10] = True
    maps = [rng.random((20, 20)).astype(np.float32) + 0.5 * m for m in masks]
    for scale in (1.0, 100.0):
        assert pixel_auroc([scale * m for m in maps], masks) == pytest.approx(pixel_auroc(maps, masks), abs=1e-6)
        assert aupro([scale * m + 50.0 for m in maps], masks) == pytest.approx(aupro(maps, masks), abs=1e-5)


def test_pixel_metrics_on_hand_made_maps() -> None:
    rng = np.random.default_rng(0)
    masks = [np.zeros((28, 42), bool) for _ in range(4)]
    masks[1][5:12, 5:15] = True
    masks[2][15:25, 30:40] = True
    masks[2][2:5, 2:5] = True                          # a second region in the same image
    perfect = [m.astype(np.float32) * 5 + 0.1 * rng.random(m.shape, dtype=np.float32) for m in masks]
    assert pixel_auroc(perfect, masks) == pytest.approx(1.0)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-5)
    noise = [rng.random(m.shape, dtype=np.float32) for m in masks]
    assert pixel_auroc(noise, masks) == pytest.approx(0.5, abs=0.08)
    # random maps: PRO grows like FPR, so the area up to FPR 0.3, normalised, is about 0.15
    assert aupro(noise, masks) == pytest.approx(0.15, abs=0.08)
    assert math.isnan(aupro(noise, [np.zeros_like(m) for m in masks]))


def test_aupro_matches_anomalib_on_same_sized_images() -> None:
    """Our flattened route (needed for mixed sizes) gives what anomalib's AUPRO.compute gives."""
    from anomalib.metrics import AUPRO

    from models.evaluation import _Batch

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 28, 28), bool)
    masks[0, 3:9, 3:9] = True
    masks[1, 10:20, 12:16] = True
    maps = rng.random(masks.shape, dtype=np.float32) + 0.7 * masks
    reference = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    reference.update(_Batch(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks).int()))
    assert aupro(list(maps), list(masks)) == pytest.approx(float(reference.compute()), abs=1e-6)


def test_aupro_and_pixel_auroc_accept_mixed_sizes() -> None:
    masks = [np.zeros((28, 56), bool), np.zeros((42, 28), bool)]
    masks[0][4:10, 4:10] = True
    masks[1][20:30, 5:15] = True
    maps = [m.astype(np.float32) for m in masks]
    assert aupro(maps, masks) == pytest.approx(1.0, abs=1e-5)
    assert pixel_auroc(maps, masks) == pytest.approx(1.0)


def test_resize_for_pixel_metrics_sets_the_shorter_side() -> None:
    mask = np.zeros((100, 150), bool)
    mask[10:20, 10:20] = True
    small_map, small_mask = resize_for_pixel_metrics(np.ones((7, 10), np.float32), mask, pixel_size=50)
    assert small_map.shape == small_mask.shape == (50, 75)
    assert small_mask.dtype == bool and small_mask.sum() == 25


def test_f1_at_threshold_and_best_f1() -> None:
    scores = np.array([0.1, 0.2, 0.35, 5.0, 6.0])
    labels = np.array([0, 0, 1, 1, 1])
    assert f1_at(scores, labels, 1.0) == pytest.approx(0.8)          # misses the 0.35 defect
    assert f1_at(scores, labels, 0.3) == pytest.approx(1.0)
    best, threshold = best_f1(scores, labels)
    assert best == pytest.approx(1.0)
    assert 0.2 < threshold <= 0.35
    assert f1_at(scores, labels, threshold) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def random_backbone():  # noqa: ANN201 - a DinoBackbone; imported lazily like the module under test
    from models.backbone import create_backbone

    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", blocks=(8,))    # random init: no weights needed


def test_evaluate_end_to_end_with_patch_knn(mvtec_dir: Path, random_backbone) -> None:  # noqa: ANN001
    from models.detectors.patch_knn import PatchKNN, PatchKNNConfig

    config = PatchKNNConfig(shorter_side=SIZE, masking="off", augment_rotations=False, blur_sigma=1.0)
    ticks: list[tuple[int, int, str]] = []
    report = evaluate(
        lambda: PatchKNN(backbone=random_backbone, config=config),
        load_category(mvtec_dir),
        shots=4,
        progress=lambda done, total, message: ticks.append((done, total, message)),
    )
    data = report.to_dict()
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1", "ms_per_image", "shots", "n_test",
                "category", "config", "threshold", "per_defect_auroc", "best_f1"):
        assert key in data, f"report lacks {key}"
    assert (data["category"], data["shots"], data["n_train"], data["n_test"]) == ("widget", 4, 4, 7)
    assert set(data["per_defect_auroc"]) == {"blob", "scratch"}
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1", "best_f1"):
        assert 0.0 <= data[key] <= 1.0, f"{key} = {data[key]}"
    assert data["best_f1"] >= data["f1"]
    assert data["thresholds"]["review"] <= data["thresholds"]["fail"]
    assert data["config"]["shorter_side"] == SIZE
    assert len(data["scores"]) == 7
    assert ticks[0][:2] == (1, 8) and ticks[-1][:2] == (8, 8)
    point = data["operating_point"]
    for key in ("defect_flag_rate", "good_flag_rate", "defect_fail_rate", "good_fail_rate"):
        assert 0.0 <= point[key] <= 1.0, f"{key} = {point[key]}"
    assert set(point["per_defect_type"]) == {"blob", "scratch"}
    assert point["expected_good_flag"]["n_good"] == 4
    assert point["expected_good_fail"]["expected"] == pytest.approx(1 / 5)   # fail is above all 4 goods
    json.dumps(data)                                   # JSON-ready as the CLI writes it


class _OracleDetector:
    """Scores each image by the share of saturated-colour pixels: a hand-made perfect detector."""

    def __init__(self) -> None:
        self.train_scores = np.empty(0, dtype=np.float32)
        self.config = {"detector": "oracle"}

    @staticmethod
    def _map(image: np.ndarray) -> np.ndarray:
        spread = image.max(axis=2).astype(np.float32) - image.min(axis=2).astype(np.float32)
        return cv2.GaussianBlur((spread > 100).astype(np.float32), (5, 5), 1.0)

    def fit(self, images_rgb: list[np.ndarray]) -> None:
        self.train_scores = np.array([self._map(i).max() + 0.01 * k for k, i in enumerate(images_rgb)])

    def predict(self, images_rgb: np.ndarray) -> object:
        from models.detectors.patch_knn import Detection

        maps = np.stack([self._map(i) for i in images_rgb])
        return Detection(pred_score=maps.reshape(len(maps), -1).max(axis=1), anomaly_map=maps)


def test_evaluate_perfect_detector_scores_one(mvtec_dir: Path) -> None:
    report = evaluate(_OracleDetector(), load_category(mvtec_dir), shots=None)
    assert report.n_train == 6
    assert report.image_auroc == pytest.approx(1.0)
    assert report.pixel_auroc > 0.95
    assert report.aupro > 0.8
    assert report.per_defect_auroc == {"blob": pytest.approx(1.0), "scratch": pytest.approx(1.0)}
    assert report.best_f1 == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- operating point


def test_operating_point_rates_and_per_type_split() -> None:
    scores = [0.1, 0.5, 0.9, 0.2, 0.6, 0.95, 0.3, 0.55]
    labels = [0, 0, 0, 1, 1, 1, 1, 1]
    types = ["good", "good", "good", "scratch", "scratch", "blob", "blob", "blob"]
    point = operating_point(scores, labels, types, review=0.5, fail=0.9)
    assert point["good_flag_rate"] == pytest.approx(2 / 3) and point["good_fail_rate"] == pytest.approx(1 / 3)
    assert point["defect_flag_rate"] == pytest.approx(3 / 5) and point["defect_fail_rate"] == pytest.approx(1 / 5)
    assert point["per_defect_type"] == {
        "blob": {"n": 3, "flag_rate": pytest.approx(2 / 3), "fail_rate": pytest.approx(1 / 3)},
        "scratch": {"n": 2, "flag_rate": pytest.approx(1 / 2), "fail_rate": 0.0},
    }
    no_good = operating_point([0.7], [1], ["blob"], review=0.5, fail=0.9)
    assert math.isnan(no_good["good_flag_rate"]) and no_good["defect_flag_rate"] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        operating_point([math.nan], [0], ["good"], review=0.5, fail=0.9)
    with pytest.raises(ValueError, match="one of each"):
        operating_point([0.1, 0.2], [0], ["good"], review=0.5, fail=0.9)


def test_operating_point_agrees_with_the_verdict_rule() -> None:
    """models/ cannot import inspector.results; its rates must still be verdict_for's, thresholds in any order."""
    from inspector.results import Verdict, verdict_for

    rng = np.random.default_rng(3)
    for _ in range(50):
        scores = np.round(rng.random(40), 2)                 # ties with the thresholds happen
        labels = rng.integers(0, 2, 40)
        review, fail = (float(v) for v in np.round(rng.random(2), 2))
        point = operating_point(scores, labels, ["x"] * 40, review=review, fail=fail)
        verdicts = [verdict_for(float(s), review, fail) for s in scores]
        for label, kind in ((0, "good"), (1, "defect")):
            chosen = [v for v, y in zip(verdicts, labels, strict=True) if y == label]
            if not chosen:
                continue
            flagged = sum(v in (Verdict.REVIEW, Verdict.FAIL) for v in chosen) / len(chosen)
            assert point[f"{kind}_flag_rate"] == pytest.approx(flagged)
            assert point[f"{kind}_fail_rate"] == pytest.approx(sum(v is Verdict.FAIL for v in chosen) / len(chosen))
