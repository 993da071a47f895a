"""The footer's link indicators and the fault banner, driven by a real `LinkMonitor`."""

from __future__ import annotations

from PySide6.QtWidgets import QMainWindow
from pytestqt.qtbot import QtBot

from inspector.lineio.signals import LinkMonitor
from ui.link_status import LinkStatusBar, attach_line_io, describe_link


def test_indicators_follow_the_monitor_and_the_banner_names_a_link_that_is_down(qtbot: QtBot) -> None:
    monitor = LinkMonitor()
    monitor.register("modbus", "0.0.0.0:502")
    monitor.register("mqtt", "broker:1883")
    monitor.update("modbus", up=True, clients_delta=1, message=True)
    monitor.update("mqtt", up=True, detail="0 spooled, 0 dropped")
    bar = LinkStatusBar(monitor)
    qtbot.addWidget(bar)
    modbus, mqtt = bar.label("modbus"), bar.label("mqtt")
    assert modbus is not None and mqtt is not None
    assert modbus.text().startswith("MODBUS up · 1 client · ") and "0 errors" in modbus.text()
    assert mqtt.text() == "MQTT up · 0 errors · 0 spooled, 0 dropped"
    assert bar.banner.isHidden()

    monitor.update("mqtt", up=False, error="broker connection lost (Unspecified error); retrying",
                   detail="12 spooled, 0 dropped")
    qtbot.waitUntil(lambda: not bar.banner.isHidden(), timeout=3000)   # the timer picks it up
    assert bar.banner.text() == "MQTT link down: broker connection lost (Unspecified error); retrying"
    assert mqtt.text().startswith("MQTT DOWN · 1 error · 12 spooled")
    assert "broker:1883" in mqtt.toolTip()

    monitor.update("mqtt", up=True)
    bar.refresh()
    assert bar.banner.isHidden()


def test_describe_link_says_how_old_the_last_message_is() -> None:
    monitor = LinkMonitor()
    monitor.register("opcua", "0.0.0.0:4840")
    monitor.update("opcua", up=True, message=True)
    state = monitor.get("opcua")
    assert state is not None and state.last_message is not None
    assert describe_link(state, now=state.last_message + 2.5) == "OPCUA up · 0 clients · 2.5 s ago · 0 errors"


def test_attach_puts_the_bar_in_the_footer_and_publishes_after_the_recorder(qtbot: QtBot) -> None:
    class Line:
        monitor = LinkMonitor()
        published: list[object] = []

        def publish(self, result: object) -> None:
            self.published.append(result)

    window = QMainWindow()
    window.line_consumers = []  # type: ignore[attr-defined]   # as ui.main_window.MainWindow has it
    qtbot.addWidget(window)
    line = Line()
    bar = attach_line_io(window, line)
    assert bar.parent() is not None
    assert window.line_consumers == [line.publish]  # type: ignore[attr-defined]


def test_the_main_window_publishes_every_result_after_recording_it(qtbot: QtBot, tmp_path, settings,
                                                                     part_folder) -> None:
    from tests.ui.conftest import DarkSpotInspector
    from ui.main_window import MainWindow, RunState

    order: list[str] = []

    class Line:
        monitor = LinkMonitor()

        def publish(self, result: object) -> None:
            order.append("publish")

    recipe = tmp_path / "demo.yaml"
    recipe.write_text("name: demo\n", encoding="utf-8")
    window = MainWindow(recipes=[recipe], settings=settings, load_inspector=lambda p: DarkSpotInspector("demo"),
                        source=str(part_folder))
    qtbot.addWidget(window)
    record = window.recorder.record
    window.recorder.record = lambda result: (order.append("record"), record(result))[1]  # type: ignore[method-assign]
    attach_line_io(window, Line())
    window.show()
    window.start()
    qtbot.waitUntil(lambda: window.counts.inspected == 6 and window.state == RunState.SOURCE_ENDED, timeout=15_000)
    assert order == ["record", "publish"] * 6
    window.close()
