"""``inspector-gui --station``: the app's window with a real station.yaml's links, the real Station and a PLC.

The window is built by `ui.app.station_window` (what ``main`` does with ``--station``); the PLC is a
pymodbus client on 127.0.0.1; the MQTT broker is configured on a port where nothing listens, so that
the footer's banner has a link that is down.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings
from pytestqt.qtbot import QtBot

from inspector.lineio.line import LineIO
from inspector.lineio.signals import StatusBits
from inspector.lineio.station_config import load_station_config
from inspector.store import Store
from tests.helpers.images import textured_part, with_defect, write_images
from tests.helpers.lineio import Plc, free_port
from ui.app import station_window
from ui.link_status import LinkStatusBar
from ui.main_window import RunState

STATUS, VERDICT, ACTIVE = 1, 4, 8


def test_a_triggered_station_answers_the_plc_from_the_app_and_shows_its_links(
    qtbot: QtBot, tmp_path: Path, taught_recipe: Path
) -> None:
    rng = np.random.default_rng(5)
    parts = [textured_part(rng) for _ in range(6)]
    parts[1] = with_defect(parts[1], rng)[0]
    frames = write_images(tmp_path / "frames", parts)[0].parent
    port, mqtt_port = free_port(), free_port()
    station = tmp_path / "station.yaml"
    station.write_text(
        f"station: app-st\nmode: triggered\ndeadline_ms: 60000\n"
        f"recipes: [{{number: 3, file: {taught_recipe}}}]\n"
        f"modbus: {{host: 127.0.0.1, port: {port}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, spool_dir: {tmp_path / 'spool'}}}\n"   # no broker there
    )
    line = LineIO(load_station_config(station), active_recipe=3)
    line.start()
    store = Store(tmp_path / "stats.db", flush_interval=0.0)
    window = station_window([taught_recipe], line, source=str(frames), store=store,
                            settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    plc = Plc(port)
    regs = plc.regs
    answered: list[int] = []

    def answer(count: int) -> list[int]:
        now = plc.answer(count, qtbot.waitUntil)
        answered.append(now[VERDICT])
        return now

    try:
        window.show()
        bars = window.statusBar().findChildren(LinkStatusBar)
        assert len(bars) == 1
        bar = bars[0]
        # Before Start the PLC sees the station not READY (FAULT "not inspecting").
        assert regs()[STATUS] & StatusBits.FAULT and not regs()[STATUS] & StatusBits.READY
        window.start()
        qtbot.waitUntil(lambda: window.state == RunState.RUNNING, timeout=60_000)
        qtbot.waitUntil(lambda: bool(regs()[STATUS] & StatusBits.READY), timeout=10_000)
        verdicts = [answer(count)[VERDICT] for count in (1, 2, 3)]
        assert verdicts[0] == 1 and verdicts[1] == 3 and regs()[ACTIVE] == 3      # PASS, FAIL (the defect)
        qtbot.waitUntil(lambda: window.counts.inspected == 3, timeout=10_000)      # shown in the window too

        window.pause()
        qtbot.waitUntil(lambda: window.state == RunState.PAUSED, timeout=10_000)
        paused = answer(4)
        assert paused[VERDICT] == 4 and paused[STATUS] & StatusBits.FAULT          # ERROR at once: no frame taken
        window.resume()
        qtbot.waitUntil(lambda: window.state == RunState.RUNNING, timeout=10_000)
        assert answer(5)[VERDICT] == 1

        # The footer: Modbus up with its PLC; MQTT down (no broker), results spooled; a banner says so.
        modbus, mqtt = bar.label("modbus"), bar.label("mqtt")
        assert modbus is not None and mqtt is not None

        def spooled_all() -> bool:      # MQTT publishes after the PLC's answer: the 5th may follow the read of HR3
            bar.refresh()
            return mqtt.text().startswith("MQTT DOWN · 1 error · 5 spooled")

        qtbot.waitUntil(spooled_all, timeout=10_000)
        assert modbus.text().startswith("MODBUS up · 1 client · ")
        assert bar.banner.isVisible()
        assert bar.banner.text() == f"MQTT link down: cannot reach the broker at 127.0.0.1:{mqtt_port}; retrying, " \
                                    f"results spooled"

        window.stop()
        qtbot.waitUntil(lambda: window.state == RunState.STOPPED, timeout=30_000)
        assert regs()[STATUS] & StatusBits.FAULT and not regs()[STATUS] & StatusBits.READY
    finally:
        plc.close()
        window.close()
        line.stop()
        store.close()
    rows = sqlite3.connect(tmp_path / "stats.db").execute("SELECT verdict FROM inspections ORDER BY id").fetchall()
    names = {1: "PASS", 2: "REVIEW", 3: "FAIL", 4: "ERROR"}
    assert [v for (v,) in rows] == [names[code] for code in answered]           # every answer was recorded
