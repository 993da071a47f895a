"""``inspector run --station``: the real station answering a PLC over Modbus and publishing to mosquitto."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pymodbus.client import ModbusTcpClient

from inspector.cli import EXIT_ERROR, EXIT_OK, main
from tests.helpers.images import textured_part, with_defect, write_images
from tests.helpers.lineio import Broker, free_port
from tests.inspector.lineio.test_lineio_mqtt import Subscriber


def test_run_triggered_answers_the_plc_records_then_publishes(
    taught_recipe: Path, broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    parts = [textured_part(rng) for _ in range(3)]
    parts[1] = with_defect(parts[1], rng)[0]
    frames = write_images(tmp_path / "frames", parts)[0].parent
    port = free_port()
    station = tmp_path / "station.yaml"
    station.write_text(
        f"station: st-cli\nmode: triggered\ndeadline_ms: 60000\n"
        f"recipes: [{{number: 5, file: {taught_recipe}}}]\n"
        f"modbus: {{host: 127.0.0.1, port: {port}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, spool_dir: {tmp_path / 'spool'}}}\n"
    )
    sub = Subscriber(broker.port, "inspector/st-cli/result")
    db = tmp_path / "station.db"
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(main([
        "run", str(taught_recipe), "--source", str(frames), "--station", str(station), "--store", str(db),
        "--max-frames", "3", "--lot", "L9"])))
    run.start()
    plc = ModbusTcpClient("127.0.0.1", port=port)
    try:
        end = time.monotonic() + 60
        while not plc.connect() and time.monotonic() < end:
            time.sleep(0.1)
        verdicts = []
        for count in (1, 2, 3):
            assert not plc.write_register(2, count).isError()
            while (regs := plc.read_holding_registers(0, count=9).registers)[3] != count:
                assert time.monotonic() < end, regs
                time.sleep(0.005)
            verdicts.append(regs[4])
            assert regs[8] == 5                                   # the recipe number of station.yaml
        run.join(60)
        sub.wait_for({1, 2, 3})
    finally:
        plc.close()
        sub.close()
    assert codes == [EXIT_OK]
    assert verdicts[0] == 1 and verdicts[1] == 3                  # PASS, then FAIL for the drawn defect
    rows = sqlite3.connect(db).execute("SELECT verdict, lot FROM inspections ORDER BY id").fetchall()
    assert [v for v, _ in rows] == [{1: "PASS", 2: "REVIEW", 3: "FAIL"}[v] for v in verdicts]
    assert [p["verdict"] for p in sub.payloads[:3]] == [v for v, _ in rows]
    assert {p["lot"] for p in sub.payloads} == {"L9"}
    err = capsys.readouterr().err
    assert "modbus 127.0.0.1" in err and "mqtt 127.0.0.1" in err


def test_a_bad_station_file_exits_1_naming_the_field(taught_recipe: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    station = tmp_path / "station.yaml"
    station.write_text("station: s\nmodbus: {prot: 1502}\n")
    assert main(["run", str(taught_recipe), "--station", str(station), "--max-frames", "1"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "station.yaml: modbus.prot is not a known field; did you mean 'port'?" in err


def test_run_continuous_publishes_every_result_with_its_lot(
    taught_recipe: Path, broker: Broker, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    frames = write_images(tmp_path / "frames", [textured_part(rng) for _ in range(4)])[0].parent
    station = tmp_path / "station.yaml"
    station.write_text(f"station: st-c\nmqtt: {{host: 127.0.0.1, port: {broker.port}, "
                       f"spool_dir: {tmp_path / 'spool'}}}\n")
    sub = Subscriber(broker.port, "inspector/st-c/result")
    try:
        assert main(["run", str(taught_recipe), "--source", str(frames), "--station", str(station),
                     "--store", str(tmp_path / "s.db"), "--lot", "L3", "--quiet"]) == EXIT_OK
        sub.wait_for({1, 2, 3, 4})
    finally:
        sub.close()
    assert [p["frame_id"] for p in sub.payloads] == [0, 1, 2, 3]
    assert {p["lot"] for p in sub.payloads} == {"L3"} and {p["station"] for p in sub.payloads} == {"st-c"}
