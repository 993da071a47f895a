"""``evaluate_defect_types`` end to end on a tiny synthetic category, and its cache (features, maps, good bank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from models.defect_types import DefectTypeConfig
from models.type_evaluation import evaluate_defect_types

SIZE = 56   # px, a multiple of the 14-px patch


def _part(rng: np.random.Generator) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 40, np.uint8)
    cv2.circle(image, (SIZE // 2, SIZE // 2), SIZE // 3, (170, 170, 170), -1)
    return np.clip(image.astype(int) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def two_types(tmp_path: Path) -> Path:
    """A category with 4 train/good images and 4 scratches and 4 blobs under test/."""
    rng = np.random.default_rng(0)
    root = tmp_path / "widget"
    for sub in ("train/good", "test/good", "test/scratch", "test/blob", "ground_truth/scratch", "ground_truth/blob"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), _part(rng))
    cv2.imwrite(str(root / "test/good/000.png"), _part(rng))
    for i in range(4):
        scratch, blob = _part(rng), _part(rng)
        scratch_mask, blob_mask = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
        for image, mask, colour in ((scratch, scratch_mask, (20, 20, 230)), (blob, blob_mask, (0, 200, 255))):
            for target, value in ((image, colour), (mask, (255, 255, 255))):
                if image is scratch:
                    cv2.line(target, (12 + i, 16), (44, 38 - i), value, 3)
                else:
                    cv2.circle(target, (28 + i, 26), 7, value, -1)
        for kind, image, mask in (("scratch", scratch, scratch_mask), ("blob", blob, blob_mask)):
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), image)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return root


def _make_detector() -> Any:
    from models.backbone import create_backbone
    from models.detectors import PatchKNN, PatchKNNConfig

    backbone = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    return PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, masking="off",
                                                             augment_rotations=False))


def _no_detector() -> Any:
    msg = "the cache should have made the detector unnecessary"
    raise AssertionError(msg)


def test_typing_is_measured_and_a_rerun_from_the_cache_needs_no_backbone(two_types: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = evaluate_defect_types(_make_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache)
    assert first.n_types == 2 and first.n_defect_images == 8 and first.n_typed_per_draw == 4
    assert 0.0 <= first.accuracy <= 1.0 and len(first.accuracy_per_draw) == 2
    assert first.config["residual"] is True          # the default descriptor needs the good bank ...
    folders = list(cache.iterdir())
    assert len(folders) == 1 and (folders[0] / "bank.npy").is_file()   # ... which the cache keeps
    again = evaluate_defect_types(_no_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache)
    assert again.accuracy_per_draw == first.accuracy_per_draw and again.per_type == first.per_type
    # without the residual the embeddings are other ones, from the same cached features and maps
    plain = evaluate_defect_types(_no_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache,
                                  config=DefectTypeConfig(residual=False))
    assert plain.config["residual"] is False and plain.n_typed_per_draw == 4
