"""benchmarks/end_to_end.py: every replayed file reaches the store, the latencies and frames/s add up."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.end_to_end import EndToEnd, percentiles, run_end_to_end
from benchmarks.soak import MeanDiffInspector
from tests.helpers.images import textured_part, write_images


def test_percentiles_and_rate_arithmetic() -> None:
    values = [float(v) for v in range(1, 101)]                     # 1..100 ms
    p = percentiles(values)
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01) and p["max"] == 100.0
    assert all(math.isnan(v) for v in percentiles([]).values())
    run = EndToEnd(service_ms=tuple(values), from_capture_ms=tuple(v * 2 for v in values), wall_s=4.0,
                   recorded=100, errors=0)
    summary = run.summary()
    assert summary["frames"] == 100 and summary["frames_per_s"] == pytest.approx(25.0)
    assert summary["from_capture_ms"]["p50"] == pytest.approx(101.0)


def test_replay_reaches_the_store_with_one_latency_per_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [textured_part(rng, 48) for _ in range(12)]
    folder = tmp_path / "replay"
    write_images(folder, images)
    (folder / "img_999.png").write_bytes(b"not a png")                # an ERROR frame, still recorded
    inspector = MeanDiffInspector(images[0], fail_above=0.5, name="e2e")
    run = run_end_to_end(folder, inspector, tmp_path / "e2e.db", timeout_s=60)
    assert len(run.service_ms) == len(run.from_capture_ms) == 13
    assert run.recorded == 13 and run.errors == 1
    assert sum(s > 0 for s in run.service_ms) >= 12 and run.wall_s > 0   # the ERROR frame skips the model
    # waiting in the file queue only adds: a frame's latency from capture is at least its worker time
    assert sum(run.from_capture_ms) >= sum(s for s in run.service_ms) - 13 * 50

