"""``benchmarks/type_crop_cost.py``: the crop pass timed beside the frame's, ratios written with their conditions."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from benchmarks import type_crop_cost


def test_the_crop_pass_is_timed_beside_the_frames_and_written(tmp_path: Path, tiny_weights_file: Path) -> None:
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (120, 180, 3), dtype=np.uint8))
    out = tmp_path / "cost.json"
    assert type_crop_cost.main(["--image", str(image), "--rounds", "1", "--threads", "1",
                                "--weights", str(tiny_weights_file), "--json", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["frame_size"] == [120, 180] and (data["shorter_side"], data["crop_side"]) == (448, 224)
    assert set(data["median_s"]) == {"frame", "crop_1", "crop_3"} and min(data["median_s"].values()) > 0
    assert data["crop_1_over_frame"] == data["median_s"]["crop_1"] / data["median_s"]["frame"]
    assert data["device"] == "cpu" and "command" in data
