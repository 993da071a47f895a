"""The PySide6 desktop app of the inspection station.

Screens: the operator's station view (`StationView`), statistics (`StatisticsView`), review
(`ReviewView`) and teaching (`TeachWizard`), in one `MainWindow`; `main` is ``inspector-gui``.
The Qt bridge to the engine's threads is `PipelineBridge`; long jobs run in a `JobRunner`.

Names are imported on first use, so ``inspector-gui`` can say "no display" before loading Qt.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        msg = f"module 'ui' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
