"""Statistics screen: yield and counts per recipe / line / station / lot / shift / hour / day, defects by class,
a score trend chart with the thresholds and control limits (mean ± 3σ), a date-range filter, CSV export.

Reads an `inspector.store.Store` on the GUI thread when asked (`refresh`): the queries are small
aggregates over an indexed SQLite file. Without a store the screen says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDateTimeEdit,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ui.date_range import FollowingRange
from ui.workers import QueryRunner

__all__ = ["GROUPS", "StatisticsAnswer", "StatisticsView", "control_limits"]

log = logging.getLogger(__name__)

# What Store.yield_summary groups by; the tuples read across a plant's stations sharing one store.
GROUPS: tuple[str | tuple[str, ...], ...] = ("recipe", "line", "station", ("line", "station", "recipe"), "lot",
                                             "shift", "hour", "day")
CONTROL_SIGMA = 3.0          # Shewhart control limits: mean ± 3σ


def control_limits(scores: np.ndarray) -> tuple[float, float, float] | None:
    """Mean and the Shewhart limits (mean - 3σ, mean + 3σ) of a score series; None with < 2 scores.

    The chart passes the scores of PASS parts: the limits describe the process when it makes good
    parts, so a drift of good parts towards the review threshold shows before the rejects do
    (defects are outliers by definition and would only widen the band).

    Args:
        scores: (N,) float anomaly scores; NaN entries are ignored.
    """
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None
    mean, sigma = float(values.mean()), float(values.std(ddof=1))
    return mean, mean - CONTROL_SIGMA * sigma, mean + CONTROL_SIGMA * sigma


def _to_epoch(value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def _field(row: Any, *names: str, default: Any = None) -> Any:
    """Read a field from a dataclass/named tuple/mapping row, trying a few names."""
    for name in names:
        if isinstance(row, dict) and name in row:
            return row[name]
        if hasattr(row, name):
            return getattr(row, name)
    return default


@dataclass(frozen=True, kw_only=True)
class StatisticsAnswer:
    """What one refresh reads from the store (on a query thread): plain rows for the GUI thread."""

    recipes: list[Any]         # yield rows grouped by recipe: the recipe filter's choices
    yields: list[Any]
    defects: Any
    scores: list[Any]


def _query_statistics(store: Any, filters: dict[str, Any], group: str) -> Callable[[], StatisticsAnswer]:
    """The store reads of one refresh, as a call for a `QueryRunner` thread."""

    def query() -> StatisticsAnswer:
        return StatisticsAnswer(recipes=store.yield_summary(group_by="recipe"),
                                yields=store.yield_summary(group_by=group, **filters),
                                defects=store.defects_by_class(**filters),
                                scores=store.score_series(**filters))

    return query


class StatisticsView(QWidget):
    """The statistics screen. ``store`` may be None (the screen then says there is no store).

    Queries run on a `QueryRunner` thread; ``refreshed`` is emitted once their answer is on screen.
    """

    refreshed = Signal()      # a refresh's answer is on screen
    exported = Signal()       # a background export finished (its message says how)

    def __init__(self, store: Any | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._store = store
        self._review_threshold: float | None = None
        self._fail_threshold: float | None = None

        self.group_box = QComboBox()
        for group in GROUPS:
            label = group.capitalize() if isinstance(group, str) else " / ".join(k.capitalize() for k in group)
            self.group_box.addItem(label, group)
        self.recipe_box = QComboBox()
        self.recipe_box.addItem("All recipes", None)
        self.since_edit = QDateTimeEdit()
        self.until_edit = QDateTimeEdit()
        self.range = FollowingRange(self.since_edit, self.until_edit)     # follows now until edited
        self.queries = QueryRunner(self)
        self.queries.ready.connect(self._on_query_ready)
        self.queries.failed.connect(self._on_query_failed)
        self._exports = QueryRunner(self)          # every export is reported, not only the newest
        self._exports.ready.connect(self._on_export_done)
        self._exports.failed.connect(self._on_export_failed)
        self._export_paths: dict[int, Path] = {}
        self.refresh_button = QPushButton("Refresh")
        self.export_button = QPushButton("Export CSV…")
        self.refresh_button.clicked.connect(self.refresh)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.group_box.currentIndexChanged.connect(self._on_filter_changed)
        self.recipe_box.currentIndexChanged.connect(self._on_filter_changed)

        bar = QHBoxLayout()
        for label, widget in (("Group by", self.group_box), ("Recipe", self.recipe_box),
                              ("From", self.since_edit), ("To", self.until_edit)):
            bar.addWidget(QLabel(label))
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.refresh_button)
        bar.addWidget(self.export_button)

        self.yield_table = QTableWidget(0, 7)
        self.yield_table.setHorizontalHeaderLabels(
            ["Group", "Inspected", "Pass", "Review", "Fail", "Errors", "Yield %"])
        self.defect_table = QTableWidget(0, 2)
        self.defect_table.setHorizontalHeaderLabels(["Defect class", "Count"])
        for table in (self.yield_table, self.defect_table):
            table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
            table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
            table.verticalHeader().setVisible(False)
            table.setAlternatingRowColors(True)

        pg.setConfigOptions(antialias=True)
        self.chart = pg.PlotWidget(axisItems={"bottom": pg.DateAxisItem()})
        self.chart.setBackground("#11161a")
        self.chart.showGrid(x=True, y=True, alpha=0.25)
        self.chart.setLabel("left", "anomaly score")
        self.chart.getAxis("left").enableAutoSIPrefix(False)
        self.points_drawn = 0
        self.limits: tuple[float, float, float] | None = None
        self.chart.addLegend(offset=(10, 10))
        self.chart.setMinimumHeight(220)

        self.message = QLabel("")
        self.message.setStyleSheet("color: #ffb300; font-weight: bold;")

        tables = QSplitter(Qt.Orientation.Horizontal)
        tables.addWidget(self.yield_table)
        tables.addWidget(self.defect_table)
        tables.setStretchFactor(0, 3)
        tables.setStretchFactor(1, 1)
        # defect types, p-chart with alarms, location map: computed on a worker thread (ui.defect_insights)
        from ui.defect_insights import DefectInsightsPanel

        self.insights = DefectInsightsPanel(store)
        body = QSplitter(Qt.Orientation.Vertical)
        body.addWidget(tables)
        body.addWidget(self.chart)
        body.addWidget(self.insights)
        body.setStretchFactor(0, 1)
        body.setStretchFactor(1, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.message)
        layout.addWidget(body, 1)
        if store is None:
            self.message.setText("No statistics store: start the app with --store PATH to record results.")

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.insights.shutdown()           # no worker thread outlives the screen
        super().closeEvent(event)

    # ------------------------------------------------------------------------------ public
    def set_store(self, store: Any | None) -> None:
        self._store = store
        self.insights.set_store(store)
        self.refresh()

    def set_thresholds(self, review: float | None, fail: float | None) -> None:
        """Thresholds drawn on the score chart (the current recipe's)."""
        self._review_threshold, self._fail_threshold = review, fail

    def set_range(self, since: float | datetime, until: float | datetime) -> None:
        """A fixed date-range filter (seconds since the epoch, or datetimes); it no longer follows now."""
        self.range.set_range(_to_epoch(since), math.ceil(_to_epoch(until)) - 1)

    def filters(self) -> dict[str, Any]:
        """The store query filters chosen on screen: recipe, and since/until in seconds since the epoch."""
        return {
            "recipe": self.recipe_box.currentData(),
            **dict(zip(("since", "until"), self.range.bounds(), strict=True)),
        }

    @Slot()
    def refresh(self) -> None:
        """Query the store off the GUI thread; tables and chart are redrawn when the answer comes (`refreshed`)."""
        if self._store is None:
            return
        filters = self.filters()
        self.queries.submit(_query_statistics(self._store, filters, self.group_box.currentData()),
                            name="statistics-query")
        self.insights.refresh(filters)          # its own worker thread (ui.defect_insights)

    def _on_query_ready(self, request: int, answer: StatisticsAnswer) -> None:
        if not self.queries.is_latest(request):
            return                              # a newer refresh is under way
        self._refresh_recipes(answer.recipes)
        self._fill_yield(answer.yields)
        self._fill_defects(answer.defects)
        self._draw_scores(answer.scores)
        self.message.setText("")
        self.refreshed.emit()

    def _on_query_failed(self, request: int, exc: BaseException) -> None:
        if self.queries.is_latest(request):
            self.message.setText(f"Statistics unavailable: {type(exc).__name__}: {exc}")
            self.refreshed.emit()

    def shutdown(self) -> None:
        """Join a query, export or insights computation under way (the window is closing)."""
        self.queries.shutdown()
        self._exports.shutdown()
        self.insights.shutdown()

    def export_csv(self, path: str | Path) -> Path:
        """Export the inspections matching the filters to ``path`` (via `Store.export_csv`)."""
        if self._store is None:
            msg = "no statistics store to export from; start the app with --store PATH"
            raise RuntimeError(msg)
        filters = self.filters()
        self._store.export_csv(Path(path), **filters)
        return Path(path)

    # ----------------------------------------------------------------------------- private
    def _refresh_recipes(self, rows: list[Any]) -> None:
        names = sorted({str(_field(row, "key")) for row in rows})
        known = {self.recipe_box.itemData(i) for i in range(1, self.recipe_box.count())}
        self.recipe_box.blockSignals(True)
        for name in names:
            if name not in known:
                self.recipe_box.addItem(name, name)
        self.recipe_box.blockSignals(False)

    def _fill_yield(self, rows: list[Any]) -> None:
        table = self.yield_table
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            pct = _field(row, "yield_pct")
            values = [
                str(_field(row, "key", default="")),
                str(_field(row, "inspected", default=0)),
                str(_field(row, "passed", default=0)),
                str(_field(row, "review", default=0)),
                str(_field(row, "failed", default=0)),
                str(_field(row, "errors", default=0)),
                "—" if pct is None else f"{float(pct):.1f}",
            ]
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(r, c, item)

    def _fill_defects(self, rows: Any) -> None:
        if isinstance(rows, dict):
            pairs = list(rows.items())
        else:
            pairs = []
            for row in rows:
                if isinstance(row, tuple) and len(row) == 2 and not hasattr(row, "_fields"):
                    pairs.append(row)
                else:
                    pairs.append((_field(row, "defect_class", "key", "label", "name"),
                                  _field(row, "count", "n")))
        self.defect_table.setRowCount(len(pairs))
        for r, (name, count) in enumerate(pairs):
            self.defect_table.setItem(r, 0, QTableWidgetItem(str(name) if name else "(unassigned)"))
            item = QTableWidgetItem(str(count))
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.defect_table.setItem(r, 1, item)

    def _draw_scores(self, points: list[Any]) -> None:
        chart = self.chart
        chart.clear()
        self.limits = None
        times = np.array([_to_epoch(_field(p, "time", "timestamp")) for p in points], dtype=np.float64)
        scores = np.array([np.nan if _field(p, "score") is None else float(_field(p, "score"))
                           for p in points])
        self.points_drawn = len(points)
        if not len(points):
            return
        colours = {"PASS": "#4caf50", "REVIEW": "#ffca28", "FAIL": "#ff5252", "ERROR": "#ce93d8"}
        verdicts = np.array([str(_field(p, "verdict")) for p in points])
        chart.plot(times, scores, pen=pg.mkPen("#607d8b", width=1), name="score")
        # one scatter per verdict with one brush: a brush per point took ~3 s of the GUI thread at 5,000 points
        for verdict in np.unique(verdicts):
            mine = verdicts == verdict
            chart.addItem(pg.ScatterPlotItem(times[mine], scores[mine], size=6, pen=None,
                                             brush=pg.mkBrush(colours.get(str(verdict), "#90a4ae"))))
        passed = verdicts == "PASS"
        limits = control_limits(scores[passed] if passed.sum() >= 2 else scores)
        self.limits = limits
        if limits is not None:
            mean, low, high = limits
            lines = [(mean, "mean (PASS)", Qt.PenStyle.SolidLine), (high, "mean + 3σ", Qt.PenStyle.DashLine)]
            if low > 0:              # scores are >= 0: a negative lower limit says nothing
                lines.append((low, "mean − 3σ", Qt.PenStyle.DashLine))
            for value, name, style in lines:
                chart.addItem(pg.InfiniteLine(value, angle=0, pen=pg.mkPen("#29b6f6", width=1, style=style),
                                              label=name, labelOpts={"color": "#29b6f6", "position": 0.05}))
        for value, name, colour in ((self._review_threshold, "review", "#ffca28"),
                                    (self._fail_threshold, "fail", "#ff5252")):
            if value is not None:
                chart.addItem(pg.InfiniteLine(value, angle=0, pen=pg.mkPen(colour, width=2),
                                              label=f"{name} threshold",
                                              labelOpts={"color": colour, "position": 0.95}))

    @Slot(int)
    def _on_filter_changed(self, index: int) -> None:
        self.refresh()

    @Slot()
    def _on_export_clicked(self) -> None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M")
        path, _ = QFileDialog.getSaveFileName(self, "Export inspections", f"inspections-{stamp}.csv",
                                              "CSV (*.csv)")
        if not path:
            return
        self.message.setText(f"Exporting to {path}…")
        self.export_in_background(Path(path))

    def export_in_background(self, path: Path) -> None:
        """`export_csv` on a query thread (a big range takes seconds); the message says when it is done."""
        export = self._exports.submit(lambda: self.export_csv(path), name="csv-export")
        self._export_paths[export] = path

    def _on_export_done(self, request: int, value: object) -> None:
        self.message.setText(f"Exported to {self._export_paths.pop(request, value)}")
        self.exported.emit()

    def _on_export_failed(self, request: int, exc: BaseException) -> None:
        self._export_paths.pop(request, None)
        self.message.setText(f"Export failed: {type(exc).__name__}: {exc}")
        self.exported.emit()
