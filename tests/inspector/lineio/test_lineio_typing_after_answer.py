"""A triggered station answers the PLC before it types the defects; the screen shows the verdict, then the types,
and the store gets them.

The app's path without Qt: a `StationController` running `triggered_pipelines`, a real taught `Station`, a
`ResultRecorder` on an SQLite store, and a pymodbus client as the PLC on 127.0.0.1.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pymodbus.client import ModbusTcpClient

from inspector.capture import ArraySource
from inspector.controller import ControllerEvent, ResultArrived, ResultTyped, StationController
from inspector.lineio.line import LineIO
from inspector.lineio.station_config import ModbusConfig, RecipeSlot, StationConfig
from inspector.lineio.triggered_pipeline import triggered_pipelines
from inspector.recording import ResultRecorder
from inspector.store import Store
from tests.helpers.images import textured_part, with_defect
from tests.helpers.lineio import free_port
from tests.helpers.typing import TYPED, labelled_station, watch_typing

TRIG, RESULT, VERDICT = 2, 3, 4


def test_a_fail_is_answered_before_its_defects_are_typed_then_shown_and_stored_typed(
    taught_recipe: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    store = Store(tmp_path / "stats.db")
    station = labelled_station(taught_recipe, store, rng)     # a reviewer labelled two earlier defects "scratch"
    port = free_port()
    config = StationConfig(station="t1", mode="triggered", deadline_ms=60_000.0,
                           recipes=(RecipeSlot(number=1, file=taught_recipe),), initial_recipe=1,
                           modbus=ModbusConfig(host="127.0.0.1", port=port))
    line = LineIO(config, active_recipe=1)
    line.start()
    answer_when_typed: list[int] = []      # the PLC's result register when the typer ran
    watch_typing(station, lambda: answer_when_typed.append(line.signals.snapshot().result))
    shown: list[ResultArrived | ResultTyped] = []

    def on_event(event: ControllerEvent) -> None:
        if isinstance(event, ResultArrived | ResultTyped):
            shown.append(event)

    recorder = ResultRecorder(store)
    defect = with_defect(textured_part(rng), rng)[0]
    controller = StationController(
        load_inspector=lambda path: station, open_source=lambda text: ArraySource([defect], loop=True),
        recipe_source=lambda inspector: None, recorder=recorder, on_event=on_event,
        make_pipeline=triggered_pipelines(line))
    plc = ModbusTcpClient("127.0.0.1", port=port)
    try:
        controller.start(taught_recipe, source_text="memory")
        assert plc.connect()
        end = time.monotonic() + 30
        while not station.typer and time.monotonic() < end:
            time.sleep(0.02)
        assert not plc.write_register(TRIG, 1).isError()
        while time.monotonic() < end:
            regs = plc.read_holding_registers(0, count=9).registers
            if regs[RESULT] == 1:
                break
        assert regs[RESULT] == 1 and regs[VERDICT] in (2, 3), regs          # REVIEW or FAIL
        while len(shown) < 2 and time.monotonic() < end:
            time.sleep(0.02)
        assert answer_when_typed == [1]     # the typer ran once the PLC had its answer
        arrived, typed = shown              # the verdict on screen at once, its types once typed
        assert isinstance(arrived, ResultArrived) and isinstance(typed, ResultTyped)
        assert arrived.result.typing is None and arrived.result.regions
        assert {r.predicted_class for r in arrived.result.regions} == {None}
        assert arrived.result.verdict is typed.result.verdict and typed.result.frame_id == arrived.result.frame_id
        assert typed.result.typing is None
        types = {r.predicted_class for r in typed.result.regions}
        assert len(types) == 1 and types <= TYPED                             # the screen shows the types
        assert recorder.wait_stored(10)
        newest = max(store.inspections(recipe=station.name), key=lambda r: r.id)
        assert {r.predicted_class for r in newest.regions} == types        # and the store holds them
        assert all(r.defect_class is None for r in newest.regions)
    finally:
        plc.close()
        controller.shutdown()
        recorder.close()
        line.stop()
        store.close()
