"""Fixtures for the benchmark harness tests: a random-weights ViT-S/14, its all-block feature store, tiny parts.

Random DINOv2 weights are enough here: the tests check that the harness hands every model the same
numbers (cache = backbone, peer = its own extraction, sweep = PatchKNN), not how good the features are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks._features import FeatureStore
from models.backbone import DinoBackbone, create_backbone
from tests.helpers.images import textured_part, with_defect, write_images

SHORTER_SIDE = 56          # 4 x 5 patches of 14 px for the 56 x 70 frames below: a ViT forward in milliseconds
WEIGHTS_SHA = "0123456789abcdef" * 4


@pytest.fixture(scope="session")
def random_state_dict() -> dict[str, torch.Tensor]:
    """A randomly initialised timm ViT-S/14 DINOv2 state dict (seed 0)."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    return {k: v.detach().clone() for k, v in vit.state_dict().items()}


@pytest.fixture(scope="session")
def full_backbone(random_state_dict: dict[str, torch.Tensor]) -> DinoBackbone:
    """All 12 blocks with the final norm: what the feature store runs on a miss."""
    return create_backbone(state_dict=random_state_dict, blocks=tuple(range(1, 13)), device="cpu")


@pytest.fixture
def store(tmp_path: Path, full_backbone: DinoBackbone) -> FeatureStore:
    return FeatureStore(tmp_path / "cache", weights_sha256=WEIGHTS_SHA, full=full_backbone)


def part(rng: np.random.Generator, *, defect: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 56 x 70 BGR part and its defect mask (all False for a good part)."""
    import cv2

    bgr = cv2.resize(textured_part(rng, size=70), (70, 56), interpolation=cv2.INTER_AREA)
    if defect:
        return with_defect(bgr, rng)
    return bgr, np.zeros(bgr.shape[:2], bool)


@pytest.fixture
def parts(tmp_path: Path) -> dict[str, list[Path]]:
    """PNG files: four good training parts, three good and three defective test parts, the defects' masks."""
    rng = np.random.default_rng(0)
    train = [part(rng)[0] for _ in range(4)]
    good = [part(rng)[0] for _ in range(3)]
    bad = [part(rng, defect=True) for _ in range(3)]
    return {"train": write_images(tmp_path / "train", train),
            "good": write_images(tmp_path / "good", good),
            "bad": write_images(tmp_path / "bad", [image for image, _ in bad]),
            "masks": write_images(tmp_path / "masks", [mask.astype(np.uint8) * 255 for _, mask in bad])}
