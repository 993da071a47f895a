"""Defect insights on the Statistics screen: Pareto of defect types, FAIL-rate p-chart with alarms, location map.

The queries (`inspector.statistics.insights`) run on a `ui.workers.QueryRunner` thread, never on the
GUI thread; a refresh asked for while one runs, or while the screen is hidden, is kept and started
when that job ends or the screen is shown (the newest wins).
New SPC alarms are shown in red and published on an `inspector.spc.AlarmBus`, which a line
publisher (MQTT) may subscribe to. Each chart can be saved as PNG or SVG (pyqtgraph's exporters).

Example:
    >>> panel = DefectInsightsPanel(store)
    >>> panel.refresh({"recipe": "fryum", "since": t0, "until": t1})
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from inspector.spc import AlarmBus, ControlChart
from inspector.statistics import Filters, Insights, ParetoRow, insights
from ui.qimage import bgr_to_qimage
from ui.workers import QueryRunner

__all__ = ["ControlChartPlot", "DefectInsightsPanel", "ParetoChart", "save_plot"]

log = logging.getLogger(__name__)


def save_plot(plot: pg.PlotWidget, path: str | Path) -> Path:
    """Save a chart as PNG or SVG (chosen by the file's suffix), as drawn on screen.

    SVG goes through Qt's ``QSvgGenerator`` (pyqtgraph's own SVG exporter fails on Qt 6 paths).

    Raises:
        ValueError: a suffix other than .png or .svg.
        OSError: the file cannot be written.
    """
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        if not plot.grab().save(str(path), "PNG"):
            msg = f"cannot write {path}; check the folder exists and is writable"
            raise OSError(msg)
    elif suffix == ".svg":
        generator = QSvgGenerator()
        generator.setFileName(str(path))
        generator.setSize(plot.size())
        generator.setViewBox(plot.rect())
        generator.setTitle(plot.plotItem.titleLabel.text or path.stem)
        painter = QPainter(generator)
        try:
            plot.render(painter)
        finally:
            painter.end()
        if not path.is_file():
            msg = f"cannot write {path}; check the folder exists and is writable"
            raise OSError(msg)
    else:
        msg = f"{path}: charts are saved as .png or .svg, not {suffix or 'a file without suffix'}"
        raise ValueError(msg)
    return path


class ParetoChart(pg.PlotWidget):
    """Bars of defect counts per type, most frequent first, and the cumulative share (%) as a line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground("#11161a")
        self.setLabel("left", "regions")
        self.setTitle("Defect types (Pareto)")
        self.rows: tuple[ParetoRow, ...] = ()

    def show_rows(self, rows: tuple[ParetoRow, ...]) -> None:
        self.clear()
        self.rows = rows
        if not rows:
            return
        xs = np.arange(len(rows))
        counts = np.asarray([r.count for r in rows], np.float64)
        self.addItem(pg.BarGraphItem(x=xs, height=counts, width=0.7, brush="#4a7ab5"))
        top = float(counts.max())
        cumulative = np.asarray([r.cumulative_share for r in rows]) * top   # drawn on the count scale
        self.plot(xs, cumulative, pen=pg.mkPen("#d9534f", width=2), symbol="o", symbolSize=5)
        self.getAxis("bottom").setTicks([[(i, f"{r.defect_type}\n{100 * r.cumulative_share:.0f} %")
                                          for i, r in enumerate(rows)]])


class ControlChartPlot(pg.PlotWidget):
    """A control chart: the points, centre line, per-point 3-sigma limits and alarm points in red."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground("#11161a")
        self.setLabel("left", "FAIL rate")
        self.setTitle("FAIL rate (p-chart, 3-sigma limits)")
        self.chart: ControlChart | None = None

    def show_chart(self, chart: ControlChart) -> None:
        self.clear()
        self.chart = chart
        if not chart.points:
            return
        xs = np.arange(len(chart.points))
        value = np.asarray([p.value for p in chart.points])
        self.plot(xs, [p.ucl for p in chart.points], pen=pg.mkPen("#d9534f", style=Qt.PenStyle.DashLine))
        self.plot(xs, [p.lcl for p in chart.points], pen=pg.mkPen("#d9534f", style=Qt.PenStyle.DashLine))
        self.plot(xs, [p.centre for p in chart.points], pen=pg.mkPen("#5cb85c", style=Qt.PenStyle.DashLine))
        self.plot(xs, value, pen=pg.mkPen("#e0e0e0"), symbol="o", symbolSize=4)
        if chart.alarms:
            idx = np.asarray([a.index for a in chart.alarms])
            self.plot(idx, value[idx], pen=None, symbol="o", symbolSize=10, symbolBrush="#ff3030")
        step = max(1, len(chart.points) // 8)
        self.getAxis("bottom").setTicks([[(i, chart.points[i].key) for i in range(0, len(chart.points), step)]])


class DefectInsightsPanel(QWidget):
    """Pareto, p-chart with alarms and location map; refreshed off the GUI thread.

    Args:
        store: an `inspector.store.Store`, or None.
        alarms: where new alarms are published (a new bus when None).
    """

    insights_ready = Signal(object)   # inspector.statistics.Insights
    alarm_raised = Signal(object)     # inspector.spc.Alarm, for each new alarm

    def __init__(self, store: Any | None, *, alarms: AlarmBus | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._store = store
        self.alarm_bus = alarms if alarms is not None else AlarmBus()
        self._queries = QueryRunner(self)       # plain Python threads; the newest request's answer wins
        self._queries.ready.connect(self._on_query_ready)
        self._queries.failed.connect(self._on_query_failed)
        self._pending: dict[str, Any] | None = None
        self.area: tuple[int, int, int, int] | None = None     # the recipe's ROI in frame pixels
        self.reference_bgr: np.ndarray | None = None           # a good image of that ROI
        self.last: Insights | None = None

        self.by_box = QComboBox()
        self.by_box.addItem("p-chart per lot", "lot")
        self.by_box.addItem("p-chart per hour", "hour")
        self.save_button = QPushButton("Save charts…")
        self.save_button.clicked.connect(self._on_save_clicked)
        self.status = QLabel("")
        self.pareto = ParetoChart()
        self.p_chart = ControlChartPlot()
        self.location = QLabel("location map: set a reference image of the recipe's ROI")
        self.location.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.location.setMinimumSize(160, 120)
        self.alarm_list = QListWidget()
        self.alarm_list.setMaximumHeight(90)
        self.alarm_list.setStyleSheet("color: #ff5050;")

        bar = QHBoxLayout()
        bar.addWidget(self.by_box)
        bar.addWidget(self.status, 1)
        bar.addWidget(self.save_button)
        charts = QSplitter(Qt.Orientation.Horizontal)
        for widget in (self.pareto, self.p_chart, self.location):
            charts.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(charts, 1)
        layout.addWidget(self.alarm_list)

    def set_store(self, store: Any | None) -> None:
        self._store = store

    def set_reference(self, reference_bgr: np.ndarray | None, area: tuple[int, int, int, int] | None) -> None:
        """A good image of the ROI ((H, W, 3) uint8 BGR) and the ROI (x, y, w, h) in frame pixels."""
        self.reference_bgr, self.area = reference_bgr, area

    @Slot()
    def refresh(self, filters: dict[str, Any]) -> None:
        """Compute the insights for ``filters`` (recipe, since, until, ...) on a worker thread."""
        if self._store is None:
            return
        if not self.isVisible():
            self._pending = dict(filters)       # a hidden screen computes nothing; it starts when shown
            return
        store, area, by = self._store, self.area, self.by_box.currentData()
        flt = Filters(**{k: v for k, v in filters.items() if k in Filters.__dataclass_fields__})
        self.status.setText("computing…")
        self._queries.submit(lambda: insights(store, flt, by=by, area=area), name="insights")

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.refresh(pending)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.shutdown()                         # no query thread outlives the panel
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop delivering answers and join the queries under way (the window is closing)."""
        self._pending = None
        self._queries.shutdown()

    def _on_query_ready(self, request: int, value: object) -> None:
        if self._queries.is_latest(request):    # an older request finishing late never overwrites a newer one
            self._on_insights_done(value)

    def _on_query_failed(self, request: int, exc: BaseException) -> None:
        if self._queries.is_latest(request):
            self._on_insights_failed(f"{type(exc).__name__}: {exc}")

    def save_charts(self, folder: str | Path, *, fmt: str = "png") -> list[Path]:
        """Save the Pareto and p-chart as ``pareto.<fmt>`` and ``fail_rate.<fmt>`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [save_plot(self.pareto, folder / f"pareto.{fmt}"), save_plot(self.p_chart, folder / f"fail_rate.{fmt}")]

    @Slot(object)
    def _on_insights_done(self, value: object) -> None:
        if not isinstance(value, Insights):
            return
        self.last = value
        self.pareto.show_rows(value.pareto)
        self.p_chart.show_chart(value.fail_rate)
        self.alarm_list.clear()
        for alarm in value.fail_rate.alarms:
            self.alarm_list.addItem(alarm.message)
        for alarm in self.alarm_bus.publish(value.fail_rate.alarms):
            self.alarm_raised.emit(alarm)
        if value.locations is not None and self.reference_bgr is not None:
            from inspector.statistics import location_heat_image

            heat = location_heat_image(self.reference_bgr, value.locations.total())
            self.location.setPixmap(to_qimage_pixmap(heat))
        total = sum(r.count for r in value.pareto)
        self.status.setText(f"{total} region(s), {len(value.fail_rate.alarms)} alarm(s); "
                            f"queries took {value.seconds:.2f} s off screen")
        self.insights_ready.emit(value)

    @Slot(str)
    def _on_insights_failed(self, text: str) -> None:
        self.status.setText(f"Statistics unavailable: {text}")

    @Slot()
    def _on_save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save charts", "pareto.png", "PNG (*.png);;SVG (*.svg)")
        if not path:
            return
        try:
            fmt = "svg" if path.lower().endswith(".svg") else "png"
            saved = self.save_charts(Path(path).parent, fmt=fmt)
            self.status.setText("saved " + ", ".join(p.name for p in saved))
        except (OSError, ValueError) as exc:
            self.status.setText(f"cannot save the charts: {exc}")


def to_qimage_pixmap(image_bgr: np.ndarray) -> Any:
    """(H, W, 3) uint8 BGR -> QPixmap (through `ui.qimage.bgr_to_qimage`)."""
    from PySide6.QtGui import QPixmap

    return QPixmap.fromImage(bgr_to_qimage(image_bgr))
