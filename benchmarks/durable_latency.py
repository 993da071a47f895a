"""What "durable before reported" costs: the time from a finished inspection to the moment it may be shown.

Records ``--results`` inspection results (a few regions each, no images) through the real
`inspector.recording.ResultRecorder` into a real SQLite store in a temporary folder (or ``--dir``),
at ``--rate`` results per second (0 = as fast as possible), and measures for each:

* ``record_to_durable``: how long `ResultRecorder.record` takes, i.e. until the result is committed
  to the local journal with ``synchronous = FULL`` (the time a verdict is now held back);
* ``record_to_stored``: until the forwarder has committed it to the statistics store;
* for comparison, ``queue_only``: the old path, `Store.record` (enqueue only, nothing durable yet).

Prints p50/p90/p99/max in milliseconds and writes them as JSON with the machine, the versions and the
command line (``--json``; default ``benchmarks/results/durable_latency_<host>.json``).

Usage:
    python -m benchmarks.durable_latency                      # 2000 results at 30 per second
    python -m benchmarks.durable_latency --results 5000 --rate 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from inspector.recording import ResultRecorder
from inspector.results import DefectRegion, InspectionResult, Verdict
from inspector.store import Store


def _result(i: int) -> InspectionResult:
    region = DefectRegion(x=4, y=4, width=6, height=6, area_px=36, area_mm2=None, max_score=1.0, mean_score=0.8)
    return InspectionResult(frame_id=i, timestamp=time.time(), source="camera 0", recipe="bench", model_version="v1",
                            verdict=Verdict.FAIL if i % 10 == 0 else Verdict.PASS, score=0.1, image_bgr=None,
                            regions=(region, region) if i % 10 == 0 else ())


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": len(ms), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=30.0, help="results per second; 0 = no pause")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the store and journal (default: tmp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    load_at_start = [round(x, 2) for x in os.getloadavg()]      # the machine is shared: say how busy it was
    workdir = tempfile.TemporaryDirectory(dir=args.dir)
    folder = Path(workdir.name)
    pause = 1.0 / args.rate if args.rate > 0 else 0.0

    store = Store(folder / "bench.db")
    recorder = ResultRecorder(store)
    durable: list[float] = []
    for i in range(args.results):
        t0 = time.perf_counter()
        receipt = recorder.record(_result(i))
        durable.append((time.perf_counter() - t0) * 1e3)
        assert receipt is not None
        if pause:
            time.sleep(pause)
    recorder.wait_stored(120)
    left = recorder.close()
    store.close()
    # record to stored: a second pass, one result at a time, watching the journal drain
    stored: list[float] = []
    store2 = Store(folder / "bench2.db")
    recorder2 = ResultRecorder(store2)
    n2 = min(args.results, 500)
    for i in range(n2):
        t0 = time.perf_counter()
        receipt = recorder2.record(_result(i))
        assert receipt is not None
        while recorder2.pending:
            time.sleep(0.0002)
        stored.append((time.perf_counter() - t0) * 1e3)
        if pause:
            time.sleep(pause)
    recorder2.close()
    store2.close()

    queue_only: list[float] = []
    store3 = Store(folder / "bench3.db")
    for i in range(args.results):
        t0 = time.perf_counter()
        store3.record(_result(i))
        queue_only.append((time.perf_counter() - t0) * 1e3)
        if pause:
            time.sleep(pause)
    store3.close()

    report = {
        "benchmark": "durable_latency",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.durable_latency", *(argv or sys.argv[1:])]),
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "filesystem_dir": str(args.dir or tempfile.gettempdir()),
                    "load_average_1_5_15_min_at_start": load_at_start},
        "results": args.results, "rate_per_s": args.rate, "left_in_journal": left,
        "record_to_durable_ms": _percentiles(durable),
        "record_to_stored_ms": _percentiles(stored),
        "queue_only_ms (old path, not durable)": _percentiles(queue_only),
    }
    for key in ("record_to_durable_ms", "record_to_stored_ms", "queue_only_ms (old path, not durable)"):
        p = report[key]
        print(f"{key:<40} n {p['n']:>5}  p50 {p['p50']:7.3f}  p90 {p['p90']:7.3f}  p99 {p['p99']:7.3f}  "
              f"max {p['max']:8.3f}")
    out = args.json or Path("benchmarks/results") / f"durable_latency_{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    workdir.cleanup()
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
