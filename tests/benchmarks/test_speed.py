"""benchmarks/speed.py and _timing: the p50/p99, frames/s and ours / anomalib ratios on a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks._timing import Row, Runner, latency_pair, ratio, set_ratios, time_pair
from tests.benchmarks.conftest import part
from tests.helpers.images import write_images


class FakeClock:
    """A clock that only moves when a fake model runs: timings are exact, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_runner(name: str, clock: FakeClock, *, per_frame_s: float, per_call_s: float = 0.0,
                query_bytes_per_frame: float = 0.0) -> Runner:
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clock.now += per_call_s + per_frame_s * len(batch)
        return np.zeros(len(batch), np.float32), np.zeros(batch.shape[:3], np.float32)

    return Runner(name=name, run=run, query_bytes_per_frame=query_bytes_per_frame)


def test_ratio_is_none_where_a_side_was_not_measured() -> None:
    assert ratio(30.0, 10.0) == pytest.approx(3.0)
    for a, b in [(math.nan, 1.0), (1.0, math.nan), (0.0, 1.0), (1.0, 0.0), (math.inf, 1.0)]:
        assert ratio(a, b) is None


def test_set_ratios_are_above_one_when_we_are_faster() -> None:
    ours = Row(size="56x84", bank=10, model="ours", p50_ms=10.0, fps=120.0)
    theirs = Row(size="56x84", bank=10, model="anomalib", p50_ms=40.0, fps=30.0)
    set_ratios([ours], theirs)
    assert (ours.ratio_fps, ours.ratio_p50) == (pytest.approx(4.0), pytest.approx(4.0))
    assert (theirs.ratio_fps, theirs.ratio_p50) == (None, None)


def test_time_pair_on_a_fake_clock() -> None:
    clock = FakeClock()
    frames = [np.zeros((56, 84, 3), np.uint8) for _ in range(4)]
    # ours: 10 ms per frame plus 20 ms per call; the peer: 30 ms per frame, and its batch 4 is too big
    ours = fake_runner("ours", clock, per_frame_s=0.010, per_call_s=0.020)
    peer = fake_runner("anomalib", clock, per_frame_s=0.030, query_bytes_per_frame=1.0)
    rows = time_pair([ours, peer], frames, device=torch.device("cpu"), repeats=2, batch_sizes=[1, 2, 4],
                     peer_mem_bytes=2.5, warmup=1, clock=clock)
    mine, theirs = rows
    assert (mine.p50_ms, mine.p99_ms) == (pytest.approx(30.0), pytest.approx(30.0))
    assert (theirs.p50_ms, theirs.p99_ms) == (pytest.approx(30.0), pytest.approx(30.0))
    # ours: batch 4 runs 4 frames in 60 ms (66.7 frames/s), the best; the peer: 33.3 frames/s at any batch
    assert (mine.best_batch, mine.fps) == (4, pytest.approx(4 / 0.060))
    assert theirs.best_batch == 1 and theirs.fps == pytest.approx(1 / 0.030)
    assert theirs.skipped == ["batch 4 (needs 0.0 GB of similarity matrix)"] and mine.skipped == []
    set_ratios([mine], theirs)
    assert mine.ratio_fps == pytest.approx((4 / 0.060) / (1 / 0.030))
    assert mine.ratio_p50 == pytest.approx(1.0)
    assert mine.mem_kind == "RSS increase" and math.isfinite(mine.peak_mb)


def test_latency_pair_interleaves_and_times_each_side() -> None:
    clock = FakeClock()
    calls: list[str] = []

    def base(batch: np.ndarray) -> None:
        calls.append("base")
        clock.now += 0.004

    def lever(batch: np.ndarray) -> None:
        calls.append("lever")
        clock.now += 0.001

    frames = [np.zeros((4, 4, 3), np.uint8)] * 3
    a, b = latency_pair(base, lever, frames, repeats=2, clock=clock)
    assert a == pytest.approx([0.004] * 6) and b == pytest.approx([0.001] * 6)
    assert calls[2:6] == ["base", "lever", "base", "lever"]          # after one warm-up call each


@pytest.mark.filterwarnings("ignore:The anomalib.models.components.dinov2 package:FutureWarning")
def test_a_tiny_speed_run_writes_consistent_numbers(
    tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """speed.py end to end on random weights and 56 px parts: same scores as anomalib, ratios from its rows."""
    pytest.importorskip("anomalib")
    from benchmarks import speed

    rng = np.random.default_rng(0)
    write_images(tmp_path / "data" / "train" / "good", [part(rng)[0] for _ in range(2)])
    write_images(tmp_path / "data" / "test" / "good", [part(rng)[0] for _ in range(2)])
    write_images(tmp_path / "data" / "test" / "blob", [part(rng, defect=True)[0] for _ in range(2)])
    out = tmp_path / "speed.json"
    code = speed.main(["--data-root", str(tmp_path / "data"), "--device", "cpu", "--sizes", "56", "--frames", "3",
                       "--repeats", "1", "--shots", "1", "--large-bank", "0", "--no-onnx", "--batch-sizes", "1,2",
                       "--weights", str(tiny_weights_file), "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    check = data["score_checks"]["56"]
    assert check["same_scores"] is True, check                     # ours at block 12 = anomalib, same bank
    assert len(check["ours_scores"]) == 3
    mine, theirs = data["rows"]
    assert (mine["model"], theirs["model"]) == ("ours", "anomalib")
    assert mine["size"] == "56x84" and mine["bank"] == theirs["bank"] > 0
    assert mine["ratio_fps"] == pytest.approx(mine["fps"] / theirs["fps"])
    assert mine["ratio_p50"] == pytest.approx(theirs["p50_ms"] / mine["p50_ms"])
    assert mine["p50_ms"] <= mine["p99_ms"] and mine["best_batch"] in (1, 2)
    assert data["env"]["command"].startswith("python -m benchmarks.speed --data-root")
    assert {"python", "torch", "timm", "anomalib"} <= set(data["env"]["versions"])
    printed = capsys.readouterr().out
    assert "score check at 56" in printed and "same scores" in printed and f"{mine['ratio_fps']:.2f}x" in printed


def test_test_frames_take_every_class_in_turn_until_every_file_is_taken(tmp_path: Path) -> None:
    from benchmarks.speed import image_files

    rng = np.random.default_rng(1)
    for name, count in (("good", 4), ("blob", 1), ("scratch", 2)):
        write_images(tmp_path / "test" / name, [part(rng)[0] for _ in range(count)])
    files = image_files(tmp_path, "test")
    assert len(files) == 7                           # zip() stopped at the smallest class: 3
    assert [f.parent.name for f in files] == ["blob", "good", "scratch", "good", "scratch", "good", "good"]


@pytest.mark.filterwarnings("ignore:The anomalib.models.components.dinov2 package:FutureWarning")
def test_a_fast_row_that_fails_is_reported_and_the_other_rows_stay(
    tmp_path: Path, tiny_weights_file: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("anomalib")
    from benchmarks import speed

    def broken(*_: object, **__: object) -> None:
        msg = "operation not permitted when stream is capturing"
        raise RuntimeError(msg)

    monkeypatch.setattr(speed, "check_parity", broken)
    rng = np.random.default_rng(0)
    write_images(tmp_path / "data" / "train" / "good", [part(rng)[0]])
    write_images(tmp_path / "data" / "test" / "good", [part(rng)[0] for _ in range(2)])
    out = tmp_path / "speed.json"
    code = speed.main(["--data-root", str(tmp_path / "data"), "--device", "cpu", "--sizes", "56", "--frames", "2",
                       "--repeats", "1", "--shots", "1", "--large-bank", "0", "--no-onnx", "--batch-sizes", "1",
                       "--precision", "bf16", "--weights", str(tiny_weights_file), "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["complete"] is True
    assert "stream is capturing" in data["score_checks"]["56"]["fast_error"]
    assert [r["model"] for r in data["rows"]] == ["ours", "anomalib"]


def test_gpu_profile_and_zero_shot_scripts_run_on_the_cpu(tmp_path: Path, tiny_weights_file: Path) -> None:
    """The GPU scripts' CPU run: the numbers they write are there and consistent (the GPU run is the real one)."""
    from benchmarks import gpu_profile, gpu_zero_shot

    rng = np.random.default_rng(0)
    write_images(tmp_path / "data" / "train" / "good", [part(rng)[0] for _ in range(2)])
    write_images(tmp_path / "data" / "test" / "good", [part(rng)[0] for _ in range(2)])
    profile = tmp_path / "profile.json"
    assert gpu_profile.main(["--data-root", str(tmp_path / "data"), "--weights", str(tiny_weights_file),
                             "--device", "cpu", "--size", "56", "--shots", "2", "--frames", "2", "--repeats", "1",
                             "--batch", "2", "--json", str(profile)]) == 0
    data = json.loads(profile.read_text(encoding="utf-8"))
    assert set(data["batch1_p50_ms"]) == {"eigh", "squaring"} and data["batch"] == 2
    assert 0 < data["station_batch1_p50_ms"] <= data["station_batch1_p99_ms"]
    assert data["score_max_abs_diff_eigh_vs_squaring"] == 0.0     # on the CPU both are eigh
    before = tmp_path / "zero_shot_before.py"
    module = Path(__file__).resolve().parents[2] / "models" / "detectors" / "zero_shot.py"
    before.write_text(module.read_text(encoding="utf-8"), encoding="utf-8")
    zs = tmp_path / "zero_shot.json"
    assert gpu_zero_shot.main(["--data-root", str(tmp_path / "data"), "--weights", str(tiny_weights_file),
                               "--device", "cpu", "--images", "5", "--repeats", "1", "--before", str(before),
                               "--json", str(zs)]) == 0
    data = json.loads(zs.read_text(encoding="utf-8"))
    assert data["images"] == 5 and data["score_max_abs_diff_before_vs_after"] == 0.0
    assert data["per_image_ms"]["after"]["total"] == pytest.approx(1e3 * data["median_s"]["after"]["total_s"] / 5)
