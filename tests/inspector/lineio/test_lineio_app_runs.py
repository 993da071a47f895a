"""The app's runs with a station.yaml, without Qt: a `StationController` with `continuous_pipelines`.

In continuous mode no trigger is answered, but the PLC's FAULT bit follows the station: not
inspecting before Start and after Stop, an ERROR result (the model raised, a result not recorded),
a source that ended.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from inspector.capture import ArraySource
from inspector.controller import RunState, StationController
from inspector.errors import StoreError
from inspector.lineio.line import LineIO
from inspector.lineio.signals import StatusBits
from inspector.lineio.station_config import RecipeSlot, StationConfig
from inspector.lineio.triggered_pipeline import NOT_RUNNING, OPERATOR_FAULT, continuous_pipelines
from inspector.results import InspectionResult


class Recorder:
    """Records every result and the faults the PLC saw while recording it; fails on ``fail_on`` frame ids."""

    def __init__(self, line: LineIO, fail_on: frozenset[int]) -> None:
        self.line = line
        self.fail_on = fail_on
        self.seen: list[tuple[int, bool, bool]] = []     # frame id, FAULT "inspection", FAULT "operator"

    def use(self, inspector: object) -> None:
        pass

    def record(self, result: InspectionResult) -> None:
        faults = self.line.signals.faults
        self.seen.append((result.frame_id, "inspection" in faults, OPERATOR_FAULT in faults))
        if result.frame_id in self.fail_on:
            msg = "store full"
            raise StoreError(msg)


def test_in_continuous_mode_fault_follows_the_station(stub_inspector: type) -> None:
    config = StationConfig(station="c1", recipes=(RecipeSlot(number=1, file=Path("demo.yaml")),))
    line = LineIO(config, active_recipe=1)            # no link started: the signals are what a PLC reads
    make = continuous_pipelines(line)
    assert line.signals.faults == {OPERATOR_FAULT: NOT_RUNNING}
    assert line.signals.snapshot().bits & StatusBits.FAULT
    recorder = Recorder(line, fail_on=frozenset({3}))
    images = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(5)]
    controller = StationController(
        load_inspector=lambda path: stub_inspector("demo", raise_on=frozenset({1})),
        open_source=lambda text: ArraySource(images, fps=50),
        recipe_source=lambda inspector: None, recorder=recorder, on_event=lambda event: None,
        make_pipeline=make)
    controller.start(Path("demo.yaml"), source_text="memory")
    end = time.monotonic() + 15
    while controller.state is not RunState.SOURCE_ENDED and time.monotonic() < end:
        time.sleep(0.02)
    assert controller.state is RunState.SOURCE_ENDED
    controller.shutdown()
    # While each frame was recorded, FAULT "inspection" told of the frame before it (1: the model raised,
    # 3: not recorded); "not inspecting" was cleared when the source opened.
    assert recorder.seen == [(0, False, False), (1, False, False), (2, True, False), (3, False, False),
                             (4, True, False)]
    faults = line.signals.faults
    assert faults[OPERATOR_FAULT] == NOT_RUNNING and faults["camera"].startswith("source_ended")
    assert "inspection" not in faults                 # frame 4 was good
    assert not line.signals.snapshot().bits & StatusBits.READY


def test_in_continuous_mode_a_plc_trigger_is_refused_not_left_unanswered() -> None:
    from pymodbus.client import ModbusTcpClient

    from inspector.lineio.station_config import ModbusConfig
    from tests.helpers.lineio import free_port

    port = free_port()
    config = StationConfig(station="c2", recipes=(RecipeSlot(number=1, file=Path("a.yaml")),
                                                  RecipeSlot(number=2, file=Path("b.yaml"))),
                           modbus=ModbusConfig(host="127.0.0.1", port=port))
    line = LineIO(config, active_recipe=1)
    line.start()
    plc = ModbusTcpClient("127.0.0.1", port=port)
    try:
        assert plc.connect()
        reply = plc.write_register(2, 1)
        assert reply.isError() and reply.exception_code == 2     # ILLEGAL ADDRESS: HR2 is read-only here
        assert not plc.write_register(7, 2).isError()            # HR7 is still taken
        regs = plc.read_holding_registers(0, count=9).registers
    finally:
        plc.close()
        line.stop()
    assert regs[2] == 0 and not regs[1] & StatusBits.BUSY and regs[7] == 2

