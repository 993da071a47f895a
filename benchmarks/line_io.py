"""Line IO benchmark: trigger-to-result latency over Modbus TCP, and MQTT messages per second sustained.

Run from the repository root::

    .venv/bin/python -m benchmarks.line_io                         # fake detector + MQTT
    .venv/bin/python -m benchmarks.line_io --real 30               # also 30 triggers on the demo recipe

1. Trigger-to-result, fake detector (the IO overhead alone; the issue's goal: p99 <= 5 ms here): the
   station's Modbus server and `TriggeredRunner` on 127.0.0.1, a pymodbus client as the PLC writes
   HR2 = n and reads HR0..HR8 as fast as it can until HR3 == n; the time from before the write to
   the read that shows the answer, over ``--triggers`` triggers. Beside it, two parts of that time:
   the write's own round trip (the floor under any answer on this machine) and the station's share
   (trigger seen by the server -> answer written).
2. The same with the real detector on the demo recipe (taught first into a temporary data folder
   when it has no model), over ``--real`` triggers (each is one ViT forward on this CPU).
3. MQTT: a mosquitto started on a free loopback port, ``--messages`` results published as fast as
   `MqttPublisher.publish` takes them (spool writes/s) and delivered to a QoS 1 subscriber (end-to-end
   messages/s, first publish to last message received).

Writes ``benchmarks/results/line_io.json`` (numbers, device, versions, the command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture import ArraySource, FolderSource, FolderSpec
from inspector.lineio.line import LineIO
from inspector.lineio.mqtt import MqttPublisher
from inspector.lineio.signals import LinkMonitor
from inspector.lineio.station_config import ModbusConfig, MqttConfig, StationConfig
from inspector.lineio.trigger import TriggeredRunner
from inspector.pipeline import FrameInspector
from inspector.results import Frame, InspectionResult, Verdict
from tests.helpers.lineio import Broker, free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "line_io.json"


class FakeDetector:
    """Answers PASS at once: what is measured is the IO path."""

    name = "fake"

    def inspect(self, frame: Frame) -> InspectionResult:
        return InspectionResult(frame_id=frame.frame_id, timestamp=frame.timestamp, source=frame.source,
                                recipe=self.name, model_version="v0", verdict=Verdict.PASS, score=0.1)


def _percentiles(ms: list[float]) -> dict[str, float]:
    data = np.asarray(ms)
    return {"n": len(ms), "p50_ms": round(float(np.percentile(data, 50)), 3),
            "p99_ms": round(float(np.percentile(data, 99)), 3), "max_ms": round(float(data.max()), 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def trigger_latency(inspector: FrameInspector, source: Any, triggers: int, deadline_ms: float) -> dict[str, Any]:
    """PLC-side trigger-to-result times over ``triggers`` triggers."""
    from pymodbus.client import ModbusTcpClient

    port = free_port()
    config = StationConfig(station="bench", mode="triggered", deadline_ms=deadline_ms,
                           modbus=ModbusConfig(host="127.0.0.1", port=port))
    line = LineIO(config, active_recipe=1)
    line.start()
    station_ms: list[float] = []          # trigger seen -> answer written, on the station's side
    runner: TriggeredRunner | None = None

    def answered(_: InspectionResult) -> None:
        assert runner is not None
        station_ms.append(runner.stats().last_answer_ms)

    runner = TriggeredRunner(source, inspector, line.signals, deadline_ms=deadline_ms, after_answer=[answered])
    runner.start()
    plc = ModbusTcpClient("127.0.0.1", port=port)
    assert plc.connect()
    times: list[float] = []
    write_ms: list[float] = []            # one Modbus write round trip: the floor under any answer
    verdicts: dict[int, int] = {}
    polls = 0
    try:
        for count in range(1, triggers + 1):
            started = time.perf_counter()
            plc.write_register(2, count)
            write_ms.append((time.perf_counter() - started) * 1000)
            while True:
                regs = plc.read_holding_registers(0, count=9).registers
                polls += 1
                if regs[3] == count:
                    break
            times.append((time.perf_counter() - started) * 1000)
            verdicts[regs[4]] = verdicts.get(regs[4], 0) + 1
    finally:
        plc.close()
        runner.stop()
        line.stop()
    stats = runner.stats()
    return {**_percentiles(times), "modbus_write_round_trip": _percentiles(write_ms),
            "station_answer": _percentiles(station_ms), "polls_per_trigger": round(polls / triggers, 2),
            "verdict_codes": verdicts,
            "deadline_ms": deadline_ms, "station_max_answer_ms": round(stats.max_answer_ms, 3),
            "late_answers": stats.late_answers, "deadline_misses": stats.deadline_misses}


def real_detector(triggers: int, deadline_ms: float) -> dict[str, Any]:
    """The demo recipe's real Station (taught first if it has no model) answering ``triggers`` triggers."""
    from inspector.recipe import load_recipe
    from inspector.station import Station
    from inspector.teach import teach

    demo = REPO / "inspector" / "demo_data" / "visa_fryum"
    recipe = load_recipe(REPO / "recipes" / "fryum_demo.yaml")
    taught_s = 0.0
    if not recipe.model_versions():
        started = time.perf_counter()
        job = teach(recipe, demo / "train" / "good")
        try:
            while True:
                next(job)
        except StopIteration:
            pass
        taught_s = time.perf_counter() - started
    station = Station.load(recipe)
    source = FolderSource(FolderSpec(path=demo / "test", loop=True))
    out = trigger_latency(station, source, triggers, deadline_ms)
    return {**out, "recipe": recipe.name, "device": station.device, "teach_s": round(taught_s, 1)}


def mqtt_rate(messages: int, folder: Path) -> dict[str, Any]:
    """Spool writes/s and end-to-end delivered messages/s to a QoS 1 subscriber on a local mosquitto."""
    import paho.mqtt.client as paho

    (folder / "broker").mkdir(parents=True)
    broker = Broker(folder / "broker")
    broker.start()
    received = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(*_: object) -> None:
        nonlocal received
        received += 1
        if received >= messages:
            done.set()

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("inspector/bench/result", qos=1)
    sub.loop_start()
    subscribed.wait(10)
    pub = MqttPublisher(MqttConfig(host="127.0.0.1", port=broker.port, spool_dir=folder / "spool",
                                   spool_max_messages=messages + 10),
                        station="bench", monitor=LinkMonitor())
    pub.start()
    while not pub.connected:
        time.sleep(0.01)
    result = InspectionResult(frame_id=0, timestamp=time.time(), source="cam", recipe="r", model_version="v1",
                              verdict=Verdict.PASS, score=0.1)
    try:
        started = time.perf_counter()
        for _ in range(messages):
            pub.publish(result)
        spooled_s = time.perf_counter() - started
        done.wait(600)
        delivered_s = time.perf_counter() - started
    finally:
        pub.stop()
        sub.disconnect()
        sub.loop_stop()
        broker.stop()
    return {"messages": messages, "received": received, "publish_calls_per_s": round(messages / spooled_s),
            "delivered_per_s": round(received / delivered_s), "window": 20, "qos": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000, help="triggers with the fake detector")
    parser.add_argument("--real", type=int, default=0, metavar="N", help="triggers with the real detector (0: skip)")
    parser.add_argument("--messages", type=int, default=20_000, help="MQTT messages")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="line-io-bench-") as tmp:
        os.environ.setdefault("INSPECTOR_DATA_DIR", str(Path(tmp) / "data"))
        images = [np.full((64, 64, 3), 128, np.uint8)]
        report: dict[str, Any] = {
            "command": "python -m benchmarks.line_io " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": f"{platform.machine()} {os.cpu_count()} CPU(s), load average "
                      f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at start",
            "versions": {p: version(p) for p in ("pymodbus", "asyncua", "paho-mqtt")}
                        | {"python": platform.python_version(),
                           "mosquitto": shutil.which("mosquitto") or "/usr/sbin/mosquitto"},
        }
        report["fake_detector"] = trigger_latency(FakeDetector(), ArraySource(images, loop=True), args.triggers,
                                                  deadline_ms=1000)
        print(f"fake detector, {args.triggers} triggers: {report['fake_detector']}", flush=True)
        report["mqtt"] = mqtt_rate(args.messages, Path(tmp))
        print(f"mqtt: {report['mqtt']}", flush=True)
        if args.real:
            report["real_detector"] = real_detector(args.real, deadline_ms=60_000)
            print(f"real detector, {args.real} triggers: {report['real_detector']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
