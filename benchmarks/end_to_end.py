"""End to end on the CPU: a replayed image folder -> Pipeline -> Station -> ResultRecorder -> recorded (issue 17).

Teaches the demo recipe's model (VisA fryum, ``inspector/demo_data``) at ``--size`` px (default 224)
on its good frames in a temporary folder, then replays ``--frames`` image files (the demo test
images, copied round-robin into one folder, so every frame is decoded from a file) through the real
`inspector.pipeline.Pipeline` (file source: every frame inspected, in order) into the real
`inspector.station.Station`, and records each result with `inspector.recording.ResultRecorder`
(the durable journal, forwarded to a real SQLite `inspector.store.Store`).

Per frame it reports two latencies, in milliseconds:

* ``service``: reading and decoding the file (``capture_ms``) plus the time from the worker taking
  the frame to the recorder's durable receipt (inference, regions, journal commit): what one frame
  costs when the line is not backed up;
* ``from_capture``: from the frame being captured to its receipt, which also counts the time it
  waited in the pipeline's bounded file queue behind earlier frames (a replay runs flat out).

Throughput is frames recorded per second of wall time, from ``start()`` to the last receipt. The
run fails (exit 1) unless every frame has a receipt and the store holds every result at the end.

Usage (repository root):
    python -m benchmarks.end_to_end --frames 200 --json benchmarks/results/end_to_end_cpu_224.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture import image_files
from inspector.capture.base import FolderSpec
from inspector.capture.sources import FolderSource
from inspector.paths import ALLOWED_DIRS_ENV
from inspector.pipeline import FrameInspector, Pipeline, PipelineEvent
from inspector.recording import ResultRecorder
from inspector.results import InspectionResult

logger = logging.getLogger("benchmarks.end_to_end")

DEMO = Path(__file__).resolve().parents[1] / "inspector" / "demo_data" / "visa_fryum"


@dataclass(frozen=True, kw_only=True)
class EndToEnd:
    """What one run measured: per-frame latencies (ms, frame order) and the wall time."""

    service_ms: tuple[float, ...]
    from_capture_ms: tuple[float, ...]
    wall_s: float
    recorded: int          # inspection rows in the store after the recorder drained its journal
    errors: int            # ERROR verdicts among the frames

    def summary(self) -> dict[str, Any]:
        """p50/p99 of both latencies and frames/s (what goes into the JSON)."""
        frames = len(self.service_ms)
        return {"frames": frames, "recorded": self.recorded, "errors": self.errors, "wall_s": self.wall_s,
                "frames_per_s": frames / self.wall_s if self.wall_s > 0 else 0.0,
                "service_ms": percentiles(self.service_ms), "from_capture_ms": percentiles(self.from_capture_ms)}


def percentiles(values_ms: tuple[float, ...] | list[float]) -> dict[str, float]:
    """p50, p99 and max of ``values_ms`` (linear interpolation, numpy's default); empty: NaN."""
    if not values_ms:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(values_ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


class _Timed:
    """The station seen by the pipeline, noting when the worker took each frame (``perf_counter``)."""

    def __init__(self, inner: FrameInspector) -> None:
        self._inner = inner
        self.started: dict[int, float] = {}

    @property
    def name(self) -> str:
        return self._inner.name

    def inspect(self, frame: Any) -> InspectionResult:
        self.started[frame.frame_id] = time.perf_counter()
        return self._inner.inspect(frame)


def replay_folder(folder: Path, frames: int) -> Path:
    """Fill ``folder`` with ``frames`` copies of the demo test images, round-robin, in replay order."""
    images = image_files(DEMO / "test")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        src = images[i % len(images)]
        shutil.copy(src, folder / f"{i:05d}{src.suffix}")
    return folder


def run_end_to_end(folder: Path, inspector: FrameInspector, store_path: Path, *, timeout_s: float = 3600) -> EndToEnd:
    """Replay every image of ``folder`` through the pipeline into ``inspector`` and a recorder on ``store_path``.

    Raises:
        RuntimeError: the replay did not finish within ``timeout_s``, or the store did not take every result.
    """
    from inspector.store import Store

    timed = _Timed(inspector)
    store = Store(store_path)
    recorder = ResultRecorder(store)
    service: dict[int, float] = {}
    from_capture: dict[int, float] = {}
    errors = 0
    lock = threading.Lock()
    events: list[PipelineEvent] = []

    def record(result: InspectionResult) -> None:
        nonlocal errors
        receipt = recorder.record(result)
        done = time.perf_counter()
        if receipt is None:   # only without a store: never here
            return
        with lock:
            started = timed.started.pop(result.frame_id, done)
            service[result.frame_id] = result.times.capture_ms + (done - started) * 1000
            from_capture[result.frame_id] = (receipt.durable_at - result.timestamp) * 1000
            errors += result.verdict.value == "ERROR"

    pipeline = Pipeline(FolderSource(FolderSpec(path=folder)), timed, consumers=[record], on_event=events.append)
    try:
        start = time.perf_counter()
        with pipeline:
            pipeline.start()
            if not pipeline.wait(timeout_s):
                msg = f"end-to-end replay of {folder} did not finish within {timeout_s:.0f} s"
                raise RuntimeError(msg)
        wall = time.perf_counter() - start
        if not recorder.wait_stored(timeout=120):
            msg = f"{store_path}: the recorder still holds {recorder.pending} result(s) after 120 s"
            raise RuntimeError(msg)
        recorded = stored_rows(store)
    finally:
        recorder.close()
        store.close()
    for event in events:
        if event.kind.value in ("warning", "source_failed"):
            logger.warning("pipeline %s: %s", event.kind.value, event.message)
    ids = sorted(service)
    return EndToEnd(service_ms=tuple(service[i] for i in ids), from_capture_ms=tuple(from_capture[i] for i in ids),
                    wall_s=wall, recorded=recorded, errors=errors)


def stored_rows(store: Any) -> int:
    """Inspection rows in ``store`` (an `inspector.store.Store`): what the run really recorded."""
    import sqlalchemy as sa

    from inspector.store.schema import inspections

    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(inspections)).scalar_one())


def write_recipe(folder: Path, *, size: int) -> Path:
    """The demo recipe at ``size`` px on the CPU, its models in ``folder``, no archive."""
    path = folder / "fryum_e2e.yaml"
    path.write_text("schema_version: 1\nname: fryum_e2e\n"
                    f"source: {{type: folder, path: {DEMO / 'test'}}}\n"
                    f"preprocess: {{shorter_side: {size}}}\n"
                    "detector: {name: patch_knn, backbone: vit_small_patch14_dinov2, blocks: [8], device: cpu}\n"
                    "model: {directory: models, version: latest}\narchive: {enabled: false}\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.speed import cpu_model, versions
    from inspector.recipe import load_recipe
    from inspector.station import Station
    from inspector.teach import run_to_end, teach

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", type=int, default=224, help="the recipe's shorter side (px)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("models", "inspector", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="end-to-end-"))
    # the station writes its model only into allowed folders: this run's temporary one too
    os.environ[ALLOWED_DIRS_ENV] = os.pathsep.join(filter(None, (os.environ.get(ALLOWED_DIRS_ENV), str(work))))
    try:
        recipe = load_recipe(write_recipe(work, size=args.size))
        t0 = time.perf_counter()
        run_to_end(teach(recipe, DEMO / "train" / "good"))
        shots = len(image_files(DEMO / "train" / "good"))
        logger.info("taught on %d shots in %.0f s", shots, time.perf_counter() - t0)
        station = Station.load(recipe, device="cpu")
        folder = replay_folder(work / "replay", args.frames)
        measured = run_end_to_end(folder, station, work / "e2e.db")
        summary = measured.summary()
        demo_images = len(image_files(DEMO / "test"))
        frame_hw = station.recipe.preprocess.shorter_side
        result = {"env": {"cpu": cpu_model(), "device": "cpu", "threads": torch.get_num_threads(),
                          "versions": versions(), "command": "python -m benchmarks.end_to_end "
                          + " ".join(argv if argv is not None else sys.argv[1:])},
                  "conditions": {"recipe": "demo fryum (VisA), block 8, default detector options",
                                 "shorter_side_px": frame_hw, "shots": shots,
                                 "bank_size": int(station.detector.bank_size),
                                 "source": f"folder replay of {args.frames} files (the {demo_images} "
                                           "demo test images round-robin), decoded per frame",
                                 "recorder": "ResultRecorder: journal commit, forwarded to SQLite Store"},
                  **summary}
        s, c = summary["service_ms"], summary["from_capture_ms"]
        print(f"\nend to end, {summary['frames']} frames at {frame_hw} px on the CPU ({result['env']['threads']} "
              f"threads), bank {result['conditions']['bank_size']}: {summary['frames_per_s']:.2f} frames/s; "
              f"service p50 {s['p50']:.0f} ms p99 {s['p99']:.0f} ms; from capture p50 {c['p50']:.0f} ms "
              f"p99 {c['p99']:.0f} ms; recorded {summary['recorded']}, errors {summary['errors']}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
            print(f"wrote {args.json}")
        return 0 if summary["recorded"] == args.frames and summary["frames"] == args.frames else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
