"""The PySide6 desktop app of the inspection station.

Screens: the operator's station view (`StationView`), statistics (`StatisticsView`), review
(`ReviewView`) and teaching (`TeachWizard`), in one `MainWindow`; `main` is ``inspector-gui``.
The Qt bridge to the engine's threads is `PipelineBridge`; long jobs run in a `JobRunner`.

Names are imported on first use, so ``inspector-gui`` can say "no display" before loading Qt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # the real types for type checkers; at run time `__getattr__` imports on first use
    from ui.app import main
    from ui.live_view import FaultBanner, HeatmapView, VerdictBanner, VerdictStrip, YieldPanel
    from ui.main_window import MainWindow
    from ui.qimage import bgr_to_qimage
    from ui.review_view import ReviewView
    from ui.station_view import StationView
    from ui.stats_view import StatisticsView
    from ui.teach_wizard import TeachWizard
    from ui.workers import JobRunner, PipelineBridge

__all__ = [
    "FaultBanner",
    "HeatmapView",
    "JobRunner",
    "MainWindow",
    "PipelineBridge",
    "ReviewView",
    "StationView",
    "StatisticsView",
    "TeachWizard",
    "VerdictBanner",
    "VerdictStrip",
    "YieldPanel",
    "bgr_to_qimage",
    "main",
]

_WHERE = {
    "FaultBanner": "ui.live_view",
    "HeatmapView": "ui.live_view",
    "VerdictBanner": "ui.live_view",
    "VerdictStrip": "ui.live_view",
    "YieldPanel": "ui.live_view",
    "JobRunner": "ui.workers",
    "PipelineBridge": "ui.workers",
    "MainWindow": "ui.main_window",
    "ReviewView": "ui.review_view",
    "StationView": "ui.station_view",
    "StatisticsView": "ui.stats_view",
    "TeachWizard": "ui.teach_wizard",
    "bgr_to_qimage": "ui.qimage",
    "main": "ui.app",
}


def __getattr__(name: str) -> object:
    """PEP 562 lazy import of the names in ``__all__`` (a fixed table, not dispatch on input)."""
    module = _WHERE.get(name)
    if module is None:
        msg = f"module 'ui' has no attribute {name!r}"
        raise AttributeError(msg)
    return vars(importlib.import_module(module))[name]
