"""Timing parts of the speed benchmark (``benchmarks/speed.py``): runners, interleaved timing, peak memory,
ratios and the environment a result was measured in.

Kept apart from the benchmark's driver so that the arithmetic every README speed figure rests on (p50, p99,
frames/s, the ours / anomalib ratios) is tested on its own (tests/benchmarks/test_speed.py) with a fake
clock instead of wall time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PeakMemory", "Row", "Runner", "cpu_model", "latency_pair", "ratio", "set_ratios", "sync_device",
           "time_pair", "versions", "write_result"]


# --------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of a code block: CUDA allocator peak on a GPU, else sampled process RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0
        self.base_mb = 0.0

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the lifetime peak is the best there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @contextlib.contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_mb = torch.cuda.memory_allocated() / 2**20
            yield self
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        self.base_mb = self.rss_mb()
        peak = [self.base_mb]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], self.rss_mb())

        thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak_mb = max(peak[0], self.rss_mb())


@dataclass(kw_only=True)
class Runner:
    """One model behind one call: ``run(batch (B, H, W, 3) uint8 RGB) -> (scores (B,), maps (B, H, W))``."""

    name: str
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    query_bytes_per_frame: float = 0.0  # size of the peer's (queries x bank) temporaries per frame


@dataclass(kw_only=True)
class Row:
    size: str
    bank: int
    model: str
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    best_batch: int = 0
    fps: float = math.nan
    peak_mb: float = math.nan
    mem_kind: str = ""
    skipped: list[str] = field(default_factory=list)
    ratio_fps: float | None = None  # ours / anomalib throughput (same size and bank)
    ratio_p50: float | None = None  # anomalib p50 / ours p50 (> 1: we are faster)


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None where either side was not measured (a skipped row, 0 or NaN)."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or numerator <= 0 or denominator <= 0:
        return None
    return numerator / denominator


def set_ratios(ours: list[Row], theirs: Row) -> None:
    """Fill ``ratio_fps`` (ours / anomalib frames/s) and ``ratio_p50`` (anomalib p50 / ours p50) of ``ours``:
    both above 1 when we are faster."""
    for row in ours:
        row.ratio_fps = ratio(row.fps, theirs.fps)
        row.ratio_p50 = ratio(theirs.p50_ms, row.p50_ms)


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timing ends when the work does."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pair(
    runners: list[Runner],
    frames: list[np.ndarray],
    *,
    device: torch.device,
    repeats: int,
    batch_sizes: list[int],
    peer_mem_bytes: float,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Row]:
    """Time the runners interleaved frame by frame (and batch by batch), so load drift on a shared
    machine hits them alike; then measure each one's peak memory in a pass of its own.

    Returns one row per runner: p50/p99 of the batch-1 latencies, and the best frames/s over
    ``batch_sizes`` (frames run / seconds spent at that batch size). ``clock`` is for tests.
    """
    size = f"{frames[0].shape[0]}x{frames[0].shape[1]}"
    rows = [Row(size=size, bank=0, model=r.name) for r in runners]
    for runner in runners:
        for frame in frames[:warmup]:
            runner.run(frame[None])
    lat: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for frame in frames:
            for i, runner in enumerate(runners):
                sync_device(device)
                t0 = clock()
                runner.run(frame[None])  # ends with the results in host memory
                lat[i].append(clock() - t0)
    best = [(0, 0.0) for _ in runners]
    best_batch: list[np.ndarray | None] = [None for _ in runners]
    for b in batch_sizes:
        batch = np.stack([frames[i % len(frames)] for i in range(b)])
        n_iter = max(1, (repeats * len(frames)) // b)
        active = []
        for i, runner in enumerate(runners):
            need = runner.query_bytes_per_frame * b
            if need > peer_mem_bytes:
                rows[i].skipped.append(f"batch {b} (needs {need / 2**30:.1f} GB of similarity matrix)")
                continue
            runner.run(batch)  # warm-up at this shape
            active.append(i)
        spent = {i: 0.0 for i in active}
        for _ in range(n_iter):
            for i in active:
                sync_device(device)
                t0 = clock()
                runners[i].run(batch)
                spent[i] += clock() - t0
        for i in active:
            fps = b * n_iter / spent[i]
            if fps > best[i][1]:
                best[i] = (b, fps)
                best_batch[i] = batch
    for i, (runner, row) in enumerate(zip(runners, rows, strict=True)):
        row.p50_ms = float(np.percentile(lat[i], 50) * 1e3)
        row.p99_ms = float(np.percentile(lat[i], 99) * 1e3)
        row.best_batch, row.fps = best[i]
        mem = PeakMemory(device)
        with mem.measure():
            runner.run(frames[0][None])
            chosen = best_batch[i]
            if chosen is not None:
                runner.run(chosen)
        row.peak_mb = mem.peak_mb if device.type == "cuda" else mem.peak_mb - mem.base_mb
        row.mem_kind = "GPU alloc" if device.type == "cuda" else "RSS increase"
    return rows


def latency_pair(
    base: Callable[[np.ndarray], Any], lever: Callable[[np.ndarray], Any], frames: list[np.ndarray], repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """Batch-1 latencies (s) of ``base`` and ``lever``, interleaved frame by frame."""
    base(frames[0][None])
    lever(frames[0][None])
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        for frame in frames:
            for fn, out in ((base, a), (lever, b)):
                t0 = clock()
                fn(frame[None])
                out.append(clock() - t0)
    return a, b


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Versions of what the timings depend on (absent packages are left out)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "timm", "numpy", "onnxruntime", "onnxruntime-gpu", "anomalib", "opencv-python-headless"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def write_result(path: Path, data: dict[str, Any]) -> None:
    """A benchmark's result JSON at ``path`` (its folder made), whole or not at all (``models.files.atomic_write``)."""
    from models.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")
