"""The PLC's wait for a REVIEW/FAIL verdict with defect typing before the answer (inline) or after it.

A triggered station types a flagged frame's defects (the region's crop re-embedded by the backbone, label
spreading) after answering the PLC (`inspector.lineio.trigger`); before, it typed them inside the inspection,
so every REVIEW/FAIL answer waited for the typing. This runs the demo recipe's real `Station` (taught first
into a temporary data folder) behind a `TriggeredRunner` on 127.0.0.1 (a pymodbus client as the PLC), with a
`ResultRecorder` on a temporary SQLite store whose reviewer labels (one demo defect image per type for three
types) make the typer type every flagged frame. The demo's 16 test images are triggered in turn, in rounds
that alternate the two ways (``station.can_defer_typing`` False = inline, True = after the answer), and the
station-side answer time (trigger seen -> answer written) is read per frame, split by verdict, with the share of
flagged results published with a predicted type (both ways type every one).

``--mode continuous``: the app without a PLC, a `StationController` running the demo's test folder through its
`Pipeline`; per frame the time from the start of its inspection to the screen's ``ResultArrived`` (the verdict
shown), and for a flagged frame typed after it, to its ``ResultTyped`` (the types shown).

Usage::

    python -m benchmarks.typing_latency --rounds 3 [--json benchmarks/results/typing_after_answer.json]
    python -m benchmarks.typing_latency --mode continuous --rounds 4 [--json ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEMO = REPO / "inspector" / "demo_data" / "visa_fryum"
LABELLED = ("burnt/001.jpg", "fryum_stuck_together/050.jpg", "middle_breakage/075.jpg")


def _taught_station(store: Any) -> Any:
    """The demo recipe's station (taught if needed) with its typer, three reviewer labels in ``store``."""
    from inspector.capture import load_image
    from inspector.defect_typing import DefectTyper, typer_config
    from inspector.recipe import load_recipe
    from inspector.station import Station
    from inspector.teach import teach

    recipe = load_recipe(REPO / "recipes" / "fryum_demo.yaml")
    if not recipe.model_versions():
        for _ in teach(recipe, DEMO / "train" / "good"):
            pass
    station = Station.load(recipe)
    station.attach_typer(DefectTyper(store, station.name, config=typer_config(recipe), refresh_s=0.0))
    for name in LABELLED:
        result = station.inspect_image(load_image(DEMO / "test" / name), path=name)
        store.record(result)
        store.flush()
        record = max(store.inspections(recipe=station.name), key=lambda r: r.id)
        for region in record.regions:
            store.set_defect_class(name.split("/")[0], user="bench", region_id=region.id)
    return station


def run(rounds: int, deadline_ms: float = 60_000.0, *, mode: str = "triggered") -> dict[str, Any]:
    from inspector.recording import ResultRecorder
    from inspector.store import Store

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="typing-latency-") as tmp:
        store = Store(Path(tmp) / "stats.db")
        station = _taught_station(store)
        recorder = ResultRecorder(store)
        for round_ in range(rounds):
            for after in (False, True) if round_ % 2 == 0 else (True, False):
                if mode == "continuous":
                    rows += _one_pass_continuous(station, recorder, after=after)
                else:
                    rows += _one_pass(station, recorder, after=after, deadline_ms=deadline_ms)
                what = "answer" if mode == "triggered" else "verdict on screen"
                print(f"round {round_ + 1}, typing {'after' if after else 'before'} the {what}: done", flush=True)
        recorder.close()
        pool = station.typer.n_unlabelled if station.typer is not None else 0
        store.close()
    out: dict[str, Any] = {"mode": mode, "frames_per_round": len(_frames()), "rounds": rounds, "pool_at_end": pool}
    for after in (False, True):
        key = ("typing_after_answer" if mode == "triggered" else "typing_after_shown") if after else "typing_inline"
        mine = [r for r in rows if r["after_answer"] is after]
        out[key] = {
            verdict: _summary([r["answer_ms"] for r in mine if r["verdict"] == verdict])
            for verdict in sorted({r["verdict"] for r in mine})
        }
        if mode == "continuous":
            out[key]["types_shown"] = _summary([r["typed_ms"] for r in mine if r.get("typed_ms") is not None])
        flagged = [r for r in mine if r["verdict"] in ("REVIEW", "FAIL")]
        out[key]["flagged_published_typed"] = f"{sum(bool(r['types'][0]) for r in flagged)} / {len(flagged)}"
    return out


def _frames() -> list[Path]:
    return sorted((DEMO / "test").rglob("*.jpg"))


def _one_pass(station: Any, recorder: Any, *, after: bool, deadline_ms: float) -> list[dict[str, Any]]:
    """The demo's test frames, one per PLC trigger, typed ``after`` the answer or inline; a row per frame."""
    from pymodbus.client import ModbusTcpClient

    from inspector.capture import FolderSource, FolderSpec
    from inspector.lineio.line import LineIO
    from inspector.lineio.station_config import ModbusConfig, StationConfig
    from inspector.lineio.trigger import TriggeredRunner
    from inspector.results import InspectionResult
    from tests.helpers.lineio import free_port

    station.can_defer_typing = after     # the class says True; inline is the way before
    port = free_port()
    line = LineIO(StationConfig(station="bench", mode="triggered", deadline_ms=deadline_ms,
                                modbus=ModbusConfig(host="127.0.0.1", port=port)), active_recipe=1)
    line.start()
    rows: list[dict[str, Any]] = []

    def published(result: InspectionResult) -> None:     # after the answer (and, here, after the typing)
        answer_ms = runner.stats().last_answer_ms           # trigger seen -> this answer written
        rows.append({"after_answer": after, "verdict": result.verdict.value, "answer_ms": answer_ms,
                     "path": Path(result.path or "").name,
                     "types": sorted({r.predicted_class or "" for r in result.regions})})

    runner = TriggeredRunner(FolderSource(FolderSpec(path=DEMO / "test")), station, line.signals,
                             deadline_ms=deadline_ms, record=recorder.record, after_answer=[published])
    runner.start()
    plc = ModbusTcpClient("127.0.0.1", port=port)
    assert plc.connect()
    try:
        for count in range(1, len(_frames()) + 1):
            plc.write_register(2, count)
            while plc.read_holding_registers(0, count=9).registers[3] != count:
                pass
            while len(rows) < count:        # published: typed (after) or as answered (inline)
                time.sleep(0.001)
    finally:
        plc.close()
        runner.stop()
        line.stop()
    return rows


def _one_pass_continuous(station: Any, recorder: Any, *, after: bool) -> list[dict[str, Any]]:
    """The demo's test folder through the app's `StationController`; a row per frame: inspection start to the
    verdict on screen (``answer_ms``, the triggered mode's key) and, typed after it, to the types on screen."""
    import threading

    from inspector.capture import FolderSource, FolderSpec
    from inspector.controller import ControllerEvent, ResultArrived, ResultTyped, StationController

    station.can_defer_typing = after
    started: dict[int, float] = {}
    rows: dict[int, dict[str, Any]] = {}
    done = threading.Event()
    frames = len(_frames())
    real_inspect = type(station).inspect

    def inspect(frame: Any, **kw: Any) -> Any:
        started[frame.frame_id] = time.perf_counter()
        return real_inspect(station, frame, **kw)

    def on_event(event: ControllerEvent) -> None:
        now = time.perf_counter()
        if isinstance(event, ResultArrived):
            result = event.result
            rows[result.frame_id] = {"after_answer": after, "verdict": result.verdict.value,
                                     "answer_ms": (now - started[result.frame_id]) * 1000.0,
                                     "path": Path(result.path or "").name,
                                     "types": sorted({r.predicted_class or "" for r in result.regions})}
        elif isinstance(event, ResultTyped):
            row = rows[event.result.frame_id]
            row["typed_ms"] = (now - started[event.result.frame_id]) * 1000.0
            row["types"] = sorted({r.predicted_class or "" for r in event.result.regions})
        flagged = [r for r in rows.values() if r["verdict"] in ("REVIEW", "FAIL")]
        if len(rows) == frames and (not after or all("typed_ms" in r for r in flagged)):
            done.set()

    station.inspect = inspect
    controller = StationController(load_inspector=lambda path: station,
                                   open_source=lambda text: FolderSource(FolderSpec(path=DEMO / "test")),
                                   recipe_source=lambda inspector: None, recorder=recorder, on_event=on_event)
    try:
        controller.start(REPO / "recipes" / "fryum_demo.yaml", source_text="demo test folder")
        if not done.wait(600):
            msg = f"only {len(rows)} of {frames} frames shown within 600 s"
            raise RuntimeError(msg)
    finally:
        controller.shutdown()
        del station.inspect
    return list(rows.values())


def _summary(ms: list[float]) -> dict[str, float]:
    data = np.asarray(ms)
    return {"n": len(ms), "median_ms": round(float(np.median(data)), 1), "mean_ms": round(statistics.fmean(ms), 1),
            "max_ms": round(float(data.max()), 1)} if ms else {"n": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the demo's 16 frames, each way")
    parser.add_argument("--mode", choices=("triggered", "continuous"), default="triggered",
                        help="a PLC's answer (triggered) or the app's screen without a PLC (continuous)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="typing-latency-data-") as data:
        os.environ.setdefault("INSPECTOR_DATA_DIR", data)
        started = time.perf_counter()
        out = run(args.rounds, mode=args.mode)
    report = {"command": "python -m benchmarks.typing_latency " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": f"CPU, {os.cpu_count()} cores, torch threads as the station sets them, load average "
                        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
              "python": platform.python_version(), "wall_s": round(time.perf_counter() - started, 1), **out}
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
