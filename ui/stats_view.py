"""Statistics screen: yield and counts per recipe / line / station / lot / shift / hour / day, defects by class,
a score trend chart with the thresholds and control limits (mean ± 3σ), a date-range filter, CSV export.

A refresh reads an `inspector.store.Store` on a `ui.workers.QueryRunner` thread, which also prepares what
the chart draws (`ScoreChartData`: numpy arrays per verdict, the control limits). The GUI thread only
fills two small tables and hands those arrays to chart items made once (``setData``), so a refresh at
10,000 inspections costs it tens of milliseconds (issue 13: no click above 0.3 s; measured by
``tests/ui/test_screens.py -k 10000``). Without a store the screen says so.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypedDict

import numpy as np
import pyqtgraph as pg
from pyqtgraph.graphicsItems.DateAxisItem import MS_ZOOM_LEVEL
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

from inspector.errors import InspectorError
from inspector.results import InspectionResult, Verdict
from inspector.statistics import Filters, location_caveat, location_reference
from inspector.store import GroupBy
from inspector.versions import REFERENCE_FILE, reference_image, resolve_version
from ui.date_range import FollowingRange
from ui.defect_insights import AXIS_WIDTH_PX, DefectInsightsPanel, InsightsDrawing
from ui.workers import QueryRunner

if TYPE_CHECKING:
    from inspector.recipe import Recipe
    from inspector.store import ScorePoint, Store, YieldRow

__all__ = ["GROUPS", "ScoreChartData", "StatisticsAnswer", "StatisticsView", "StoreFilters", "control_limits",
           "score_chart_data"]

log = logging.getLogger(__name__)

GroupKey = GroupBy | tuple[GroupBy, ...]
# What Store.yield_summary groups by; the tuples read across a plant's stations sharing one store.
GROUPS: Final[tuple[GroupKey, ...]] = ("recipe", "line", "station", ("line", "station", "recipe"), "lot",
                                       "shift", "hour", "day")
CONTROL_SIGMA = 3.0          # Shewhart control limits: mean ± 3σ
# The score line breaks where the line stopped: a time to the next inspection this many times the median one,
# and at least this long (a pause for a jam is not a break; a night or a changeover is).
GAP_MEDIANS = 20.0
GAP_MIN_S = 600.0
# One scatter per verdict, one brush each (a brush per point took ~3 s of the GUI thread at 5,000 points);
# made once in this order, which is also their stacking order (PASS over FAIL, as the old sorted redraw had it).
VERDICT_COLOURS: Final[dict[Verdict, str]] = {Verdict.ERROR: "#ce93d8", Verdict.FAIL: "#ff5252",
                                              Verdict.PASS: "#4caf50", Verdict.REVIEW: "#ffca28"}


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


def _to_epoch(value: float | datetime) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


class StoreFilters(TypedDict):
    """The store query filters chosen on screen (keyword arguments of the `Store` queries)."""

    recipe: str | None
    since: float               # seconds since the epoch
    until: float


@dataclass(frozen=True, kw_only=True)
class ScoreChartData:
    """The score chart of one refresh, prepared on the query thread: the GUI thread only sets it on items."""

    times: np.ndarray               # (N,) float64 seconds since the epoch, oldest first
    scores: np.ndarray              # (N,) float64 anomaly scores
    line: tuple[np.ndarray, np.ndarray]   # the score line: times and scores, a NaN score across each gap
    by_verdict: dict[Verdict, tuple[np.ndarray, np.ndarray]]   # verdict -> (times, scores) of its points
    limits: tuple[float, float, float] | None     # `control_limits` of the PASS scores (all with < 2 PASS)

    @property
    def count(self) -> int:
        return int(self.times.size)


def score_chart_data(points: Sequence[ScorePoint]) -> ScoreChartData:
    """Arrays for the score chart from `Store.score_series` rows (runs on a query thread).

    Args:
        points: scored inspections, oldest first.
    """
    n = len(points)
    times = np.fromiter((p.time for p in points), np.float64, n)
    scores = np.fromiter((p.score for p in points), np.float64, n)
    verdicts = [Verdict(p.verdict) for p in points]
    by_verdict: dict[Verdict, tuple[np.ndarray, np.ndarray]] = {}
    for verdict in VERDICT_COLOURS:
        mine = np.fromiter((v is verdict for v in verdicts), bool, n)
        by_verdict[verdict] = (times[mine], scores[mine])
    passed = by_verdict[Verdict.PASS][1]
    limits = control_limits(passed if passed.size >= 2 else scores)
    return ScoreChartData(times=times, scores=scores, line=_broken_at_gaps(times, scores), by_verdict=by_verdict,
                          limits=limits)


def _broken_at_gaps(times: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The score line with a NaN point (drawn as a break) where the time to the next inspection is above
    `GAP_MEDIANS` times the median and at least `GAP_MIN_S`: a line across a night between two runs would draw
    scores that were never measured."""
    if times.size < 3:
        return times, scores
    steps = np.diff(times)
    gaps = np.flatnonzero(steps > max(GAP_MIN_S, GAP_MEDIANS * float(np.median(steps)))) + 1
    return (np.insert(times, gaps, times[gaps - 1] + steps[gaps - 1] / 2),
            np.insert(scores, gaps, math.nan))


@dataclass(frozen=True, kw_only=True)
class StatisticsAnswer:
    """What one refresh reads from the store (on a query thread): plain rows and arrays for the GUI thread."""

    recipes: list[str]              # every recipe in the store: the recipe filter's choices
    yields: list[YieldRow]
    defects: list[tuple[str, int]]  # (defect class, regions), most frequent first
    chart: ScoreChartData
    insights: InsightsDrawing | str | None   # the insights panel's drawing, why it failed, or None (not asked)


def _query_statistics(store: Store, filters: StoreFilters, group: GroupKey,
                      insights: Callable[[], InsightsDrawing] | None) -> Callable[[], StatisticsAnswer]:
    """The store reads of one refresh, the chart's arrays and the insights, as a call for a `QueryRunner` thread.

    One thread does them one after the other and the GUI thread draws them together: a second query
    thread running Python (SQLAlchemy rows) while the GUI thread paints takes the GIL from it, which
    stretched one chart's paint from 0.09 s to 0.7 s on the loaded test machine (measured).
    """

    def query() -> StatisticsAnswer:
        recipes = sorted({row.key for row in store.yield_summary(group_by="recipe")})
        drawing: InsightsDrawing | str | None = None
        if insights is not None:
            try:
                drawing = insights()
            except Exception as exc:            # shown in the insights panel; the tables and chart still are
                log.warning("defect insights failed: %s: %s", type(exc).__name__, exc)
                drawing = f"{type(exc).__name__}: {exc}"
        return StatisticsAnswer(recipes=recipes,
                                yields=store.yield_summary(group_by=group, **filters),
                                defects=store.defects_by_class(**filters),
                                chart=score_chart_data(store.score_series(**filters)),
                                insights=drawing)

    return query


@dataclass(frozen=True, kw_only=True)
class _RecipeRead:
    """A recipe file read for ``StatisticsView.show_recipe_file``, and the ``set_recipe`` count it was asked at."""

    generation: int
    recipe: Recipe | None                       # None: the file or its model could not be read (``problem``)
    thresholds: tuple[float, float] | None      # (review, fail) its station would judge with
    problem: str = ""


@dataclass(frozen=True, kw_only=True)
class _ReferenceRead:
    """A model version's location picture and caveat, read for ``StatisticsView.set_recipe`` at ``generation``."""

    generation: int
    picture: np.ndarray | None                  # its reference.png (the ROI), None: none or unreadable
    caveat: str | None                          # `inspector.statistics.location_caveat`
    from_file: bool                             # the version kept a picture (None above: it could not be read)


class StatisticsView(QWidget):
    """The statistics screen. ``store`` may be None (the screen then says there is no store).

    Queries run on a `QueryRunner` thread; ``refreshed`` is emitted once their answer is on screen.
    """

    refreshed = Signal()      # a refresh's answer is on screen
    exported = Signal()       # a background export finished (its message says how)
    recipe_shown = Signal()   # a recipe picked while stopped (``show_recipe_file``) is the screen's now

    def __init__(self, store: Store | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._store = store
        self._review_threshold: float | None = None
        self._fail_threshold: float | None = None
        self._recipe_area: tuple[int, int, int, int] | None = None   # the running recipe's ROI box, frame pixels
        self._has_reference = False                                  # the location map has its good image

        self.group_box = QComboBox()
        for group in GROUPS:
            label = group.capitalize() if isinstance(group, str) else " / ".join(k.capitalize() for k in group)
            self.group_box.addItem(label, group)
        self.recipe_box = QComboBox()
        self.recipe_box.addItem("All recipes", None)
        self._recipe_choices: list[str | None] = [None]      # recipe_box's items, by index
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
        # a recipe picked while stopped: its file read off the GUI thread (reading one imports torch: seconds)
        self._recipe_files = QueryRunner(self)
        self._recipe_files.ready.connect(self._on_recipe_file_read)
        self._recipe_files.failed.connect(self._on_recipe_file_failed)
        self._recipe_generation = 0                 # set_recipe calls so far: a late file read yields to a newer one
        self._references = QueryRunner(self)        # the taught reference.png, decoded off the GUI thread
        self._references.ready.connect(self._on_reference_read)
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
        self.defect_table.setHorizontalHeaderLabels(["Defect class", "Regions"])
        for table in (self.yield_table, self.defect_table):
            table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
            table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
            table.verticalHeader().setVisible(False)
            table.setAlternatingRowColors(True)

        self.points_drawn = 0
        self.limits: tuple[float, float, float] | None = None
        self.chart = self._build_chart()

        self.message = QLabel("")
        self.message.setStyleSheet("color: #ffb300; font-weight: bold;")

        tables = QSplitter(Qt.Orientation.Horizontal)
        tables.addWidget(self.yield_table)
        tables.addWidget(self.defect_table)
        tables.setStretchFactor(0, 3)
        tables.setStretchFactor(1, 1)
        # defect types, p-chart with alarms, location map: computed off the GUI thread (ui.defect_insights)
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

    def _build_chart(self) -> pg.PlotWidget:
        """The score chart and every item it draws, made once; a refresh only sets their data.

        Making and adding items is what cost the GUI thread most (~0.1 s per refresh at 5,000 points,
        profiled): ``setData`` on items already in the scene costs a few milliseconds.
        """
        pg.setConfigOptions(antialias=True)
        times = pg.DateAxisItem()
        # clock times at the finest: a run of 20 s read "19.000 20.000 ..." (seconds and milliseconds, no hour)
        times.zoomLevels = OrderedDict((spacing, level) for spacing, level in times.zoomLevels.items()
                                       if level is not MS_ZOOM_LEVEL)
        chart = pg.PlotWidget(axisItems={"bottom": times})
        chart.setBackground("#11161a")
        chart.showGrid(x=True, y=True, alpha=0.25)
        chart.setLabel("left", "anomaly score")
        chart.getAxis("left").enableAutoSIPrefix(False)
        # a fixed width: one that follows the tick labels re-lays the plot out and paints it again when data comes
        chart.getAxis("left").setWidth(AXIS_WIDTH_PX)
        chart.addLegend(offset=(10, 10))
        chart.setMinimumHeight(220)
        self._score_line = chart.plot([], [], pen=pg.mkPen("#607d8b", width=1), name="score", connect="finite")
        # 5,000 points on a chart some hundred pixels wide: draw each pixel column's min and max only
        self._score_line.setDownsampling(auto=True, method="peak")
        self._score_line.setClipToView(True)
        self._verdict_points: dict[Verdict, pg.ScatterPlotItem] = {}
        for verdict, colour in VERDICT_COLOURS.items():
            points = pg.ScatterPlotItem(size=6, pen=None, brush=pg.mkBrush(colour))
            chart.addItem(points)
            self._verdict_points[verdict] = points
        limit_pen = {"color": "#29b6f6", "width": 1}
        # each label at its own place along the chart: lines a few pixels apart (a review threshold just under
        # the fail one, a narrow spread) would otherwise print their labels over each other
        self._limit_lines = {
            name: self._horizontal_line(chart, name, pg.mkPen(**limit_pen, style=style), "#29b6f6", position)
            for name, style, position in (("mean + 3σ", Qt.PenStyle.DashLine, 0.04),
                                          ("mean (PASS)", Qt.PenStyle.SolidLine, 0.16),
                                          ("mean − 3σ", Qt.PenStyle.DashLine, 0.28))}
        self._threshold_lines = {
            name: self._horizontal_line(chart, f"{name} threshold", pg.mkPen(colour, width=2), colour, position)
            for name, colour, position in (("review", "#ffca28", 0.78), ("fail", "#ff5252", 0.94))}
        return chart

    @staticmethod
    def _horizontal_line(chart: pg.PlotWidget, label: str, pen: object, colour: str,
                         position: float) -> pg.InfiniteLine:
        # on the chart's own background: readable where the label sits on another line or on the points
        line = pg.InfiniteLine(0.0, angle=0, pen=pen, label=label,
                               labelOpts={"color": colour, "position": position, "fill": (17, 22, 26, 210)})
        line.setVisible(False)                 # hidden lines do not count in the chart's auto range
        chart.addItem(line)
        return line

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.insights.shutdown()           # no worker thread outlives the screen
        super().closeEvent(event)

    # ------------------------------------------------------------------------------ public
    def set_store(self, store: Store | None) -> None:
        self._store = store
        self.insights.set_store(store)
        self.refresh()

    def set_thresholds(self, review: float | None, fail: float | None) -> None:
        """Thresholds drawn on the score chart (the current recipe's)."""
        self._review_threshold, self._fail_threshold = review, fail

    def set_recipe(self, recipe: Recipe | None, version: str | None = None) -> None:
        """The recipe now running (or picked) and its model version: the location map's ROI and its image (a good
        part the version was taught on, its ``reference.png``; else the next PASS frame) and the teaching scores
        that good parts' drift is judged against."""
        self._recipe_generation += 1
        roi = recipe.roi if recipe is not None else None
        self._recipe_area, self._has_reference = (roi.bounding_box() if roi is not None else None), False
        self.insights.set_reference(None, None)
        self.insights.set_location_caveat(None)
        self.insights.model_dir = None
        if recipe is not None:
            try:
                self.insights.model_dir = resolve_version(recipe, version).path
            except InspectorError as exc:
                log.info("no teaching scores for drift: %s", exc)
                return
            # read off the GUI thread (a 5 MP PNG takes 0.1 s to decode): the taught picture, when the version kept
            # one (a PASS frame offered meanwhile does not take its place; an unreadable file leaves it to the next
            # one), and what the map's positions mean for this model (``_on_reference_read``)
            generation, model_dir = self._recipe_generation, self.insights.model_dir
            taught = self._has_reference = (model_dir / REFERENCE_FILE).is_file()

            def read() -> _ReferenceRead:
                caveat = location_caveat(model_dir)
                if not taught:
                    return _ReferenceRead(generation=generation, picture=None, caveat=caveat, from_file=False)
                try:
                    picture = reference_image(model_dir)
                except (OSError, ValueError) as exc:        # a file gone or cut short while read
                    log.info("%s: no location picture: %s", model_dir / REFERENCE_FILE, exc)
                    picture = None
                return _ReferenceRead(generation=generation, picture=picture, caveat=caveat, from_file=True)

            self._references.submit(read, name="reference")

    def show_recipe_file(self, path: Path) -> None:
        """A recipe picked while the station is stopped: its active version's picture, thresholds and teaching
        scores, so its statistics read as they do while it runs. The file is read on a worker thread; a recipe set
        since (the station started) wins, and one that cannot be read shows none of them (said in the log)."""
        generation = self._recipe_generation

        def read() -> _RecipeRead:
            from inspector.recipe import load_recipe
            from inspector.station import line_thresholds

            try:
                recipe = load_recipe(path)
            except InspectorError as exc:
                return _RecipeRead(generation=generation, recipe=None, thresholds=None, problem=str(exc))
            try:
                review, fail, _ = line_thresholds(recipe, resolve_version(recipe).path)
            except (InspectorError, OSError, ValueError, KeyError) as exc:     # not taught yet, or its model.json
                return _RecipeRead(generation=generation, recipe=recipe, thresholds=None, problem=str(exc))
            return _RecipeRead(generation=generation, recipe=recipe, thresholds=(review, fail))

        self._recipe_files.submit(read, name="recipe-file")

    def _on_recipe_file_read(self, request: int, value: object) -> None:
        if (isinstance(value, _RecipeRead) and value.generation == self._recipe_generation
                and self._recipe_files.is_latest(request)):
            if value.problem:
                log.info("recipe picked: %s", value.problem)
            self.set_recipe(value.recipe)
            self.set_thresholds(*(value.thresholds or (None, None)))
            self.recipe_shown.emit()

    def _on_recipe_file_failed(self, request: int, exc: BaseException) -> None:
        log.info("no location map or drift for the recipe picked: %s", exc)

    def _on_reference_read(self, _request: int, value: object) -> None:
        if not (isinstance(value, _ReferenceRead) and value.generation == self._recipe_generation):
            return                                   # another recipe since: its own picture or frame stands
        self.insights.set_location_caveat(value.caveat)
        if value.picture is not None:
            self._set_reference(location_reference(value.picture, self._recipe_area, is_roi=True))
        elif value.from_file:                        # unreadable (said in the log): the next PASS frame
            self._has_reference = False

    def offer_frame(self, result: InspectionResult) -> None:
        """The first PASS frame of the running recipe becomes the location map's reference image (its ROI) when its
        model version has none."""
        if self._has_reference or result.verdict is not Verdict.PASS or result.image_bgr is None:
            return
        if result.image_bgr.ndim == 3:
            self._set_reference(location_reference(result.image_bgr, self._recipe_area, is_roi=False))

    def _set_reference(self, found: tuple[np.ndarray, tuple[int, int, int, int]] | None) -> None:
        if found is not None:                        # None: the ROI misses the frame
            self.insights.set_reference(*found)
            self._has_reference = True

    def set_range(self, since: float | datetime, until: float | datetime) -> None:
        """A fixed date-range filter (seconds since the epoch, or datetimes); it no longer follows now."""
        self.range.set_range(_to_epoch(since), math.ceil(_to_epoch(until)) - 1)

    def filters(self) -> StoreFilters:
        """The store query filters chosen on screen: recipe, and since/until in seconds since the epoch."""
        since, until = self.range.bounds()
        return StoreFilters(recipe=self._recipe_choices[max(0, self.recipe_box.currentIndex())],
                            since=since, until=until)

    @Slot()
    def refresh(self) -> None:
        """Query the store off the GUI thread; tables and chart are redrawn when the answer comes (`refreshed`)."""
        if self._store is None:
            return
        filters = self.filters()
        group = GROUPS[max(0, self.group_box.currentIndex())]
        insights = None
        if self.insights.isVisible():
            insights = self.insights.prepare(Filters(**filters))     # computed with this screen's queries
        else:
            self.insights.refresh(Filters(**filters))    # hidden: the panel computes it once shown
        self.queries.submit(_query_statistics(self._store, filters, group, insights), name="statistics-query")

    def _on_query_ready(self, request: int, answer: StatisticsAnswer) -> None:
        if not self.queries.is_latest(request):
            return                              # a newer refresh is under way
        self._refresh_recipes(answer.recipes)
        self._fill_yield(answer.yields)
        self._fill_defects(answer.defects)
        self._draw_scores(answer.chart)
        if isinstance(answer.insights, InsightsDrawing):
            self.insights.show_drawing(answer.insights)
        elif isinstance(answer.insights, str):
            self.insights.show_failure(answer.insights)
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
        self._recipe_files.shutdown()
        self._references.shutdown()
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
    def _refresh_recipes(self, names: list[str]) -> None:
        known = set(self._recipe_choices)
        self.recipe_box.blockSignals(True)
        for name in names:
            if name not in known:
                self.recipe_box.addItem(name, name)
                self._recipe_choices.append(name)
        self.recipe_box.blockSignals(False)

    def _fill_yield(self, rows: list[YieldRow]) -> None:
        table = self.yield_table
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            pct = row.yield_pct
            values = [row.key, str(row.inspected), str(row.passed), str(row.review), str(row.failed),
                      str(row.errors), f"{pct:.1f}" if math.isfinite(pct) else "—"]
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(r, c, item)

    def _fill_defects(self, pairs: list[tuple[str, int]]) -> None:
        self.defect_table.setRowCount(len(pairs))
        for r, (name, count) in enumerate(pairs):
            self.defect_table.setItem(r, 0, QTableWidgetItem(name or "(unassigned)"))
            item = QTableWidgetItem(str(count))
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.defect_table.setItem(r, 1, item)

    def _draw_scores(self, data: ScoreChartData) -> None:
        """Set the prepared arrays on the chart's items (no item is made or removed here)."""
        self.points_drawn = data.count
        self.limits = data.limits
        self._score_line.setData(*data.line)
        for verdict, points in self._verdict_points.items():
            points.setData(*data.by_verdict[verdict])
        mean, low, high = data.limits if data.limits is not None else (math.nan, math.nan, math.nan)
        # scores are >= 0: a negative lower limit says nothing
        for line, value, shown in ((self._limit_lines["mean (PASS)"], mean, data.limits is not None),
                                   (self._limit_lines["mean + 3σ"], high, data.limits is not None),
                                   (self._limit_lines["mean − 3σ"], low, data.limits is not None and low > 0)):
            self._set_line(line, value if shown and data.count else None)
        for name, threshold in (("review", self._review_threshold), ("fail", self._fail_threshold)):
            self._set_line(self._threshold_lines[name], threshold if data.count else None)
        # the new range now, not in the paint: a range changed while painting costs a second full paint
        self.chart.getViewBox().updateAutoRange()

    @staticmethod
    def _set_line(line: pg.InfiniteLine, value: float | None) -> None:
        if value is not None:
            line.setValue(value)
        line.setVisible(value is not None)

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
