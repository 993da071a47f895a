"""Defect insights on the Statistics screen: Pareto of defect types, FAIL-rate p-chart with alarms, location map.

The queries (`inspector.statistics.insights`) run on a `ui.workers.QueryRunner` thread, never on the
GUI thread, and so does everything the charts draw (`InsightsDrawing`: the bars, the p-chart's lines,
the location heat image); the GUI thread only sets those arrays on chart items made once. A refresh
asked for while the screen is hidden is kept and started when the screen is shown.
New SPC alarms are shown in red and published on an `inspector.spc.AlarmBus`, which a line
publisher (MQTT) may subscribe to. Each chart can be saved as PNG or SVG (pyqtgraph's exporters).

Example:
    >>> panel = DefectInsightsPanel(store)
    >>> panel.refresh(Filters(recipe="fryum", since=t0, until=t1))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QPixmap, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from inspector.errors import StoreError
from inspector.spc import AlarmBus, ControlChart
from inspector.statistics import (
    Filters,
    Insights,
    ParetoRow,
    SpcGroup,
    good_score_drift,
    insights,
    location_heat_image,
    teaching_scores,
)
from inspector.store import Store
from ui.qimage import bgr_to_qimage
from ui.workers import QueryRunner

__all__ = ["ControlChartLines", "ControlChartPlot", "DefectInsightsPanel", "FittedPicture", "InsightsDrawing",
           "ParetoBars", "ParetoChart", "save_plot"]

log = logging.getLogger(__name__)

PChartBy = SpcGroup
AXIS_WIDTH_PX = 56              # left axis: room for "0.000" ticks and the axis title (ours)
PARETO_TICKS_HEIGHT_PX = 34     # bottom axis of the Pareto chart: two lines of tick text, type and share (ours)
P_CHART_GROUPS: Final[tuple[tuple[str, PChartBy], ...]] = (("p-chart per lot", "lot"), ("p-chart per hour", "hour"),
                                                           ("p-chart per shift", "shift"))


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


class FittedPicture(QLabel):
    """A picture shown whole, scaled to the label with its aspect kept (a plain QLabel shows a pixmap at its own
    size and cuts it to the label: a narrow panel would hide the defects at the part's edges); text until then."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._placeholder = text
        self.source = QPixmap()                 # the picture at its own size; null until one is set
        # the label's size follows the layout, never the picture's (that would grow the panel at each fit)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)

    def set_picture(self, picture: QPixmap | None) -> None:
        """Show ``picture`` whole; None shows the text again (no picture to draw on: another recipe's is gone)."""
        self.source = picture if picture is not None else QPixmap()
        if self.source.isNull():
            self.clear()
            self.setText(self._placeholder)
        self._fit()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        if not self.source.isNull() and self.width() > 0 and self.height() > 0:
            self.setPixmap(self.source.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                              Qt.TransformationMode.SmoothTransformation))


@dataclass(frozen=True, kw_only=True)
class ParetoBars:
    """The Pareto chart's arrays, prepared off the GUI thread (`from_rows`)."""

    counts: np.ndarray              # (K,) float64 defective parts per type, most frequent first; bar i at x = i
    cumulative: np.ndarray          # (K,) float64 cumulative share drawn on the count scale
    ticks: list[tuple[int, str]]    # x -> "type\ncumulative %"

    @classmethod
    def from_rows(cls, rows: tuple[ParetoRow, ...]) -> ParetoBars:
        counts = np.asarray([r.parts for r in rows], np.float64)
        top = float(counts.max()) if counts.size else 0.0
        cumulative = np.asarray([r.cumulative_share for r in rows], np.float64) * top
        ticks = [(i, f"{r.defect_type}\n{100 * r.cumulative_share:.0f} %") for i, r in enumerate(rows)]
        return cls(counts=counts, cumulative=cumulative, ticks=ticks)


@dataclass(frozen=True, kw_only=True)
class ControlChartLines:
    """A control chart's arrays, prepared off the GUI thread (`from_chart`); point i sits at x = i."""

    value: np.ndarray               # (N,) float64 the points
    centre: np.ndarray              # (N,) float64
    ucl: np.ndarray                 # (N,) float64 upper 3-sigma limit per point
    lcl: np.ndarray                 # (N,) float64
    alarms: np.ndarray              # (A,) int64 indices of the points where an alarm fired
    ticks: list[tuple[int, str]]    # about 8 group keys along the x axis

    @classmethod
    def from_chart(cls, chart: ControlChart) -> ControlChartLines:
        points = chart.points
        step = max(1, len(points) // 8)
        return cls(value=np.asarray([p.value for p in points], np.float64),
                   centre=np.asarray([p.centre for p in points], np.float64),
                   ucl=np.asarray([p.ucl for p in points], np.float64),
                   lcl=np.asarray([p.lcl for p in points], np.float64),
                   alarms=np.asarray([a.index for a in chart.alarms], np.int64),
                   ticks=[(i, points[i].key) for i in range(0, len(points), step)])


class ParetoChart(pg.PlotWidget):  # type: ignore[misc]   # pyqtgraph ships no type hints
    """Bars of defective parts per type, most frequent first, and the cumulative share (%) as a line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground("#11161a")
        self.setLabel("left", "parts")
        self.setTitle("Defective parts per type (Pareto)")
        # fixed axis sizes: sizes that follow the tick labels re-lay the chart out and paint it again on data
        self.getAxis("left").setWidth(AXIS_WIDTH_PX)
        self.getAxis("bottom").setHeight(PARETO_TICKS_HEIGHT_PX)
        self.rows: tuple[ParetoRow, ...] = ()
        # made once; a refresh sets their data (making items is what cost the GUI thread, profiled)
        self._bars = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), width=0.7, brush="#4a7ab5")
        self.addItem(self._bars)
        self._cumulative = self.plot([], [], pen=pg.mkPen("#d9534f", width=2), symbol="o", symbolSize=5)

    def show_rows(self, rows: tuple[ParetoRow, ...], bars: ParetoBars | None = None) -> None:
        """Draw ``rows``; ``bars`` are their arrays when already prepared off the GUI thread."""
        bars = bars if bars is not None else ParetoBars.from_rows(rows)
        self.rows = rows
        xs = np.arange(bars.counts.size, dtype=np.float64)
        self._bars.setOpts(x=xs, height=bars.counts)
        self._cumulative.setData(xs, bars.cumulative)
        self.getAxis("bottom").setTicks([bars.ticks])
        self.getViewBox().updateAutoRange()      # now, not in the paint (see StatisticsView._draw_scores)


class ControlChartPlot(pg.PlotWidget):  # type: ignore[misc]   # pyqtgraph ships no type hints
    """A control chart: the points, centre line, per-point 3-sigma limits and alarm points in red."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground("#11161a")
        self.setLabel("left", "FAIL rate (%)")
        self.setTitle("FAIL rate (p-chart, 3-sigma limits)")
        axis = self.getAxis("left")
        axis.setWidth(AXIS_WIDTH_PX)      # fixed: see ParetoChart
        # rates in per cent: pyqtgraph's own prefix wrote 0.6 as "600" under "FAIL rate (x0.001)"
        axis.setScale(100.0)
        axis.enableAutoSIPrefix(False)
        self.chart: ControlChart | None = None
        limit = pg.mkPen("#d9534f", style=Qt.PenStyle.DashLine)
        self._ucl = self.plot([], [], pen=limit)
        self._lcl = self.plot([], [], pen=limit)
        self._centre = self.plot([], [], pen=pg.mkPen("#5cb85c", style=Qt.PenStyle.DashLine))
        self._value = self.plot([], [], pen=pg.mkPen("#e0e0e0"), symbol="o", symbolSize=4)
        self._alarms = self.plot([], [], pen=None, symbol="o", symbolSize=10, symbolBrush="#ff3030")

    def show_chart(self, chart: ControlChart, lines: ControlChartLines | None = None) -> None:
        """Draw ``chart``; ``lines`` are its arrays when already prepared off the GUI thread."""
        lines = lines if lines is not None else ControlChartLines.from_chart(chart)
        self.chart = chart
        xs = np.arange(lines.value.size, dtype=np.float64)
        # each group's limits hold across its own place (steps from i - 0.5 to i + 0.5), not sloped lines from one
        # group's to the next; the half step each side also keeps the first and last group's names on the axis
        edges = np.arange(lines.value.size + 1, dtype=np.float64) - 0.5
        for item, ys in ((self._ucl, lines.ucl), (self._lcl, lines.lcl), (self._centre, lines.centre)):
            item.setData(edges, ys, stepMode="center")
        self._value.setData(xs, lines.value)
        self._alarms.setData(xs[lines.alarms], lines.value[lines.alarms])
        self.getAxis("bottom").setTicks([lines.ticks])
        self.getViewBox().updateAutoRange()      # now, not in the paint (see StatisticsView._draw_scores)


@dataclass(frozen=True, kw_only=True)
class InsightsDrawing:
    """One refresh's insights and everything the panel draws from them, made on the query thread."""

    insights: Insights
    pareto: ParetoBars
    fail_rate: ControlChartLines
    location_bgr: np.ndarray | None     # (H, W, 3) uint8 BGR heat over the reference image; None without one
    drift: str | None = None            # the good-score drift sentence; None without a taught model version
    drifted: bool = False
    sequence: int                       # which `DefectInsightsPanel.prepare` call asked for it (newest wins)


def _draw_insights(store: Store, flt: Filters, by: PChartBy, area: tuple[int, int, int, int] | None,
                   reference_bgr: np.ndarray | None, model_dir: Path | None, sequence: int) -> InsightsDrawing:
    """The insights queries, the good-score drift and the charts' arrays (runs on a `QueryRunner` thread)."""
    found = insights(store, flt, by=by, area=area)
    heat = None
    if found.locations is not None and reference_bgr is not None:
        heat = location_heat_image(reference_bgr, found.locations.total())
    drift, drifted = None, False
    if model_dir is not None:
        try:
            scores, review, _, _ = teaching_scores(model_dir)
        except StoreError as exc:
            drift = f"good-score drift unknown: {exc}"
        else:
            report = good_score_drift(store, flt, scores, review_threshold=review, model_version=model_dir.name)
            drift = ("good-score drift: " + report.message if report is not None
                     else f"good-score drift: not enough recent PASS scores of model {model_dir.name} to judge")
            drifted = report is not None and report.drifted
    return InsightsDrawing(insights=found, pareto=ParetoBars.from_rows(found.pareto),
                           fail_rate=ControlChartLines.from_chart(found.fail_rate), location_bgr=heat,
                           drift=drift, drifted=drifted, sequence=sequence)


class DefectInsightsPanel(QWidget):
    """Pareto, p-chart with alarms and location map; refreshed off the GUI thread.

    Args:
        store: an `inspector.store.Store`, or None.
        alarms: where new alarms are published (a new bus when None).
    """

    insights_ready = Signal(object)   # inspector.statistics.Insights
    alarm_raised = Signal(object)     # inspector.spc.Alarm, for each new alarm

    def __init__(self, store: Store | None, *, alarms: AlarmBus | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._store = store
        self.alarm_bus = alarms if alarms is not None else AlarmBus()
        self._queries = QueryRunner(self)       # plain Python threads; the newest request's answer wins
        self._queries.ready.connect(self._on_query_ready)
        self._queries.failed.connect(self._on_query_failed)
        self._pending: Filters | None = None
        self._filters: Filters | None = None     # of the newest refresh: a p-chart grouping change redraws it
        self.area: tuple[int, int, int, int] | None = None     # the recipe's ROI in frame pixels
        self.reference_bgr: np.ndarray | None = None           # a good image of that ROI
        self.model_dir: Path | None = None     # the running model version: its teaching scores judge drift
        self.last: Insights | None = None
        self._sequence = 0          # of the newest `prepare` call
        self._shown = 0             # sequence of the drawing on screen

        self.by_box = QComboBox()
        for label, by in P_CHART_GROUPS:
            self.by_box.addItem(label, by)
        self.by_box.currentIndexChanged.connect(self._on_grouping_changed)
        self.save_button = QPushButton("Save charts…")
        self.save_button.clicked.connect(self._on_save_clicked)
        self.status = QLabel("")
        self.pareto = ParetoChart()
        self.p_chart = ControlChartPlot()
        self.location = FittedPicture("Defect locations: drawn over a good part of this recipe once the station "
                                      "has passed one")
        self.location.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.location.setWordWrap(True)           # a narrow panel: the sentence wraps rather than being cut
        self.location.setMinimumSize(160, 120)
        self.location_note = QLabel("")         # what the map's positions mean, when not places on the part
        self.location_note.setWordWrap(True)
        self.location_note.setVisible(False)
        self.drift = QLabel("")                 # good parts' scores against the teaching distribution
        self.drift.setWordWrap(True)
        self.alarm_list = QListWidget()
        self.alarm_list.setMaximumHeight(90)
        self.alarm_list.setStyleSheet("color: #ff5050;")

        bar = QHBoxLayout()
        bar.addWidget(self.by_box)
        bar.addWidget(self.status, 1)
        bar.addWidget(self.save_button)
        charts = QSplitter(Qt.Orientation.Horizontal)
        location_panel = QWidget()
        location_layout = QVBoxLayout(location_panel)
        location_layout.setContentsMargins(0, 0, 0, 0)
        location_layout.addWidget(self.location, 1)
        location_layout.addWidget(self.location_note)
        panels: tuple[QWidget, ...] = (self.pareto, self.p_chart, location_panel)
        for index, widget in enumerate(panels):
            charts.addWidget(widget)
            charts.setStretchFactor(index, 1)
        self.charts = charts
        self._charts_even = False      # a third each once shown (`_even_charts`)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(charts, 1)
        layout.addWidget(self.drift)
        layout.addWidget(self.alarm_list)

    def set_store(self, store: Store | None) -> None:
        self._store = store

    def set_reference(self, reference_bgr: np.ndarray | None, area: tuple[int, int, int, int] | None) -> None:
        """A good image of the ROI ((H, W, 3) uint8 BGR) and the ROI (x, y, w, h) in frame pixels."""
        self.reference_bgr, self.area = reference_bgr, area

    def set_location_caveat(self, caveat: str | None) -> None:
        """Say under the location map what its positions mean when they are not places on the part
        (`inspector.statistics.location_caveat`); None hides the line."""
        self.location_note.setText(f"Positions: {caveat}." if caveat else "")
        self.location_note.setVisible(bool(caveat))

    def refresh(self, filters: Filters) -> None:
        """Compute the insights for ``filters`` and what the charts draw on a worker thread."""
        if self._store is None:
            return
        if not self.isVisible():
            self._pending = filters             # a hidden screen computes nothing; it starts when shown
            return
        job = self.prepare(filters)
        if job is not None:
            self._queries.submit(job, name="insights")

    def prepare(self, filters: Filters) -> Callable[[], InsightsDrawing] | None:
        """The worker call of a refresh for ``filters``, for a screen that runs it in its own query thread.

        The Statistics screen runs it after its own queries and hands the result to `show_drawing` with
        its answer: one draw on the GUI thread, and no query thread holding the GIL while it paints.
        None without a store.
        """
        if self._store is None:
            return None
        self._sequence += 1
        self._filters = filters
        store, area, reference, sequence = self._store, self.area, self.reference_bgr, self._sequence
        model_dir = self.model_dir
        by = P_CHART_GROUPS[max(0, self.by_box.currentIndex())][1]
        self.status.setText("computing…")
        return lambda: _draw_insights(store, filters, by, area, reference, model_dir, sequence)

    def _on_grouping_changed(self, _index: int) -> None:
        if self._filters is not None:
            self.refresh(self._filters)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        if not self._charts_even:
            # once laid out: the splitter's width is known then; the panel as context: a panel closed before the
            # timer fires cancels it (it ran on a deleted splitter)
            QTimer.singleShot(0, self, self._even_charts)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.refresh(pending)

    def _even_charts(self) -> None:
        """A third of the width each, once: the picture has no size hint of its own and the charts' would leave it a
        thumbnail (a reviewer reads the locations off it); the splitter's handles still move them after."""
        width = self.charts.width()
        if not self._charts_even and width > 0:
            self.charts.setSizes([width // 3] * 3)
            self._charts_even = True

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.shutdown()                         # no query thread outlives the panel
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop delivering answers and join the queries under way (the window is closing)."""
        self._pending = None
        self._queries.shutdown()

    def _on_query_ready(self, request: int, value: object) -> None:
        if isinstance(value, InsightsDrawing):
            self.show_drawing(value)

    def _on_query_failed(self, request: int, exc: BaseException) -> None:
        if self._queries.is_latest(request):
            self.show_failure(f"{type(exc).__name__}: {exc}")

    def save_charts(self, folder: str | Path, *, fmt: str = "png") -> list[Path]:
        """Save the Pareto and p-chart as ``pareto.<fmt>`` and ``fail_rate.<fmt>`` in ``folder``, and the location
        map, when there is one, as ``locations.png`` at its own size (a picture: PNG in either format).

        Raises:
            ValueError: ``fmt`` is neither png nor svg.
            OSError: a file could not be written.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        saved = [save_plot(self.pareto, folder / f"pareto.{fmt}"), save_plot(self.p_chart, folder / f"fail_rate.{fmt}")]
        if not self.location.source.isNull():
            path = folder / "locations.png"
            if not self.location.source.save(str(path), "PNG"):
                msg = f"{path}: the location map could not be written"
                raise OSError(msg)
            saved.append(path)
        return saved

    def show_drawing(self, drawing: InsightsDrawing) -> None:
        """Set a prepared drawing on the charts; one older than the drawing on screen is ignored."""
        if drawing.sequence < self._shown:
            return                              # an older request finishing late never overwrites a newer one
        self._shown = drawing.sequence
        value = drawing.insights
        self.last = value
        self.pareto.show_rows(value.pareto, drawing.pareto)
        self.p_chart.show_chart(value.fail_rate, drawing.fail_rate)
        self.alarm_list.clear()
        self.alarm_list.addItems([alarm.message for alarm in value.fail_rate.alarms])
        for alarm in self.alarm_bus.publish(value.fail_rate.alarms):
            self.alarm_raised.emit(alarm)
        self.location.set_picture(QPixmap.fromImage(bgr_to_qimage(drawing.location_bgr))
                                  if drawing.location_bgr is not None else None)
        self.drift.setText(drawing.drift or "")
        self.drift.setStyleSheet("color: #ff5050;" if drawing.drifted else "")
        regions = sum(r.regions for r in value.pareto)
        self.status.setText(f"{regions} defect region(s), {len(value.fail_rate.alarms)} alarm(s); "
                            f"queries took {value.seconds:.2f} s off screen")
        self.insights_ready.emit(value)

    def show_failure(self, text: str) -> None:
        """Say that the insights could not be computed (``text``: "TypeName: message")."""
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

