"""Soak test of the worker pipeline: many small frames, a trivial inspector, memory and threads watched.

Pushes ``--frames`` frames (default 100,000) from an in-memory looping source through the real
`inspector.pipeline.Pipeline` on the CPU, scores each with a few numpy operations, and records every
result in the real SQLite statistics store (`inspector.store.Store`, in a temporary folder unless
``--db`` is given; ``--no-store`` counts results in memory instead). Optionally archives FAIL frames
(``--archive``). Prints resident memory (VmRSS from /proc/self/status), thread count and rates at
intervals, then a summary; exits 1 when results recorded != frames sent, a thread outlived the run,
or resident memory grew by more than ``--max-rss-growth-mb`` after warm-up.

The inspector is deliberately trivial: this measures the pipeline, the store and the archive
(hand-over, bookkeeping, leaks), not the model. The store is written to as fast as the pipeline
produces; the consumer waits while more than ``--max-pending`` results are queued for the database,
as a real model (tens of frames per second) would give it time to.

Usage:
    python benchmarks/soak.py                      # 100,000 frames, 64x64, SQLite store
    python benchmarks/soak.py --frames 5000 --size 112 --archive
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from inspector.archive import Archive, ArchivePolicy
from inspector.capture import ArraySource
from inspector.pipeline import Pipeline, PipelineEvent
from inspector.results import Frame, InspectionResult, StageTimes, Verdict


class MeanDiffInspector:
    """Score = mean absolute difference to a reference frame; FAIL above a threshold. No model."""

    def __init__(self, reference_bgr: np.ndarray, *, fail_above: float, name: str = "soak") -> None:
        self.name = name
        self._reference = reference_bgr.astype(np.int16)
        self._fail_above = fail_above

    def inspect(self, frame: Frame) -> InspectionResult:
        start = time.perf_counter()
        diff = np.abs(frame.image_bgr.astype(np.int16) - self._reference).mean(axis=2)
        diff = diff.astype(np.float32) / 255.0
        score = float(diff.mean())
        verdict = Verdict.FAIL if score > self._fail_above else Verdict.PASS
        return InspectionResult(
            frame_id=frame.frame_id,
            timestamp=frame.timestamp,
            source=frame.source,
            recipe=self.name,
            model_version="soak",
            verdict=verdict,
            score=score,
            anomaly_map=diff,
            image_bgr=frame.image_bgr,
            times=StageTimes(capture_ms=frame.capture_ms, model_ms=(time.perf_counter() - start) * 1000),
            path=frame.path,
        )


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux: VmRSS of /proc/self/status; else 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames to send (default 100000)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temporary one)")
    parser.add_argument("--no-store", action="store_true", help="count results in memory instead")
    parser.add_argument("--archive", action="store_true", help="also archive FAIL frames (temporary folder)")
    parser.add_argument("--max-pending", type=int, default=5000,
                        help="results queued for the store before waiting")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                        help="allowed RSS growth after warm-up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    rng = np.random.default_rng(0)
    reference = np.full((args.size, args.size, 3), 128, np.uint8)
    images = [
        np.clip(reference.astype(np.int16) + rng.integers(-40, 41, reference.shape), 0, 255).astype(np.uint8)
        for _ in range(16)
    ]
    scores = sorted(float(np.abs(i.astype(np.int16) - reference).mean()) / 255.0 for i in images)
    inspector = MeanDiffInspector(reference, fail_above=scores[-3])   # 2 of the 16 images FAIL

    workdir = tempfile.TemporaryDirectory(prefix="inspector-soak-")
    threads_before = threading.active_count()
    counted = 0
    store = archive = None
    events: list[PipelineEvent] = []
    if not args.no_store:
        from inspector.store import Store  # imported here: --no-store runs without SQLAlchemy

        store = Store(args.db or Path(workdir.name) / "soak.db", max_pending=max(args.max_pending * 2, 1000))
    if args.archive:
        archive = Archive(ArchivePolicy(directory=Path(workdir.name) / "archive", max_bytes=50 * 1024**2),
                          on_warning=print)

    def record(result: InspectionResult) -> None:
        nonlocal counted
        counted += 1
        paths = archive.submit(result) if archive is not None else None
        if store is not None:
            while store.pending > args.max_pending:   # back-pressure; see the module docstring
                time.sleep(0.001)
            store.record(
                result,
                image_path=str(paths.image) if paths else None,
                overlay_path=str(paths.overlay) if paths and paths.overlay else None,
            )

    source = ArraySource(images, loop=True, count=args.frames, name="soak memory")
    pipeline = Pipeline(source, inspector, consumers=[record], on_event=events.append)
    where = "off" if store is None else store.display_name
    print(f"soak: {args.frames} frames of {args.size}x{args.size}, store={where}, "
          f"archive={'on' if archive else 'off'}, threads at start={threads_before}, rss={rss_mb():.1f} MiB")
    print(f"{'t_s':>7} {'sent':>8} {'inspected':>9} {'recorded':>9} {'fps':>8} {'rss_MiB':>8} {'threads':>7}")
    start = time.monotonic()
    warm_rss: float | None = None
    peak_rss = rss_mb()
    with pipeline:
        pipeline.start()
        while not pipeline.wait(args.interval):
            stats = pipeline.stats()
            rss = rss_mb()
            peak_rss = max(peak_rss, rss)
            if warm_rss is None and stats.frames_inspected >= min(args.frames // 10, 10_000):
                warm_rss = rss
            recorded = store.recorded_count if store is not None else counted
            elapsed = time.monotonic() - start
            print(f"{elapsed:7.1f} {stats.frames_captured:8d} {stats.frames_inspected:9d} {recorded:9d} "
                  f"{stats.fps:8.0f} {rss:8.1f} {threading.active_count():7d}")
    elapsed = time.monotonic() - start
    stats = pipeline.stats()
    if store is not None:
        store.flush(timeout=60)
    if archive is not None:
        archive.flush(60)
        archive.close()
    recorded = store.recorded_count if store is not None else counted
    dropped_by_store = store.dropped_count if store is not None else 0
    if store is not None:
        store.close()
    end_rss = rss_mb()
    peak_rss = max(peak_rss, end_rss)
    threads_after = threading.active_count()
    workdir.cleanup()

    print(f"sent={stats.frames_captured} inspected={stats.frames_inspected} recorded={recorded} "
          f"dropped_pipeline={stats.frames_dropped} dropped_store={dropped_by_store} errors={stats.errors}")
    print(f"elapsed={elapsed:.1f} s  rate={stats.frames_inspected / elapsed:.0f} frames/s  "
          f"rss warm={warm_rss or 0:.1f} end={end_rss:.1f} peak={peak_rss:.1f} MiB  "
          f"threads before={threads_before} after={threads_after}")
    if archive is not None:
        print(f"archive saved={archive.saved} skipped={archive.skipped}")
    warnings = [e for e in events if e.kind.value in ("warning", "source_failed")]
    for event in warnings:
        print(f"event {event.kind.value}: {event.message}")
    problems = []
    if recorded != args.frames or stats.frames_captured != args.frames:
        problems.append(f"recorded {recorded} of {args.frames} frames sent")
    if threads_after != threads_before:
        problems.append(f"threads {threads_before} -> {threads_after}")
    if warm_rss is not None and end_rss - warm_rss > args.max_rss_growth_mb:
        problems.append(f"RSS grew {end_rss - warm_rss:.1f} MiB after warm-up")
    if warnings:
        problems.append(f"{len(warnings)} warning event(s)")
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
