"""``inspector-gui --station``: the window follows a product changeover the PLC asks for by HR7.

The window is built by `ui.app.station_window` with a triggered station.yaml listing three recipes of the
real `Station`: the one the operator starts with, a second one taught on the same parts (under another
name), and one whose model folder is empty (it fails to load). The PLC is a pymodbus client on 127.0.0.1.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

from inspector.lineio.line import LineIO
from inspector.lineio.signals import StatusBits
from inspector.lineio.station_config import load_station_config
from inspector.store import Store
from tests.helpers.images import textured_part, write_images
from tests.helpers.lineio import Plc, free_port
from ui.app import station_window
from ui.engine import StationInspector, default_load_inspector
from ui.footer import SEPARATOR as SEP
from ui.main_window import MainWindow, RunState

STATUS, VERDICT, REQUESTED, ACTIVE = 1, 4, 7, 8
PASS, ERROR = 1, 4


def _status_texts(window: MainWindow) -> list[str]:
    return [label.text() for label in window.statusBar().findChildren(QLabel)]


def test_the_window_follows_a_plc_changeover_and_shows_one_that_fails(
    qtbot: QtBot, tmp_path: Path, taught_recipe: Path
) -> None:
    rng = np.random.default_rng(7)
    frames = write_images(tmp_path / "frames", [textured_part(rng) for _ in range(8)])[0].parent
    text = taught_recipe.read_text(encoding="utf-8")
    other = taught_recipe.with_name("other.yaml")          # the same model folder, another recipe name
    other.write_text(text.replace(f"name: {taught_recipe.stem}", "name: other"), encoding="utf-8")
    broken = taught_recipe.with_name("broken.yaml")        # its model folder holds no model
    (taught_recipe.parent / "empty").mkdir()
    broken.write_text(text.replace(f"name: {taught_recipe.stem}", "name: broken")
                      .replace("model: {directory: models}", "model: {directory: empty}"), encoding="utf-8")
    port, mqtt_port = free_port(), free_port()
    station = tmp_path / "station.yaml"
    station.write_text(
        f"station: app-co\nmode: triggered\ndeadline_ms: 60000\n"
        f"recipes: [{{number: 3, file: {taught_recipe}}}, {{number: 4, file: {other}}}, "
        f"{{number: 5, file: {broken}}}]\n"
        f"modbus: {{host: 127.0.0.1, port: {port}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, spool_dir: {tmp_path / 'spool'}}}\n"
    )
    loads: Counter[str] = Counter()

    def load(path: Path) -> StationInspector:
        loads[path.stem] += 1
        return default_load_inspector(path)

    line = LineIO(load_station_config(station), active_recipe=3)
    line.start()
    store = Store(tmp_path / "stats.db", flush_interval=0.0)
    window = station_window([taught_recipe], line, source=str(frames), store=store, load_inspector=load,
                            settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    plc = Plc(port)
    regs = plc.regs

    def answer(count: int) -> list[int]:
        return plc.answer(count, qtbot.waitUntil)

    try:
        window.show()
        # station.yaml's recipes are offered in the recipe box, the one started with selected.
        box = window.recipe_box
        assert [box.itemText(i) for i in range(box.count())] == [taught_recipe.stem, "other", "broken"]
        window.start()
        qtbot.waitUntil(lambda: window.state == RunState.RUNNING, timeout=60_000)
        qtbot.waitUntil(lambda: bool(regs()[STATUS] & StatusBits.READY), timeout=10_000)
        assert answer(1)[VERDICT] == PASS and regs()[ACTIVE] == 3

        # The PLC changes over to recipe 4: the box, the info line and the status line follow it.
        plc.write(REQUESTED, 4)
        qtbot.waitUntil(lambda: regs()[ACTIVE] == 4, timeout=60_000)
        qtbot.waitUntil(lambda: window.current_recipe == other, timeout=10_000)
        assert box.currentText() == "other"
        assert window.controller.snapshot.recipe == other and window.controller.snapshot.recipe_name == "other"
        inspector = window.controller.inspector
        assert inspector is not None and inspector.name == "other"
        assert window.station.info.text().startswith(SEP.join(("Recipe: other", "model v1", "on cpu", "")))
        assert "product changeover by the PLC: other" in _status_texts(window)
        assert loads == Counter({taught_recipe.stem: 1, "other": 1})     # selecting it loaded nothing more
        assert regs()[REQUESTED] == 4                                    # the box did not switch back
        assert answer(2)[VERDICT] == PASS and regs()[ACTIVE] == 4
        qtbot.waitUntil(lambda: window.counts.inspected == 2, timeout=10_000)

        # A changeover to a recipe that fails to load: every trigger ERROR, FAULT set, the window says why.
        plc.write(REQUESTED, 5)
        qtbot.waitUntil(lambda: "recipe" in window.station.faults.faults(), timeout=60_000)
        fault = window.station.faults.faults()["recipe"]
        assert fault.startswith("Cannot switch to recipe broken: the PLC's product changeover failed: "
                                "recipe 5 failed to load: ")
        assert fault.endswith("; every trigger is answered ERROR. no recipe inspects now.")
        assert "warning" not in window.station.faults.faults()    # said once, not again as a warning
        assert window.station.info.text().startswith(f"Recipe: other (selected){SEP}")
        failed = answer(3)
        assert failed[VERDICT] == ERROR and failed[ACTIVE] == 0 and failed[STATUS] & StatusBits.FAULT

        # The operator picks a recipe again: it answers the PLC (HR7 and HR8 follow the app).
        window.select_recipe(taught_recipe)
        qtbot.waitUntil(lambda: regs()[ACTIVE] == 3, timeout=60_000)
        assert regs()[REQUESTED] == 3
        assert answer(4)[VERDICT] == PASS
        qtbot.waitUntil(lambda: window.controller.snapshot.recipe == taught_recipe, timeout=10_000)
        assert window.station.info.text().startswith(f"Recipe: {taught_recipe.stem}{SEP}model v1")
        assert loads[taught_recipe.stem] == 1 and loads["other"] == 1   # both kept loaded

        window.stop()
        qtbot.waitUntil(lambda: window.state == RunState.STOPPED, timeout=30_000)
    finally:
        plc.close()
        window.close()
        line.stop()
        store.close()
    rows = sqlite3.connect(tmp_path / "stats.db").execute(
        "SELECT recipe, verdict FROM inspections ORDER BY id").fetchall()
    assert [(r, v) for r, v in rows][:2] == [(taught_recipe.stem, "PASS"), ("other", "PASS")]
    assert rows[2][1] == "ERROR" and rows[3] == (taught_recipe.stem, "PASS")
