"""Kiosk mode (F11): the station screen alone over the whole screen, then the window back where it was.

A kiosk PC often runs a bare X server without a window manager: there ``showFullScreen`` alone leaves the
window at its size in a corner, so the window takes the screen's geometry first, and leaving kiosk gives it
its place back.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QRect
from PySide6.QtWidgets import QMainWindow, QTabWidget, QWidget

from ui.station_view import StationView

__all__ = ["Kiosk"]


class Kiosk:
    """Switches a main window in and out of kiosk mode.

    Args:
        window: the main window.
        tabs: its screens; only ``station``'s shows in kiosk (the tab bar is hidden).
        station: the station screen (`StationView.set_kiosk`: the large verdict and the headline).
        chrome: what kiosk hides besides the tab bar (toolbar, status bar).
    """

    def __init__(self, window: QMainWindow, tabs: QTabWidget, station: StationView, chrome: Sequence[QWidget]) -> None:
        self._window = window
        self._tabs = tabs
        self._station = station
        self._chrome = tuple(chrome)
        self._windowed = QRect()          # the window's place before kiosk mode

    def apply(self, on: bool) -> None:
        window = self._window
        for widget in self._chrome:
            widget.setVisible(not on)
        self._tabs.tabBar().setVisible(not on)
        self._station.set_kiosk(on)
        if on:
            self._tabs.setCurrentWidget(self._station)
            self._windowed = window.geometry()
            window.setGeometry(window.screen().geometry())   # a bare X server (no window manager) does not resize it
            window.showFullScreen()
        else:
            window.showNormal()
            if self._windowed.isValid():         # (invalid: never in kiosk, a call from code)
                window.setGeometry(self._windowed)
