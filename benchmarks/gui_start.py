"""The app's first Start: how long it takes, and how long the GUI thread stalls around it.

Runs ``inspector-gui`` (`ui.app.main`, the real app, offscreen) on the demo recipe (taught first into a temporary
data folder, as written: ``--fixed-config``) in a fresh process per run, presses Start ``--start-after`` seconds
after the window is shown, and records on the GUI thread a 10-ms heartbeat: the longest gap before Start (the
window waiting for its operator) and after it (the live view), the time from Start to the controller's "station
running", and the GUI thread's garbage collections over 50 ms. Three ways, the runs interleaved:

* ``today``: the engine imported on a job thread after the window shows (`ui.engine.warm_up`) and frozen out of
  the collector's view once imported (`ui.collector.GuiThreadCollector.settle`);
* ``no_warm_up``: the engine imported by the first Start, as before;
* ``before``: neither (the app before both).

Usage::

    python -m benchmarks.gui_start --repeats 3 [--json benchmarks/results/gui_start.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
WAYS: Final = ("today", "no_warm_up", "before")
HEARTBEAT_MS: Final = 10
SLOW_COLLECTION_S: Final = 0.05


def _child(way: str, start_after_s: float, watch_s: float) -> dict[str, Any]:
    """One run of the app in this process; the measures as a dict."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    import ui.collector
    import ui.engine
    from ui.main_window import MainWindow

    if way in ("no_warm_up", "before"):
        ui.engine.warm_up = lambda: None
    if way == "before":
        ui.collector.GuiThreadCollector.settle = lambda self: None  # type: ignore[method-assign]
    slow: list[float] = []
    check = ui.collector.GuiThreadCollector.check

    def timed_check(self: ui.collector.GuiThreadCollector) -> None:
        t = time.perf_counter()
        check(self)
        if time.perf_counter() - t > SLOW_COLLECTION_S:
            slow.append(round(time.perf_counter() - t, 3))
    ui.collector.GuiThreadCollector.check = timed_check  # type: ignore[method-assign]

    marks: dict[str, float] = {}

    class Running(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("station running"):
                marks.setdefault("running", time.perf_counter())
    logging.getLogger("inspector.controller").addHandler(Running())

    beats: list[float] = []

    def window() -> MainWindow:
        return next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow))

    def start() -> None:
        marks["start"] = time.perf_counter()
        window().start()

    def beat() -> None:
        beats.append(time.perf_counter())
        if len(beats) == 1:         # the event loop runs: the window is up; Start and the end counted from here
            QTimer.singleShot(int(start_after_s * 1000), start)
            QTimer.singleShot(int((start_after_s + watch_s) * 1000), close)

    def close() -> None:
        marks["end"] = time.perf_counter()    # closing stops the pipeline on this thread: not counted
        window().close()

    QApplication(["inspector-gui"])
    heartbeat = QTimer()
    heartbeat.setInterval(HEARTBEAT_MS)
    heartbeat.timeout.connect(beat)
    heartbeat.start()
    from ui.app import main

    rc = main(["--recipe", str(REPO / "recipes" / "fryum_demo.yaml")])
    gaps = [(b, b - a) for a, b in zip(beats, beats[1:], strict=False)]
    shown = beats[0]                    # the first beat: the event loop runs, the window is up
    before = [g for b, g in gaps if shown < b <= marks["start"]]
    after = [g for b, g in gaps if marks["start"] < b <= marks["end"]]
    return {"way": way, "rc": rc, "start_to_running_s": round(marks["running"] - marks["start"], 3),
            "longest_gap_before_start_s": round(max(before), 3), "longest_gap_after_start_s": round(max(after), 3),
            "gaps_over_0.1_s_after_start": sum(g > 0.1 for g in after), "slow_collections_s": slow}


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per way, the median of each measure over its runs."""
    out: dict[str, dict[str, float]] = {}
    for way in WAYS:
        mine = [r for r in runs if r["way"] == way]
        if mine:
            out[way] = {key: round(statistics.median(r[key] for r in mine), 3)
                        for key in ("start_to_running_s", "longest_gap_before_start_s", "longest_gap_after_start_s",
                                    "gaps_over_0.1_s_after_start")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way, interleaved")
    parser.add_argument("--start-after", type=float, default=8.0, help="seconds from the window to Start")
    parser.add_argument("--watch", type=float, default=20.0, help="seconds watched after Start")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="an INSPECTOR_DATA_DIR with the demo recipe taught (default: taught afresh, as written)")
    parser.add_argument("--child", choices=WAYS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.start_after, args.watch)))
        return 0
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gui-start-") as tmp:
        data = args.data_dir or Path(tmp) / "data"
        env = {**os.environ, "INSPECTOR_DATA_DIR": str(data), "HOME": str(Path(tmp) / "home"),
               "QT_QPA_PLATFORM": "offscreen"}
        if args.data_dir is None:
            teach = [sys.executable, "-m", "inspector", "train", "recipes/fryum_demo.yaml", "--good",
                     "inspector/demo_data/visa_fryum/train/good", "--fixed-config"]
            subprocess.run(teach, cwd=REPO, env=env, check=True, capture_output=True)
        for repeat in range(args.repeats):
            for way in WAYS:
                child = [sys.executable, "-m", "benchmarks.gui_start", "--child", way,
                         "--start-after", str(args.start_after), "--watch", str(args.watch)]
                done = subprocess.run(child, cwd=REPO, env=env, check=True, capture_output=True, text=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"run {repeat + 1}: {json.dumps(runs[-1])}", flush=True)
    report = {"command": "python -m benchmarks.gui_start " + " ".join(sys.argv[1:] if argv is None else argv),
              "conditions": f"CPU, {os.cpu_count()} cores, offscreen Qt, the demo recipe (taught as written), "
                            f"Start {args.start_after:g} s after the window shows; load average "
                            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
              "median": summary(runs), "runs": runs}
    print(json.dumps(report["median"], indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
