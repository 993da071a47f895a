"""Review screen: past inspections from the store, filtered; open one to see it; give feedback.

A table of inspections (thumbnail, time, recipe, verdict, score, regions, label) filtered by verdict,
recipe and time. Selecting a row shows the archived image with its heatmap overlay and regions.
"Actually good" records the label in the store and, in a worker thread, adds the image to the
recipe's model as a new version (`inspector.teach.add_good_feedback`); "Assign class" labels the
defect regions. The page of inspections and the selected one's picture are read on `QueryRunner` threads
(`ui.review_reads`); a label or feedback is one small indexed write on the GUI thread; the model update
runs on the worker thread.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent, QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDateTimeEdit,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from inspector.results import DefectRegion, InspectionResult, Progress, Verdict
from ui.batch_review import ZERO_SHOT, BatchReview, BatchReviewPanel
from ui.date_range import FollowingRange
from ui.live_view import VERDICT_COLOURS, HeatmapView, frame_origin, region_size, short_source
from ui.qimage import bgr_to_qimage
from ui.review_reads import (
    DEFAULT_DEFECT_CLASSES,
    THUMB_PX,
    ReviewAnswer,
    ReviewFilters,
    query_inspections,
    read_record_images,
)
from ui.workers import QueryRunner

if TYPE_CHECKING:
    from inspector.store import InspectionRecord, Store, YieldRow

# BatchReviewPanel and ZERO_SHOT live in ui.batch_review, DEFAULT_DEFECT_CLASSES in ui.review_reads; re-exported here
# for older imports.
__all__ = ["DEFAULT_DEFECT_CLASSES", "ZERO_SHOT", "BatchReviewPanel", "ModelVersionOps", "ReviewView"]

log = logging.getLogger(__name__)

PICK_ONE = "Select an inspection to see it"       # the picture's place before one is chosen
FeedbackJob = Callable[[], Generator[Progress, None, str]]   # returns the new model version
FeedbackRunner = Callable[[FeedbackJob], bool]               # runs a job on the window's thread; False: busy


def _default_good_feedback(recipe_path: Path, image_bgr: np.ndarray, note: str) -> str:
    """Add one image to a recipe's model as good (new model version); runs on the worker thread."""
    from inspector.recipe import load_recipe
    from inspector.teach import add_good_feedback

    return add_good_feedback(load_recipe(recipe_path), [image_bgr], note=note)


@dataclass(frozen=True, kw_only=True)
class ModelVersionOps:
    """What "actually good" needs to know and do about a recipe's model versions (cheap file operations).

    Defaults: `inspector.station.next_version`, `inspector.recipe.set_active_model_version`,
    `inspector.teach.undo_good_feedback`; tests pass their own.
    """

    next_version: Callable[[Path], str]             # recipe file -> the version a save would create
    make_active: Callable[[Path, str], None]        # recipe file, version
    undo: Callable[[Path, str], object]             # recipe file, version (an inactive feedback version)

    @classmethod
    def default(cls) -> ModelVersionOps:
        from inspector.recipe import load_recipe, set_active_model_version
        from inspector.station import next_version
        from inspector.teach import undo_good_feedback

        return cls(next_version=lambda path: next_version(load_recipe(path)).name,
                   make_active=lambda path, version: set_active_model_version(load_recipe(path), version),
                   undo=lambda path, version: undo_good_feedback(load_recipe(path), version))


def _ask(parent: QWidget, title: str, text: str) -> bool:
    """A Yes/No question whose default is No: a stray Enter changes nothing."""
    answer = QMessageBox.question(parent, title, text,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class ReviewView(QWidget):
    """The review screen. Store queries and thumbnails load on a `QueryRunner` thread (``refreshed``).

    Args:
        store: an `inspector.store.Store`, or None.
        feedback_runner: runs a job on the main window's worker thread; returns False when busy.
        recipe_lookup: recipe name -> recipe file (to add "actually good" images to its model).
        good_feedback: (recipe file, image, note) -> new model version; default `add_good_feedback`.
        defect_classes: recipe name -> its defect classes (default `DEFAULT_DEFECT_CLASSES`).
        versions: model version operations for "actually good" (default `ModelVersionOps.default()`).
        confirm: (title, question) -> True to go on; default a Yes/No dialog whose default is No.
        on_model_changed: called with a recipe file after its active model version changed.
    """

    refreshed = Signal()      # a refresh's answer is in the table
    shown = Signal()          # the selected inspection's picture is read (or known to be missing) and drawn

    def __init__(
        self,
        store: Store | None,
        *,
        feedback_runner: FeedbackRunner | None = None,
        recipe_lookup: Callable[[str], Path | None] | None = None,
        good_feedback: Callable[[Path, np.ndarray, str], str] | None = None,
        defect_classes: Callable[[str], tuple[str, ...]] | None = None,
        recipes: Callable[[], list[Path]] = list,
        run_review: BatchReview | None = None,
        versions: ModelVersionOps | None = None,
        confirm: Callable[[str, str], bool] | None = None,
        on_model_changed: Callable[[Path], None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._versions = versions
        self._confirm = confirm or (lambda title, text: _ask(self, title, text))
        self._on_model_changed = on_model_changed or (lambda path: None)
        self._made: tuple[Path, str] | None = None     # (recipe file, version) of the last feedback model
        self.batch = BatchReviewPanel(recipes=recipes, run_review=run_review)
        self._store = store
        self._feedback_runner = feedback_runner
        self._recipe_lookup = recipe_lookup or (lambda name: None)
        self._good_feedback = good_feedback or _default_good_feedback
        self._defect_classes = defect_classes or (lambda name: DEFAULT_DEFECT_CLASSES)
        self._records: list[InspectionRecord] = []
        self._current: InspectionRecord | None = None
        self._image: np.ndarray | None = None
        self._overlay: np.ndarray | None = None
        self._loading = False                           # the selected inspection's picture is being read
        self._pending_recipe: str | None = None
        self._pending_path: Path | None = None

        self.verdict_box = QComboBox()
        self.verdict_box.addItem("All verdicts", None)
        for verdict in (Verdict.FAIL, Verdict.REVIEW, Verdict.PASS, Verdict.ERROR):
            self.verdict_box.addItem(str(verdict), str(verdict))
        self.recipe_box = QComboBox()
        self.recipe_box.addItem("All recipes", None)
        self.since_edit = QDateTimeEdit()
        self.until_edit = QDateTimeEdit()
        self.range = FollowingRange(self.since_edit, self.until_edit)     # follows now until edited
        self.queries = QueryRunner(self)
        self.queries.ready.connect(self._on_query_ready)
        self.queries.failed.connect(self._on_query_failed)
        self.pictures = QueryRunner(self)               # the selected inspection's image and overlay
        self.pictures.ready.connect(self._on_picture_ready)
        self.pictures.failed.connect(self._on_picture_failed)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        self.verdict_box.currentIndexChanged.connect(self._on_filter_changed)
        self.recipe_box.currentIndexChanged.connect(self._on_filter_changed)
        bar = QHBoxLayout()
        for label, widget in (("Verdict", self.verdict_box), ("Recipe", self.recipe_box),
                              ("From", self.since_edit), ("To", self.until_edit)):
            bar.addWidget(QLabel(label))
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(refresh)

        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels(
            ["Image", "Time", "Recipe", "Verdict", "Score", "Regions", "Label"])
        self.table.setIconSize(QSize(THUMB_PX * 4 // 3, THUMB_PX))
        self.table.verticalHeader().setDefaultSectionSize(THUMB_PX + 6)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._on_selection_changed)

        self.view = HeatmapView()
        self.view.set_placeholder(PICK_ONE)
        self.overlay_check = QCheckBox("Heatmap overlay")
        self.overlay_check.setChecked(True)
        self.overlay_check.toggled.connect(self._on_overlay_toggled)
        self.details = QLabel("")
        self.details.setWordWrap(True)
        # room for its usual lines (inspection, source, regions, label, a note): a label given or an image of
        # fewer lines does not move the picture above it
        self.details.setMinimumHeight(5 * self.details.fontMetrics().lineSpacing())
        self.details.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.user_edit = QLineEdit(_user_name())
        self.user_edit.setPlaceholderText("reviewer")
        self.good_button = QPushButton("Actually good")
        self.good_button.setToolTip("Record as good and add the image to the recipe's model as a new version "
                                    "(asks first; the new version is not used until made active)")
        self.good_button.clicked.connect(self.mark_good)
        self.activate_button = QPushButton("Make active")
        self.activate_button.clicked.connect(self.make_active)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo_good)
        for button in (self.activate_button, self.undo_button):
            button.setVisible(False)
        self.class_box = QComboBox()          # as wide as the longest class, which it gets after the first show
        self.class_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.region_box = QComboBox()         # which regions take the class: all of them, or one
        self.region_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.region_box.setToolTip("The class goes to every region of the inspection, or to the one chosen "
                                   "(a part with a second kind of defect)")
        self.class_button = QPushButton("Assign class")
        self.class_button.clicked.connect(self._on_assign_clicked)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("font-weight: bold;")

        actions = QHBoxLayout()
        actions.addWidget(QLabel("Reviewer"))
        actions.addWidget(self.user_edit)
        actions.addWidget(self.good_button)
        actions.addWidget(self.activate_button)
        actions.addWidget(self.undo_button)
        actions.addWidget(self.class_box)
        actions.addWidget(self.region_box)
        actions.addWidget(self.class_button)
        detail = QWidget()
        detail_layout = QVBoxLayout(detail)
        detail_layout.setContentsMargins(0, 0, 0, 0)
        detail_layout.addWidget(self.view, 1)
        detail_layout.addWidget(self.overlay_check)
        detail_layout.addWidget(self.details)
        detail_layout.addLayout(actions)
        detail_layout.addWidget(self.message)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(split, 1)
        layout.addWidget(self.batch)
        self._set_actions_enabled(False)
        if store is None:
            self.message.setText("No statistics store: start the app with --store PATH to review results.")

    # ------------------------------------------------------------------------------ public
    def set_store(self, store: Store | None) -> None:
        self._store = store
        self.refresh()

    @property
    def records(self) -> list[InspectionRecord]:
        """The inspections listed (store `InspectionRecord`s, newest first)."""
        return list(self._records)

    @property
    def current(self) -> InspectionRecord | None:
        return self._current

    def filters(self) -> ReviewFilters:
        since, until = self.range.bounds()
        verdict, recipe = self.verdict_box.currentData(), self.recipe_box.currentData()
        return ReviewFilters(verdict=None if verdict is None else str(verdict),
                             recipe=None if recipe is None else str(recipe), since=since, until=until)

    def set_range(self, since: float, until: float) -> None:
        """A fixed date range (it no longer follows now)."""
        self.range.set_range(since, until)

    @Slot()
    def refresh(self) -> None:
        """Query the store and load the thumbnails off the GUI thread; the table is filled when the answer
        comes (``refreshed``), keeping the selection when the inspection is still listed."""
        self.batch.refresh_recipes()
        if self._store is None:
            return
        self.queries.submit(query_inspections(self._store, self.filters()), name="review-query")

    def _on_query_failed(self, request: int, exc: BaseException) -> None:
        if self.queries.is_latest(request):
            self.message.setText(f"Review unavailable: {type(exc).__name__}: {exc}")
            self.refreshed.emit()

    def _on_query_ready(self, request: int, answer: ReviewAnswer) -> None:
        if not self.queries.is_latest(request):
            return                                  # a newer refresh is under way
        keep = self._current.id if self._current is not None else None
        self._refresh_recipes(answer.recipes)
        self._records = list(answer.records)
        self._fill_table(answer.thumbnails)
        self.refreshed.emit()
        rows = [i for i, r in enumerate(self._records) if r.id == keep]
        if rows:
            self.table.selectRow(rows[0])
        else:
            self._show(None)

    def select(self, row: int) -> None:
        self.table.selectRow(row)

    @Slot()
    def mark_good(self) -> None:
        """Record the selected inspection as good and add its image to the recipe's model (worker thread)."""
        record = self._current
        if record is None or self._store is None:
            return
        if self._loading:                    # its button waits for the picture; a call from code says so
            self.message.setText(f"Inspection {record.id}: its image is still being read; try again.")
            return
        recipe_path = self._recipe_lookup(record.recipe)
        if not self._confirm("Actually good?", self._good_question(record, recipe_path)):
            self.message.setText(f"Inspection {record.id}: nothing changed.")
            return
        user = self._user()
        try:
            self._store.add_feedback(record.id, "good", user=user, note="actually good (review screen)")
        except Exception as exc:
            self.message.setText(f"Feedback not recorded: {type(exc).__name__}: {exc}")
            return
        self._refresh_current()
        image = self._image
        if recipe_path is None or image is None or self._feedback_runner is None:
            why = "its recipe file is not known here" if recipe_path is None else "its image was not archived"
            self.message.setText(f"Recorded as good; the model is unchanged because {why}.")
            return
        good_feedback, note = self._good_feedback, f"inspection {record.id} marked good by {user}"

        def job() -> Generator[Progress, None, str]:
            yield Progress(done=0, total=1,
                           message=f"adding inspection {record.id} to recipe {record.recipe}")
            return good_feedback(recipe_path, image, note)

        if self._feedback_runner(job):
            self._pending_recipe = record.recipe
            self._pending_path = recipe_path
            self.good_button.setEnabled(False)
            self.message.setText(f"Recorded as good; adding it to recipe {record.recipe}'s model…")
        else:
            self.message.setText(
                "Recorded as good; the model was not updated: another job is running, try again.")

    def assign_class(self, defect_class: str, region_id: int | None = None) -> None:
        """Label the selected inspection's defect regions, or only ``region_id`` of them (and record the
        label as feedback)."""
        record = self._current
        if record is None or self._store is None or not defect_class:
            return
        user = self._user()
        ids = [r.id for r in record.regions]
        # as the region chooser numbers them (its position in the record), not the store's id
        where = "" if region_id is None else (f"region {ids.index(region_id) + 1}" if region_id in ids
                                              else f"region id {region_id}")
        try:
            if region_id is not None:
                self._store.set_defect_class(defect_class, user=user, region_id=region_id)
            elif record.regions:
                self._store.set_defect_class(defect_class, user=user, inspection_id=record.id)
            self._store.add_feedback(record.id, defect_class, user=user,
                                     note=f"class assigned on the review screen {where}".strip())
        except Exception as exc:
            self.message.setText(f"Class not recorded: {type(exc).__name__}: {exc}")
            return
        self.message.setText(f"Inspection {record.id}{' ' + where if where else ''}: class '{defect_class}' "
                             "recorded.")
        self._refresh_current()

    def _good_question(self, record: InspectionRecord, recipe_path: Path | None) -> str:
        """What "actually good" will do, named: the inspection, the version it creates, and the risk."""
        version = "a new model version"
        if recipe_path is not None:
            try:
                version = f"model {self._ops().next_version(recipe_path)}"
            except Exception as exc:            # no model yet, a broken file: the job will say why
                log.warning("next model version of %s unknown: %s", recipe_path, exc)
        lines = [f"Mark inspection #{record.id} ({record.verdict}) as good and add its image to recipe "
                 f"{record.recipe} as {version}?"]
        if record.regions:
            n = len(record.regions)
            score = "" if record.score is None else f", score {record.score:.3f}"
            lines.append(f"It was {record.verdict} with {n} defect region{'s' if n != 1 else ''}{score}: the "
                         "model will learn those marks as normal, and miss them on later parts.")
        lines.append(f"{version[0].upper()}{version[1:]} is not used on the line until you make it active; "
                     "Undo takes it back.")
        return "\n\n".join(lines)

    def _ops(self) -> ModelVersionOps:
        if self._versions is None:
            self._versions = ModelVersionOps.default()
        return self._versions

    def on_feedback_done(self, version: str) -> None:
        """The "actually good" model update finished (called by the main window)."""
        self.good_button.setEnabled(self._judged() and not self._loading)
        path = self._pending_path
        self._made = (path, str(version)) if path is not None else None
        for button in (self.activate_button, self.undo_button):
            button.setVisible(self._made is not None)
            button.setEnabled(self._made is not None)
        self.activate_button.setText(f"Make {version} active")
        self.undo_button.setText(f"Undo {version}")
        self.message.setText(f"Recipe {self._pending_recipe}: model {version} saved with the good image. It is "
                             f"not used on the line until you press 'Make {version} active'.")
        self._pending_recipe = None

    @Slot()
    def make_active(self) -> None:
        """Make the last "actually good" version the one the line uses (from the next start or switch)."""
        if self._made is None:
            return
        path, version = self._made
        if not self._confirm("Make active?", f"Use model {version} of {path.stem} on the line from the next "
                                             "start or recipe switch?"):
            return
        try:
            self._ops().make_active(path, version)
        except Exception as exc:
            self.message.setText(f"Model {version} not made active: {exc}")
            return
        self._on_model_changed(path)
        self.undo_button.setEnabled(False)
        self.activate_button.setEnabled(False)
        self.message.setText(f"Model {version} of {path.stem} is active: the station uses it from the next start "
                             "or recipe switch.")

    @Slot()
    def undo_good(self) -> None:
        """Take back the last "actually good" version (not active): the line never used it."""
        if self._made is None:
            return
        path, version = self._made
        try:
            self._ops().undo(path, version)
        except Exception as exc:
            self.message.setText(f"Model {version} not undone: {exc}")
            return
        self._made = None
        for button in (self.activate_button, self.undo_button):
            button.setVisible(False)
        self.message.setText(f"Model {version} of {path.stem} undone (its folder kept as {version}.undone-…); "
                             "the 'good' label stays in the inspection's feedback history.")

    def on_feedback_failed(self, text: str) -> None:
        self.good_button.setEnabled(self._judged() and not self._loading)
        self.message.setText(f"Recorded as good, but the model update failed: {text}")
        self._pending_recipe = None

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.shutdown()                    # no read outlives the screen (a window of its own, as in tests)
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Cancel a running batch review and join its thread and the reads under way."""
        self.batch.shutdown()
        self.queries.shutdown()
        self.pictures.shutdown()

    # ----------------------------------------------------------------------------- private
    def _user(self) -> str:
        return self.user_edit.text().strip() or "operator"

    def _refresh_recipes(self, rows: list[YieldRow]) -> None:
        names = sorted({row.key for row in rows})
        known = {self.recipe_box.itemData(i) for i in range(1, self.recipe_box.count())}
        self.recipe_box.blockSignals(True)
        for name in names:
            if name not in known:
                self.recipe_box.addItem(name, name)
        self.recipe_box.blockSignals(False)

    def _fill_table(self, thumbnails: Sequence[np.ndarray | None]) -> None:
        table = self.table
        table.blockSignals(True)
        table.setUpdatesEnabled(False)
        header = table.horizontalHeader()
        # ResizeToContents re-measures every row at each setItem: O(rows²), seconds at 200 rows once shown
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        first = table.rowCount() == 0
        table.clearContents()
        table.setRowCount(len(self._records))
        for row, record in enumerate(self._records):
            thumb = QTableWidgetItem()
            small = thumbnails[row] if row < len(thumbnails) else None
            if small is not None:
                thumb.setIcon(QIcon(QPixmap.fromImage(bgr_to_qimage(small))))
            table.setItem(row, 0, thumb)
            when = datetime.fromtimestamp(record.time).strftime("%Y-%m-%d %H:%M:%S")
            score = "—" if record.score is None else f"{record.score:.3f}"
            values = [when, record.recipe, str(record.verdict), score, str(len(record.regions)),
                      record.label or ""]
            for col, value in enumerate(values, 1):
                item = QTableWidgetItem(value)
                if col == 3:
                    background, text = VERDICT_COLOURS.get(record.verdict, VERDICT_COLOURS["IDLE"])
                    item.setBackground(QColor(background))
                    item.setForeground(QColor(text))
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                table.setItem(row, col, item)
        if first:
            table.resizeColumnsToContents()      # once (it measures every cell), then the columns stay
        header.setStretchLastSection(True)
        table.setUpdatesEnabled(True)
        table.blockSignals(False)

    def _refresh_current(self) -> None:
        if self._current is None or self._store is None:
            return
        record = self._store.get_inspection(self._current.id)
        for row, listed in enumerate(self._records):
            if listed.id == record.id:
                self._records[row] = record
                item = self.table.item(row, 6)
                if item is not None:
                    item.setText(record.label or "")
        self._show(record, reload_image=False)

    @Slot()
    def _on_selection_changed(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        self._show(self._records[min(rows)] if rows else None)

    def _judged(self) -> bool:
        """The selected inspection was judged: an ERROR frame (unreadable, or the model failed) has no verdict to
        call wrong and no region to label."""
        return self._current is not None and self._current.verdict is not Verdict.ERROR

    def _show(self, record: InspectionRecord | None, *, reload_image: bool = True) -> None:
        self._current = record
        self._set_actions_enabled(self._judged())
        if record is None:
            self._image = None
            self._loading = False
            self.view.set_placeholder(PICK_ONE)
            self.view.show_result(None)
            self.details.setText("")
            return
        if reload_image:            # read off the GUI thread; the previous picture stays until it comes
            self._image = self._overlay = None
            self._loading = True
            self.pictures.submit(read_record_images(record), name="review-picture")
        elif not self._loading:     # a label given while the picture is read: it is drawn with it when it comes
            self._show_image()
        if self._loading:
            self.good_button.setEnabled(False)          # "actually good" adds the picture: wait for it
        self._show_details(record)
        chosen = self.class_box.currentText()         # a reviewer labelling a run of one kind keeps it chosen
        self.class_box.clear()
        self.class_box.addItems(list(self._defect_classes(record.recipe)))
        if self.class_box.findText(chosen) >= 0:
            self.class_box.setCurrentIndex(self.class_box.findText(chosen))
        keep = self.region_box.currentData()          # the same record shown again: its choice stays
        self.region_box.clear()
        self.region_box.addItem("all regions", None)
        for n, r in enumerate(record.regions, 1):     # as drawn: the size is the box's label on the image
            self.region_box.addItem(f"region {n}: {region_size(r.area_px, r.area_mm2)} at ({r.x}, {r.y})"
                                    + (f", {r.defect_class}" if r.defect_class else ""), r.id)
        if isinstance(keep, int) and self.region_box.findData(keep) >= 0:
            self.region_box.setCurrentIndex(self.region_box.findData(keep))

    def _show_details(self, record: InspectionRecord) -> None:
        when = datetime.fromtimestamp(record.time).strftime("%Y-%m-%d %H:%M:%S")
        classes = sorted({r.defect_class for r in record.regions if r.defect_class})
        score = "—" if record.score is None else f"{record.score:.4f}"
        lines = [f"#{record.id}  {when}  ·  {record.recipe} {record.model_version}  ·  "
                 f"{record.verdict}  score {score}",
                 f"source {short_source(record.source)}  ·  {frame_origin(record.source, record.frame_id, record.path)}"
                 + (f"  ·  lot {record.lot}" if record.lot else ""),
                 f"{len(record.regions)} region(s)" + (f": {', '.join(classes)}" if classes else "")]
        if record.feedback:
            last = record.feedback[-1]
            lines.append(f"label '{last.label}' by {last.user}")
        if record.error:
            lines.append(f"error: {record.error}")
        if self._loading:
            lines.append("reading the image…")
        elif self._image is None and record.image_path:
            lines.append(f"image {record.image_path} is gone (removed by the archive's size cap, or never "
                         f"written: the archive pauses when the disk is full)")
        elif self._image is None and record.verdict is Verdict.ERROR:
            lines.append("no image: there was none to keep (the file could not be read), or archiving was off")
        elif self._image is None and record.verdict is Verdict.PASS:
            lines.append("image not archived (a PASS frame is kept only where the recipe's archive.save_pass_every "
                         "asks)")
        elif self._image is None:
            lines.append("image not archived (archiving was off for this run, or paused: disk full, or behind)")
        self.details.setText("\n".join(lines))

    def _on_picture_ready(self, request: int, images: tuple[np.ndarray | None, np.ndarray | None]) -> None:
        if not self.pictures.is_latest(request) or self._current is None:
            return                                  # another inspection was selected meanwhile
        self._image, self._overlay = images
        self._loading = False
        self._show_image()
        self._show_details(self._current)
        self.good_button.setEnabled(self._judged())
        self.shown.emit()

    def _on_picture_failed(self, request: int, exc: BaseException) -> None:
        if self.pictures.is_latest(request) and self._current is not None:
            self._on_picture_ready(request, (None, None))
            self.message.setText(f"Image not read: {type(exc).__name__}: {exc}")

    def _show_image(self) -> None:
        record = self._current
        if record is None:
            return
        overlay = self._overlay if self.overlay_check.isChecked() else None
        image = overlay if overlay is not None else self._image
        if image is None:     # not "Select an inspection" beside the one selected
            self.view.set_placeholder(f"No image of inspection #{record.id}: its details below say why")
            self.view.show_result(None)
            return
        regions = tuple(
            DefectRegion(x=r.x, y=r.y, width=r.width, height=r.height, area_px=r.area_px,
                         area_mm2=r.area_mm2, max_score=r.max_score or 0.0, mean_score=r.mean_score or 0.0,
                         defect_class=r.defect_class)
            for r in record.regions
        )
        self.view.show_result(InspectionResult(
            frame_id=record.frame_id, timestamp=record.time, source=record.source, recipe=record.recipe,
            model_version=record.model_version, verdict=record.verdict, score=record.score, regions=regions,
            image_bgr=image,
        ))

    def _set_actions_enabled(self, on: bool) -> None:
        for widget in (self.good_button, self.class_button, self.class_box, self.region_box):
            widget.setEnabled(on)

    @Slot(bool)
    def _on_overlay_toggled(self, on: bool) -> None:
        self._show_image()

    @Slot()
    def _on_assign_clicked(self) -> None:
        region = self.region_box.currentData()
        self.assign_class(self.class_box.currentText(), region if isinstance(region, int) else None)

    @Slot(int)
    def _on_filter_changed(self, index: int) -> None:
        self.refresh()


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:   # no login name in some containers and services
        return "operator"
