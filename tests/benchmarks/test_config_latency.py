"""benchmarks/config_latency.py: the default and a changed configuration timed on the same frames, interleaved."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks import config_latency
from models.backbone import create_backbone
from tests.benchmarks.conftest import SHORTER_SIDE, part
from tests.helpers.images import write_images


def _category(root: Path) -> Path:
    rng = np.random.default_rng(0)
    write_images(root / "train" / "good", [part(rng)[0] for _ in range(4)])
    write_images(root / "test" / "good", [part(rng)[0] for _ in range(2)])
    bad = [part(rng, defect=True) for _ in range(2)]
    for path, (_, mask) in zip(write_images(root / "test" / "blob", [b for b, _ in bad]), bad, strict=True):
        (root / "ground_truth" / "blob").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "ground_truth" / "blob" / f"{path.stem}_mask.png"), mask.astype(np.uint8) * 255)
    return root


def test_both_configurations_are_fitted_alike_and_timed(tmp_path: Path,
                                                        random_state_dict: dict[str, torch.Tensor]) -> None:
    backbone = create_backbone(state_dict=random_state_dict, blocks=(2,), device="cpu")
    row = config_latency.measure(_category(tmp_path / "tiny"), {"second_scale": 0}, shots=4, frames=3, rounds=2,
                                 backbone=backbone, base={"shorter_side": SHORTER_SIDE})
    assert row["second_scale_active"] == {"default": True, "changed": False}
    assert row["banks"]["default"] == row["banks"]["changed"] > 0
    assert row["frames"] == 3 and all(ms > 0 for ms in row["median_ms"].values())
    assert row["default_over_changed"] == pytest.approx(row["median_ms"]["default"] / row["median_ms"]["changed"])
    json.dumps(row)                                   # what --json writes


def test_too_few_good_images_name_the_folder(tmp_path: Path) -> None:
    root = _category(tmp_path / "tiny")
    with pytest.raises(SystemExit, match="tiny: needs 16 good training images"):
        config_latency._frames(root, 16, 2)
