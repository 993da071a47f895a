"""Teaching screen (engineers): a guided flow from good images to a saved, checked model version.

Steps (a ``QWizard`` embedded in the Teach tab):

1. Recipe: choose one, or create a new one from it.
2. Images: a folder of good images, or N frames captured from the live source; optionally a folder
   of known-bad images; how many good images to hold out for the check.
3. ROI: draw the region of interest on a frame (rubber band), or keep the whole frame.
4. Train: teaching runs in a worker thread with a progress bar and can be cancelled; then the
   new model scores the held-out good and the known-bad images.
5. Check: the calibration report, held-out good and known-bad images side by side with heatmaps,
   and review / fail sliders that re-score instantly from the cached scores (no re-inference).
6. Save: thresholds changed by hand are saved as a new model version.

The engine calls go through `TeachEngine` (``inspector.recipe`` / ``inspector.teach`` /
``inspector.station`` by default), so tests can stand in a cheap one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal, Slot
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRubberBand,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from inspector.results import InspectionResult, Progress, Verdict, VerdictCounts, verdict_for
from ui.live_view import VERDICT_COLOURS, HeatmapView
from ui.workers import JobRunner

__all__ = ["RoiEditor", "TeachEngine", "TeachOutcome", "TeachPage", "TeachWizard"]

log = logging.getLogger(__name__)

SLIDER_STEPS = 1000          # threshold slider resolution: 0.1 % of the score range
MAX_CHECK_IMAGES = 8         # images shown per side on the check page (more do not fit and cost inference)


@dataclass(frozen=True, kw_only=True)
class TeachEngine:
    """The engine calls the wizard makes (all run on its worker thread except `load_recipe`/`image_files`)."""

    load_recipe: Callable[[Path], Any]
    save_recipe: Callable[[Any, Path], Any]                 # kept for callers; the wizard edits in place
    edit_recipe_file: Callable[..., Any]                    # inspector.recipe.edit_recipe_file (on Save)
    teach: Callable[..., Generator[Progress, None, Any]]     # inspector.teach.teach
    save_thresholds: Callable[..., str]                     # inspector.teach.save_thresholds
    load_station: Callable[[Any, str], Any]                 # (recipe, version) -> has .inspect_image()
    load_image: Callable[[Path], np.ndarray]                # -> (H, W, 3) uint8 BGR
    image_files: Callable[[Path], list[Path]]

    @classmethod
    def default(cls) -> TeachEngine:
        """The real engine: ``inspector.recipe``, ``inspector.teach``, ``inspector.station``."""
        from inspector.capture import image_files, load_image
        from inspector.recipe import edit_recipe_file, load_recipe, save_recipe
        from inspector.station import Station
        from inspector.teach import save_thresholds, teach

        return cls(
            load_recipe=load_recipe, save_recipe=save_recipe, edit_recipe_file=edit_recipe_file, teach=teach,
            save_thresholds=save_thresholds,
            load_station=lambda recipe, version: Station.load(recipe, version=version),
            load_image=load_image, image_files=image_files,
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class TeachOutcome:
    """What the train step hands to the check step: the report and the new model's results."""

    recipe: Any                                    # the Recipe taught (with the ROI drawn)
    report: Any                                    # inspector.teach.TeachReport
    held_out: tuple[InspectionResult, ...] = ()    # held-out good images scored by the new model
    known_bad: tuple[InspectionResult, ...] = ()   # known-bad images scored by the new model
    good_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # (N,) LOO + held-out
    bad_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))   # (M,)


class RoiEditor(QWidget):
    """A frame on which the engineer drags a rectangle (rubber band) to set the ROI, in frame pixels."""

    roi_changed = Signal(object)     # (x, y, w, h) in frame pixels, or None for the whole frame

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = HeatmapView(self)
        self.view.set_placeholder("No frame: choose good images first")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)
        self._band = QRubberBand(QRubberBand.Shape.Rectangle, self.view)
        self._origin: QPoint | None = None
        self._image_size: tuple[int, int] | None = None     # (H, W)
        self._roi: tuple[int, int, int, int] | None = None
        self.view.installEventFilter(self)                  # last: the filter reads the fields above

    @property
    def roi(self) -> tuple[int, int, int, int] | None:
        return self._roi

    def set_image(self, image_bgr: np.ndarray) -> None:
        """Show a (H, W, 3) uint8 BGR frame to draw on."""
        self._image_size = image_bgr.shape[:2]
        self.view.show_image(image_bgr)
        self._update_band()

    def set_roi(self, roi: tuple[int, int, int, int] | None) -> None:
        self._roi = roi
        self._update_band()
        self.roi_changed.emit(roi)

    def _to_image(self, point: QPoint) -> tuple[int, int]:
        self.view.repaint()
        target = self.view.image_rect()
        height, width = self._image_size or (1, 1)
        x = (point.x() - target.x()) * width / max(target.width(), 1)
        y = (point.y() - target.y()) * height / max(target.height(), 1)
        return int(min(max(x, 0), width)), int(min(max(y, 0), height))

    def _update_band(self) -> None:
        if self._roi is None or self._image_size is None:
            self._band.hide()
            return
        target = self.view.image_rect()
        height, width = self._image_size
        sx, sy = target.width() / width, target.height() / height
        x, y, w, h = self._roi
        self._band.setGeometry(
            QRect(int(target.x() + x * sx), int(target.y() + y * sy), int(w * sx), int(h * sy)))
        self._band.show()

    def drag(self, start: QPoint, end: QPoint) -> None:
        """Set the ROI from a drag between two points in view coordinates (what the mouse does)."""
        x0, y0 = self._to_image(start)
        x1, y1 = self._to_image(end)
        x, y, w, h = min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0)
        self.set_roi((x, y, w, h) if w >= 4 and h >= 4 else None)

    def eventFilter(self, watched: Any, event: Any) -> bool:  # noqa: N802 (Qt name)
        if watched is self.view and self._image_size is not None and isinstance(event, QMouseEvent):
            kind = event.type()
            pos = event.position().toPoint()
            if kind == QMouseEvent.Type.MouseButtonPress and event.button() == Qt.MouseButton.LeftButton:
                self._origin = pos
                self._band.setGeometry(QRect(pos, QSize()))
                self._band.show()
                return True
            if kind == QMouseEvent.Type.MouseMove and self._origin is not None:
                self._band.setGeometry(QRect(self._origin, pos).normalized())
                return True
            if kind == QMouseEvent.Type.MouseButtonRelease and self._origin is not None:
                origin, self._origin = self._origin, None
                self.drag(origin, pos)
                return True
        if watched is self.view and event.type() == event.Type.Resize:
            self._update_band()
        return super().eventFilter(watched, event)


# --------------------------------------------------------------------------------------------- pages
class RecipePage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("1 · Recipe")
        self.setSubTitle("Choose the product's recipe to teach, or create a new recipe from it.")
        self.recipe_box = QComboBox()
        for path in wizard.recipes:
            self.recipe_box.addItem(path.stem, str(path))
        self.browse = QPushButton("Other recipe file…")
        self.browse.clicked.connect(self._on_browse)
        self.new_check = QCheckBox("Create a new recipe from it, named:")
        self.new_name = QLineEdit()
        self.new_name.setPlaceholderText("e.g. bracket_b (letters, digits, _ and -)")
        self.new_name.setEnabled(False)
        self.new_check.toggled.connect(self.new_name.setEnabled)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #ff5252; font-weight: bold;")
        row = QHBoxLayout()
        row.addWidget(self.recipe_box, 1)
        row.addWidget(self.browse)
        form = QFormLayout(self)
        form.addRow("Recipe", row)
        form.addRow(self.new_check, self.new_name)
        form.addRow(self.error)

    @Slot()
    def _on_browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Recipe file", "", "Recipes (*.yaml *.yml)")
        if path:
            self.recipe_box.addItem(Path(path).stem, path)
            self.recipe_box.setCurrentIndex(self.recipe_box.count() - 1)

    def validatePage(self) -> bool:  # noqa: N802 (Qt name)
        data = self.recipe_box.currentData()
        if not data:
            self.error.setText("Choose a recipe file first.")
            return False
        try:
            path = Path(data)
            recipe = self.w.engine.load_recipe(path)
            if self.new_check.isChecked():
                name = self.new_name.text().strip()
                if not name:
                    self.error.setText("Type a name for the new recipe.")
                    return False
                target = path.with_name(f"{name}.yaml")
                if target.exists():
                    self.error.setText(
                        f"{target.name} already exists: choose another name, or teach that recipe.")
                    return False
                # written on Save only (step 6): Cancel before that leaves no file behind
                recipe = dataclasses.replace(recipe, name=name, roi=None, path=target)
                self.w.copied_from = path
                path = target
            else:
                self.w.copied_from = None
        except Exception as exc:
            self.error.setText(f"{type(exc).__name__}: {exc}")
            return False
        self.error.setText("")
        self.w.recipe_path, self.w.recipe = path, recipe
        rect = getattr(getattr(recipe, "roi", None), "rect", None)
        self.w.file_roi = tuple(rect) if rect and self.w.copied_from is None else None
        return True


class ImagesPage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("2 · Good images")
        self.setSubTitle("Pick a folder of good parts (10–50 is plenty), or capture frames from the live "
                         "source. "
                         "Known-bad images are optional; they help to check and calibrate.")
        self.good_edit = QLineEdit()
        self.good_edit.setPlaceholderText("folder of good images")
        good_browse = QPushButton("Browse…")
        good_browse.clicked.connect(self._on_browse_good)
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText('camera "0", rtsp://…, video or folder')
        self.capture_count = QSpinBox()
        self.capture_count.setRange(2, 500)
        self.capture_count.setValue(20)
        self.capture_button = QPushButton("Capture")
        self.capture_button.clicked.connect(self._on_capture)
        self.bad_edit = QLineEdit()
        self.bad_edit.setPlaceholderText("optional: folder of known-bad images")
        bad_browse = QPushButton("Browse…")
        bad_browse.clicked.connect(self._on_browse_bad)
        self.holdout = QSpinBox()
        self.holdout.setRange(0, 100)
        self.holdout.setValue(3)
        self.holdout.setSuffix(" images")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)

        good_row = QHBoxLayout()
        good_row.addWidget(self.good_edit, 1)
        good_row.addWidget(good_browse)
        capture_row = QHBoxLayout()
        capture_row.addWidget(self.source_edit, 1)
        capture_row.addWidget(self.capture_count)
        capture_row.addWidget(self.capture_button)
        bad_row = QHBoxLayout()
        bad_row.addWidget(self.bad_edit, 1)
        bad_row.addWidget(bad_browse)
        form = QFormLayout(self)
        form.addRow("Good images", good_row)
        form.addRow("…or capture", capture_row)
        form.addRow("Known-bad images", bad_row)
        form.addRow("Hold out for the check", self.holdout)
        form.addRow(self.summary)
        wizard.jobs.finished.connect(self._on_job_finished)

    def initializePage(self) -> None:  # noqa: N802 (Qt name)
        if not self.source_edit.text() and self.w.source_text:
            self.source_edit.setText(self.w.source_text)

    @Slot()
    def _on_browse_good(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of good images")
        if folder:
            self.good_edit.setText(folder)

    @Slot()
    def _on_browse_bad(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of known-bad images")
        if folder:
            self.bad_edit.setText(folder)

    @Slot()
    def _on_capture(self) -> None:
        text, count = self.source_edit.text().strip(), self.capture_count.value()
        if not text or self.w.open_source is None or self.w.jobs.running:
            self.summary.setText("Type a source to capture from (camera index, URL, video or folder).")
            return
        open_source = self.w.open_source

        def job() -> Generator[Progress, None, list[np.ndarray]]:
            frames: list[np.ndarray] = []
            source = open_source(text)
            source.open()
            try:
                while len(frames) < count:
                    frame = source.read()
                    if frame is None:
                        break
                    frames.append(frame.image_bgr)
                    yield Progress(done=len(frames), total=count,
                                   message=f"captured {len(frames)} of {count}")
            finally:
                source.close()
            return frames

        self.capture_button.setEnabled(False)
        self.summary.setText("Capturing…")
        self.w.jobs.start(job, name="capture")

    @Slot(object)
    def _on_job_finished(self, value: Any) -> None:
        if self.w.jobs.name != "capture":
            return
        self.capture_button.setEnabled(True)
        self.w.captured = list(value)
        self.good_edit.clear()
        self.summary.setText(f"Captured {len(self.w.captured)} frames from {self.source_edit.text()}.")
        self.completeChanged.emit()

    def validatePage(self) -> bool:  # noqa: N802 (Qt name)
        good_text, bad_text = self.good_edit.text().strip(), self.bad_edit.text().strip()
        engine = self.w.engine
        try:
            if good_text:
                folder = Path(good_text)
                if not folder.is_dir():
                    self.summary.setText(f"{folder}: not a folder; pick the folder holding the good images.")
                    return False
                files = engine.image_files(folder)
                if len(files) < 2:
                    self.summary.setText(f"{folder}: {len(files)} image(s) found; teaching needs at least 2.")
                    return False
                self.w.good_files, self.w.captured = files, []
                first = engine.load_image(files[0])
            elif self.w.captured:
                self.w.good_files = []
                first = self.w.captured[0]
            else:
                self.summary.setText("Choose a folder of good images, or capture frames first.")
                return False
            bad_files: list[Path] = []
            if bad_text:
                if not Path(bad_text).is_dir():
                    self.summary.setText(f"{bad_text}: not a folder of known-bad images.")
                    return False
                bad_files = engine.image_files(Path(bad_text))
        except Exception as exc:
            self.summary.setText(f"{type(exc).__name__}: {exc}")
            return False
        self.w.bad_folder = Path(bad_text) if bad_text else None
        self.w.bad_files = bad_files
        total = len(self.w.good_files) or len(self.w.captured)
        self.w.holdout = min(self.holdout.value(), max(total - 2, 0))
        self.w.first_frame = first
        return True


class RoiPage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("3 · Region of interest")
        self.setSubTitle("Drag a rectangle around the part. Only this region is inspected. "
                         "Whole frame: no ROI.")
        self.editor = RoiEditor()
        self.editor.setMinimumHeight(260)
        self.label = QLabel("")
        whole = QPushButton("Whole frame")
        whole.clicked.connect(self._on_whole)
        self.editor.roi_changed.connect(self._on_roi_changed)
        row = QHBoxLayout()
        row.addWidget(self.label, 1)
        row.addWidget(whole)
        layout = QVBoxLayout(self)
        layout.addWidget(self.editor, 1)
        layout.addLayout(row)

    def initializePage(self) -> None:  # noqa: N802 (Qt name)
        if self.w.first_frame is not None:
            self.editor.set_image(self.w.first_frame)
        roi = getattr(self.w.recipe, "roi", None)
        rect = getattr(roi, "rect", None) if roi is not None else None
        self.editor.set_roi(tuple(rect) if rect else None)

    @Slot()
    def _on_whole(self) -> None:
        self.editor.set_roi(None)

    @Slot(object)
    def _on_roi_changed(self, roi: tuple[int, int, int, int] | None) -> None:
        self.label.setText("ROI: whole frame" if roi is None else "ROI: x {}, y {}, {} × {} px".format(*roi))

    def validatePage(self) -> bool:  # noqa: N802 (Qt name)
        self.w.roi = self.editor.roi
        return True


class TrainPage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("4 · Train")
        self.setSubTitle("The model learns the good parts, calibrates its thresholds and is checked. "
                         "Cancel stops at the next step; nothing is saved then.")
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.cancel_button = QPushButton("Cancel training")
        self.cancel_button.clicked.connect(self._on_cancel)
        layout = QVBoxLayout(self)
        layout.addWidget(self.bar)
        layout.addWidget(self.message)
        layout.addWidget(self.log, 1)
        layout.addWidget(self.cancel_button, 0, Qt.AlignmentFlag.AlignRight)
        wizard.jobs.progress.connect(self._on_progress)
        wizard.jobs.finished.connect(self._on_finished)
        wizard.jobs.errored.connect(self._on_errored)
        wizard.jobs.cancelled.connect(self._on_cancelled)

    def initializePage(self) -> None:  # noqa: N802 (Qt name)
        self.w.outcome = None
        self.log.clear()
        self.bar.setRange(0, 0)
        self.message.setText("Starting…")
        self.cancel_button.setEnabled(True)
        self.w.set_back_allowed(False)             # Back during training would leave a job behind the page
        self.w.jobs.start(self.w.train_job(), name="train")

    def cleanupPage(self) -> None:  # noqa: N802 (Qt name)  (Back pressed)
        if self.w.jobs.running and self.w.jobs.name == "train":
            self.w.jobs.cancel()

    def isComplete(self) -> bool:  # noqa: N802 (Qt name)
        return self.w.outcome is not None

    @Slot()
    def _on_cancel(self) -> None:
        self.w.jobs.cancel()
        self.message.setText("Cancelling at the next step…")

    @Slot(object)
    def _on_progress(self, progress: Progress) -> None:
        if self.w.jobs.name != "train":
            return
        if progress.total:
            self.bar.setRange(0, progress.total)
            self.bar.setValue(progress.done)
        else:
            self.bar.setRange(0, 0)
        if progress.message != self.message.text():
            self.log.appendPlainText(progress.message)
        self.message.setText(progress.message)

    @Slot(object)
    def _on_finished(self, value: Any) -> None:
        if self.w.jobs.name != "train":
            return
        self.w.outcome = value
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        self.message.setText(f"Done: model {value.report.version} trained. Next: check it; Save writes "
                             "the recipe.")
        self.cancel_button.setEnabled(False)
        self.w.set_back_allowed(True)
        self.completeChanged.emit()

    @Slot(str)
    def _on_errored(self, text: str) -> None:
        if self.w.jobs.name != "train":
            return
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.message.setText(f"Training failed: {text}")
        self.log.appendPlainText(f"Training failed: {text}")
        self.cancel_button.setEnabled(False)
        self.w.set_back_allowed(True)

    @Slot()
    def _on_cancelled(self) -> None:
        if self.w.jobs.name != "train":
            return
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.message.setText("Training cancelled; nothing was saved. Back to change the images, or close.")
        self.cancel_button.setEnabled(False)
        self.w.set_back_allowed(True)


class CheckTile(QWidget):
    """One checked image: the frame with its heatmap and the verdict under the current thresholds."""

    def __init__(self, result: InspectionResult, heat_range: tuple[float, float]) -> None:
        super().__init__()
        self.result = result
        self.view = HeatmapView()
        self.view.setMinimumSize(120, 100)
        self.view.show_labels = False
        self.view.set_heat_range(*heat_range)
        self.view.show_result(result)
        self.label = QLabel("")
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.label)

    def apply(self, review: float, fail: float) -> Verdict:
        verdict = verdict_for(self.result.score, review, fail)
        background, text = VERDICT_COLOURS[verdict]
        score = "—" if self.result.score is None else f"{self.result.score:.3f}"
        self.label.setText(f"{verdict} {score}")
        self.label.setStyleSheet(f"background: {background}; color: {text}; font-weight: bold; padding: 2px;")
        return verdict


CALIBRATION_NOTE = ("measured on the known-bad images that set the thresholds, so optimistic; "
                    "check parts the model has not seen")


def _label_measured_on_calibration(line: str) -> str:
    """Say on which images a defect figure (AUROC, F1) was measured: the ones that set the thresholds."""
    if line.startswith("defects:") and ("AUROC" in line or "F1" in line):
        return f"{line} ({CALIBRATION_NOTE})"
    return line


class CheckPage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("5 · Check and adjust")
        self.setSubTitle("Held-out good parts (left) and known-bad parts (right), scored by the new model. "
                         "Move the thresholds: counts update at once from the cached scores.")
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.good_grid = QGridLayout()
        self.bad_grid = QGridLayout()
        self.review_slider = QSlider(Qt.Orientation.Horizontal)
        self.fail_slider = QSlider(Qt.Orientation.Horizontal)
        for slider in (self.review_slider, self.fail_slider):
            slider.setRange(0, SLIDER_STEPS)
            slider.valueChanged.connect(self._on_slider_moved)
        self.review_label = QLabel("")
        self.fail_label = QLabel("")
        self.counts = QTableWidget(2, 3)
        self.counts.setHorizontalHeaderLabels(["PASS", "REVIEW", "FAIL"])
        self.counts.setVerticalHeaderLabels(["Good set", "Known-bad set"])
        self.counts.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.counts.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.counts.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.counts.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.tiles: list[CheckTile] = []
        self._scale = 1.0

        sides = QHBoxLayout()
        for title, grid in (("Held-out good", self.good_grid), ("Known-bad", self.bad_grid)):
            box = QVBoxLayout()
            label = QLabel(title)
            label.setStyleSheet("font-weight: bold;")
            box.addWidget(label)
            box.addLayout(grid, 1)
            sides.addLayout(box, 1)
        sliders = QFormLayout()
        sliders.addRow(self.review_label, self.review_slider)
        sliders.addRow(self.fail_label, self.fail_slider)
        layout = QVBoxLayout(self)
        layout.addWidget(self.report)
        layout.addLayout(sides, 1)
        layout.addLayout(sliders)
        layout.addWidget(self.counts)

    def initializePage(self) -> None:  # noqa: N802 (Qt name)
        outcome: TeachOutcome = self.w.outcome
        report = outcome.report
        lines = report.summary_lines() if hasattr(report, "summary_lines") else [str(report)]
        lines = [_label_measured_on_calibration(line) for line in lines]
        self.report.setPlainText("\n".join(lines))
        self._fit_text_heights(len(lines))
        all_scores = np.concatenate([outcome.good_scores, outcome.bad_scores,
                                     [report.thresholds.fail, report.thresholds.review]])
        self._scale = float(np.nanmax(all_scores)) * 1.5 if all_scores.size else 1.0
        self._scale = self._scale if self._scale > 0 else 1.0
        for tile in self.tiles:
            tile.setParent(None)
            tile.deleteLater()
        self.tiles = []
        pixel = float(report.thresholds.pixel)
        heat = (0.5 * pixel, 1.5 * pixel) if pixel > 0 else (0.0, 1.0)
        for grid, results in ((self.good_grid, outcome.held_out), (self.bad_grid, outcome.known_bad)):
            for index, result in enumerate(results[:MAX_CHECK_IMAGES]):
                tile = CheckTile(result, heat)
                grid.addWidget(tile, index // 2, index % 2)
                self.tiles.append(tile)
        self.set_thresholds(report.thresholds.review, report.thresholds.fail)

    # thresholds <-> slider positions (linear over 0 .. 1.5 x the highest score seen)
    def _fit_text_heights(self, report_lines: int) -> None:
        """Size the report box to its lines (up to 8, then it scrolls) and the counts table to its rows."""
        spacing = self.report.fontMetrics().lineSpacing()
        self.report.setFixedHeight(spacing * (min(max(report_lines, 2), 8) + 1) + 8)
        self.counts.resizeRowsToContents()
        height = self.counts.horizontalHeader().sizeHint().height() + 2 * self.counts.frameWidth()
        height += sum(self.counts.rowHeight(row) for row in range(self.counts.rowCount()))
        self.counts.setFixedHeight(height)

    def _to_slider(self, value: float) -> int:
        return int(round(min(max(value / self._scale, 0.0), 1.0) * SLIDER_STEPS))

    def _from_slider(self, position: int) -> float:
        return position / SLIDER_STEPS * self._scale

    def set_thresholds(self, review: float, fail: float) -> None:
        """Move the sliders (and re-score) to these thresholds."""
        for slider, value in ((self.review_slider, review), (self.fail_slider, fail)):
            slider.blockSignals(True)
            slider.setValue(self._to_slider(value))
            slider.blockSignals(False)
        self.w.review, self.w.fail = float(review), float(fail)
        self._rescore()

    @Slot(int)
    def _on_slider_moved(self, position: int) -> None:
        review = self._from_slider(self.review_slider.value())
        fail = self._from_slider(self.fail_slider.value())
        if self.sender() is self.review_slider and review > fail:
            self.fail_slider.blockSignals(True)
            self.fail_slider.setValue(self.review_slider.value())
            self.fail_slider.blockSignals(False)
            fail = review
        elif self.sender() is self.fail_slider and fail < review:
            self.review_slider.blockSignals(True)
            self.review_slider.setValue(self.fail_slider.value())
            self.review_slider.blockSignals(False)
            review = fail
        self.w.review, self.w.fail = review, fail
        self._rescore()

    def _rescore(self) -> None:
        outcome: TeachOutcome = self.w.outcome
        review, fail = self.w.review, self.w.fail
        self.review_label.setText(f"Review ≥ {review:.4f}")
        self.fail_label.setText(f"Fail ≥ {fail:.4f}")
        for row, scores in enumerate((outcome.good_scores, outcome.bad_scores)):
            counts = VerdictCounts.from_scores(scores, review, fail)
            for col, verdict in enumerate((Verdict.PASS, Verdict.REVIEW, Verdict.FAIL)):
                item = QTableWidgetItem(str(counts.count(verdict)))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.counts.setItem(row, col, item)
        for tile in self.tiles:
            tile.apply(review, fail)

    def count(self, row: str, verdict: Verdict) -> int:
        """Shown count for "good" or "bad" and a verdict (for tests)."""
        col = (Verdict.PASS, Verdict.REVIEW, Verdict.FAIL).index(verdict)
        item = self.counts.item(0 if row == "good" else 1, col)
        return int(item.text()) if item is not None else 0


class SavePage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("6 · Save")
        self.setSubTitle("Save writes the recipe file (a new recipe, or the ROI drawn; comments kept) and "
                         "thresholds changed by hand as a new model version; the taught version stays.")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("font-size: 15px;")
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self.save)
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addWidget(self.save_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addStretch(1)
        wizard.jobs.finished.connect(self._on_saved)
        wizard.jobs.errored.connect(self._on_failed)
        self._saved_version: str | None = None

    def initializePage(self) -> None:  # noqa: N802 (Qt name)
        outcome: TeachOutcome = self.w.outcome
        t = outcome.report.thresholds
        changed = self.w.thresholds_changed()
        file_pending = self.w.recipe_file_pending()
        self._saved_version = None if changed or file_pending else outcome.report.version
        self.save_button.setEnabled(changed or file_pending)
        todo = []
        if file_pending and self.w.recipe_path is not None:
            what = "the new recipe" if self.w.copied_from is not None else "the ROI drawn"
            todo.append(f"writes {what} into {self.w.recipe_path.name}")
        if changed:
            todo.append(f"saves review {self.w.review:.4f} / fail {self.w.fail:.4f} as a new model version "
                        f"(model {outcome.report.version} keeps {t.review:.4f} / {t.fail:.4f})")
        if todo:
            self.message.setText("Save " + "; and ".join(todo) + ". Closing without Save writes no recipe.")
        else:
            self.message.setText(f"Model {outcome.report.version} of recipe {outcome.report.recipe} is "
                                 "saved with its calibrated thresholds. Finish, then select the recipe on "
                                 "the station.")
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802 (Qt name)
        return self._saved_version is not None

    @Slot()
    def save(self) -> None:
        outcome: TeachOutcome = self.w.outcome
        engine, review, fail = self.w.engine, self.w.review, self.w.fail
        recipe, version = outcome.recipe, outcome.report.version
        changed = self.w.thresholds_changed()
        write = self.w.recipe_file_pending()
        target, source = self.w.recipe_path, self.w.copied_from or self.w.recipe_path
        rect = getattr(getattr(recipe, "roi", None), "rect", None)
        name = recipe.name if self.w.copied_from is not None else None

        def job() -> Generator[Progress, None, str]:
            if write and target is not None and source is not None:
                yield Progress(done=0, total=2, message=f"writing {target.name}")
                engine.edit_recipe_file(source, target, name=name, roi=tuple(rect) if rect else None)
            if not changed:
                return str(version)
            yield Progress(done=1, total=2, message="saving thresholds")
            return engine.save_thresholds(recipe, version, review=review, fail=fail)

        self.save_button.setEnabled(False)
        self.message.setText("Saving…")
        self.w.jobs.start(job, name="save")

    @Slot(object)
    def _on_saved(self, version: Any) -> None:
        if self.w.jobs.name != "save":
            return
        self._saved_version = str(version)
        self.w.copied_from = None                  # written: a second Save edits the file in place
        self.w.file_roi = self.w.taught_roi()
        self.message.setText(f"Saved: recipe {self.w.recipe_path.name if self.w.recipe_path else ''}, model "
                             f"{version} (review {self.w.review:.4f}, fail {self.w.fail:.4f}). Finish, then "
                             "select the recipe on the station.")
        self.completeChanged.emit()

    @Slot(str)
    def _on_failed(self, text: str) -> None:
        if self.w.jobs.name == "save":
            self.message.setText(f"Saving failed: {text}")
            self.save_button.setEnabled(True)

    @property
    def saved_version(self) -> str | None:
        return self._saved_version


# -------------------------------------------------------------------------------------------- wizard
class TeachWizard(QWizard):
    """The teaching flow; emits ``taught(recipe_path, version)`` when finished with a saved version."""

    taught = Signal(object, str)

    def __init__(self, *, recipes: Sequence[Path] = (), engine: TeachEngine | None = None,
                 open_source: Callable[[str], Any] | None = None, source_text: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Teach a recipe")
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.setOption(QWizard.WizardOption.NoCancelButton, True)
        self.recipes = list(recipes)
        self._engine = engine
        self.open_source = open_source
        self.source_text = source_text
        self.jobs = JobRunner(self)
        # what the pages fill in, in order
        self.recipe_path: Path | None = None
        self.recipe: Any = None
        self.good_files: list[Path] = []
        self.captured: list[np.ndarray] = []
        self.bad_folder: Path | None = None
        self.bad_files: list[Path] = []
        self.holdout = 0
        self.first_frame: np.ndarray | None = None
        self.roi: tuple[int, int, int, int] | None = None
        self.outcome: TeachOutcome | None = None
        self.copied_from: Path | None = None   # a new recipe is copied from this file on Save
        self.file_roi: tuple[int, int, int, int] | None = None   # the ROI in the recipe file now
        self.review = 0.0
        self.fail = 0.0
        self.recipe_page = RecipePage(self)
        self.images_page = ImagesPage(self)
        self.roi_page = RoiPage(self)
        self.train_page = TrainPage(self)
        self.check_page = CheckPage(self)
        self.save_page = SavePage(self)
        for page in (self.recipe_page, self.images_page, self.roi_page, self.train_page, self.check_page,
                     self.save_page):
            self.addPage(page)
        self.finished.connect(self._on_wizard_finished)

    @property
    def engine(self) -> TeachEngine:
        if self._engine is None:
            self._engine = TeachEngine.default()
        return self._engine

    def taught_roi(self) -> tuple[int, int, int, int] | None:
        """The ROI rectangle of the recipe taught (None: the whole frame)."""
        recipe = self.outcome.recipe if self.outcome is not None else self.recipe
        rect = getattr(getattr(recipe, "roi", None), "rect", None)
        return tuple(rect) if rect else None

    def recipe_file_pending(self) -> bool:
        """True when Save has a recipe file to write: a new recipe, or an ROI the file does not have."""
        return self.copied_from is not None or self.taught_roi() != self.file_roi

    def thresholds_changed(self) -> bool:
        t = self.outcome.report.thresholds if self.outcome is not None else None
        if t is None:
            return False
        tolerance = 0.5 / SLIDER_STEPS * max(self.check_page._scale, 1e-9)
        return abs(self.review - t.review) > tolerance or abs(self.fail - t.fail) > tolerance

    def train_job(self) -> Callable[[], Generator[Progress, None, TeachOutcome]]:
        """The train step's job (runs on the worker thread): load, save the ROI, teach, check."""
        engine = self.engine
        recipe, path = self.recipe, self.recipe_path
        good_files, captured, holdout = list(self.good_files), list(self.captured), self.holdout
        bad_files, bad_folder, roi = list(self.bad_files), self.bad_folder, self.roi

        def job() -> Generator[Progress, None, TeachOutcome]:
            nonlocal recipe
            images = list(captured)
            for index, file in enumerate(good_files, 1):
                images.append(engine.load_image(file))
                yield Progress(done=index, total=len(good_files), message=f"reading good image {file.name}")
            held, train = images[len(images) - holdout:] if holdout else [], images[: len(images) - holdout]
            current = getattr(getattr(recipe, "roi", None), "rect", None)
            if roi != (tuple(current) if current else None):
                from inspector.recipe import Roi

                # taught with the ROI drawn; the file gets it on Save (step 6), comments kept
                recipe = dataclasses.replace(recipe, roi=Roi(rect=roi) if roi else None)
                yield Progress(done=0, total=0, message=f"the ROI is written into {path.name} on Save")
            report = yield from engine.teach(recipe, train, defects=bad_folder)
            yield Progress(done=0, total=0, message=f"loading model {report.version} to check it")
            station = engine.load_station(recipe, report.version)
            checked_good, checked_bad = [], []
            todo = held[:MAX_CHECK_IMAGES]
            bad_todo = bad_files[:MAX_CHECK_IMAGES]
            total = len(todo) + len(bad_todo)
            for image in todo:
                checked_good.append(station.inspect_image(image))
                yield Progress(done=len(checked_good), total=total, message="checking held-out good images")
            for file in bad_todo:
                checked_bad.append(station.inspect_image(engine.load_image(file), path=str(file)))
                yield Progress(done=len(todo) + len(checked_bad), total=total,
                               message="checking known-bad images")
            held_scores = [r.score for r in checked_good if r.score is not None]
            return TeachOutcome(
                recipe=recipe, report=report, held_out=tuple(checked_good), known_bad=tuple(checked_bad),
                good_scores=np.concatenate([np.asarray(report.good_scores, np.float32),
                                            np.asarray(held_scores, np.float32)]),
                bad_scores=np.asarray(report.defect_scores, np.float32),
            )

        return job

    def set_back_allowed(self, allowed: bool) -> None:
        """Show or hide the Back button (hidden while training: QWizard re-enables a disabled one)."""
        buttons = [QWizard.WizardButton.Stretch, QWizard.WizardButton.NextButton,
                   QWizard.WizardButton.FinishButton]
        if allowed:
            buttons.insert(1, QWizard.WizardButton.BackButton)
        self.setButtonLayout(buttons)

    @property
    def back_allowed(self) -> bool:
        return self.button(QWizard.WizardButton.BackButton).isVisible()

    @Slot(int)
    def _on_wizard_finished(self, result: int) -> None:
        version = self.save_page.saved_version
        if result and self.recipe_path is not None and version:
            self.taught.emit(self.recipe_path, version)

    def shutdown(self) -> None:
        """Cancel a running job and join its thread."""
        self.jobs.shutdown()


class TeachPage(QWidget):
    """The Teach tab: the wizard embedded, restarted with "New teaching" when finished."""

    taught = Signal(object, str)     # recipe path, model version

    def __init__(self, *, recipes: Sequence[Path] = (), open_source: Callable[[str], Any] | None = None,
                 engine: TeachEngine | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._recipes = list(recipes)
        self._open_source = open_source
        self._engine = engine
        self._layout = QVBoxLayout(self)
        self.restart_button = QPushButton("New teaching")
        self.restart_button.clicked.connect(self.restart)
        self._layout.addWidget(self.restart_button, 0, Qt.AlignmentFlag.AlignRight)
        self.wizard: TeachWizard | None = None
        self.restart()

    def set_recipes(self, recipes: Sequence[Path]) -> None:
        self._recipes = list(recipes)

    @Slot()
    def restart(self) -> None:
        if self.wizard is not None:
            self.wizard.shutdown()
            self.wizard.setParent(None)
            self.wizard.deleteLater()
        wizard = TeachWizard(recipes=self._recipes, engine=self._engine, open_source=self._open_source)
        wizard.setWindowFlags(Qt.WindowType.Widget)        # embedded in the tab, not a dialog
        wizard.taught.connect(self.taught)
        wizard.finished.connect(self._on_finished)
        self._layout.insertWidget(0, wizard, 1)
        wizard.show()
        self.wizard = wizard

    @Slot(int)
    def _on_finished(self, result: int) -> None:
        if self.wizard is not None:
            self.wizard.hide()

    def shutdown(self) -> None:
        if self.wizard is not None:
            self.wizard.shutdown()
