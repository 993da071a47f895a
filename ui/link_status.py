"""The footer's line-link indicators (Modbus, OPC UA, MQTT) and the fault banner when a link is down.

`LinkStatusBar` polls a Qt-free `inspector.lineio.signals.LinkMonitor` twice a second on the GUI
thread (a snapshot is a few frozen dataclasses under one lock: nothing here can block), shows one
indicator per link (up/down, clients, age of the last message, errors) with the last error as its
tooltip, and a red banner naming every link that is down. `attach_line_io` puts it into a main
window's status bar and adds the MQTT publisher after the window's recorder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMainWindow, QWidget

from inspector.lineio.signals import LinkMonitor, LinkState
from inspector.results import InspectionResult

__all__ = ["POLL_MS", "LineOutput", "LinkStatusBar", "PublishingWindow", "attach_line_io", "describe_link"]

POLL_MS: Final = 500
_UP_STYLE: Final = "color: #1b7f3b; font-weight: bold;"
_DOWN_STYLE: Final = "color: #b00020; font-weight: bold;"
_BANNER_STYLE: Final = "background: #b00020; color: white; font-weight: bold; padding: 2px 8px;"


def describe_link(state: LinkState, now: float | None = None) -> str:
    """One short line for the footer, e.g. ``MODBUS up · 1 client · 0.4 s ago · 0 errors``."""
    now = time.time() if now is None else now
    parts = [f"{state.name.upper()} {'up' if state.up else 'DOWN'}"]
    if state.name != "mqtt":
        parts.append(f"{state.clients} client{'s' if state.clients != 1 else ''}")
    if state.last_message is not None:
        parts.append(f"{max(0.0, now - state.last_message):.1f} s ago")
    parts.append(f"{state.errors} error{'s' if state.errors != 1 else ''}")
    if state.detail:
        parts.append(state.detail)
    return " · ".join(parts)


class LinkStatusBar(QWidget):
    """Indicators of every link of a `LinkMonitor`, and a banner while one is down.

    Args:
        monitor: the links' states (`inspector.lineio.line.LineIO.monitor`).
    """

    def __init__(self, monitor: LinkMonitor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._monitor = monitor
        self._labels: dict[str, QLabel] = {}
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.banner = QLabel("")
        self.banner.setStyleSheet(_BANNER_STYLE)
        self.banner.setVisible(False)
        self._layout.addWidget(self.banner)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        self.refresh()

    def label(self, name: str) -> QLabel | None:
        return self._labels.get(name)

    def refresh(self) -> None:
        """Read the monitor and repaint (the timer calls it; tests call it directly)."""
        now = time.time()
        down = []
        for state in self._monitor.snapshot():
            label = self._labels.get(state.name)
            if label is None:
                label = self._labels[state.name] = QLabel()
                self._layout.addWidget(label)
            label.setText(describe_link(state, now))
            label.setStyleSheet(_UP_STYLE if state.up else _DOWN_STYLE)
            label.setToolTip(f"{state.endpoint}\nlast error: {state.last_error or 'none'}")
            if not state.up:
                down.append(f"{state.name.upper()} link down" + (f": {state.last_error}" if state.last_error else ""))
        self.banner.setText("  |  ".join(down))
        self.banner.setVisible(bool(down))


class LineOutput(Protocol):
    """What the footer needs of the line links (`inspector.lineio.line.LineIO`)."""

    @property
    def monitor(self) -> LinkMonitor:
        """Every link's state."""
        ...

    def publish(self, result: InspectionResult) -> None:
        """Send one durable result out (MQTT)."""
        ...


@runtime_checkable
class PublishingWindow(Protocol):
    """A window whose results go to ``line_consumers`` after they are recorded (`ui.main_window.MainWindow`)."""

    line_consumers: list[Callable[[InspectionResult], None]]


def attach_line_io(window: QMainWindow, line: LineOutput, *, publish: bool = True) -> LinkStatusBar:
    """Show ``line``'s links in ``window``'s footer; results are published after the window's recorder.

    Args:
        window: a `ui.main_window.MainWindow` (its ``line_consumers`` run after its recorder).
        line: a started `inspector.lineio.line.LineIO`.
        publish: add ``line.publish`` after the recorder (continuous mode). False in triggered mode,
            where the run publishes each result after answering the PLC.
    """
    bar = LinkStatusBar(line.monitor, window)
    window.statusBar().addPermanentWidget(bar)
    if publish and isinstance(window, PublishingWindow):
        window.line_consumers.append(line.publish)
    return bar
