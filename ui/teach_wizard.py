"""Teaching screen (engineers): a guided flow from good images to a saved, checked model version.

Steps (a ``QWizard`` embedded in the Teach tab):

1. Recipe: choose one, or create a new one from it.
2. Images: a folder of good images, or N frames captured from the live source; optionally a folder
   of known-bad images; how many good images to hold out for the check.
3. ROI: draw the region of interest on a frame (rubber band), or keep the whole frame.
   (Steps 1-3 and `RoiEditor` are in ``ui.teach_steps``.)
4. Train: teaching runs in a worker thread with a progress bar and can be cancelled; then the
   new model scores the held-out good and the known-bad images.
5. Check: the calibration report, held-out good and known-bad images side by side with heatmaps,
   and review / fail sliders that re-score instantly from the cached scores (no re-inference).
6. Save: thresholds changed by hand are saved as a new model version.

The train step is `inspector.teach.teach_and_check` (Qt-free); the engine calls go through
`inspector.teach.TeachEngine` (re-exported here), so tests can stand in a cheap one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QApplication,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from inspector.errors import InspectorError
from inspector.results import InspectionResult, Progress, Verdict, VerdictCounts, verdict_for
from inspector.teach import MAX_CHECK_IMAGES, TeachEngine, TeachOutcome, teach_and_check
from ui.engine import OpenSource
from ui.live_view import VERDICT_COLOURS, HeatmapView
from ui.teach_steps import ImagesPage, RecipePage, RoiEditor, RoiPage, roi_rect
from ui.workers import JobRunner

if TYPE_CHECKING:
    from inspector.recipe import Recipe

__all__ = ["RoiEditor", "TeachEngine", "TeachOutcome", "TeachPage", "TeachWizard"]

log = logging.getLogger(__name__)

SLIDER_STEPS = 1000          # threshold slider resolution: 0.1 % of the score range


@runtime_checkable
class SummaryLines(Protocol):
    """A teaching report that writes itself as lines (`inspector.teach.TeachReport` does; a stand-in may not)."""

    def summary_lines(self) -> list[str]:
        """The calibration report, one line each."""
        ...


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
    def _on_finished(self, value: object) -> None:
        if self.w.jobs.name != "train" or not isinstance(value, TeachOutcome):
            return
        held = self._holds_focus()                  # before the wizard's own updates move it
        self.w.outcome = value
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        self.message.setText(f"Done: model {value.report.version} trained. Next: check it; Save writes "
                             "the recipe.")
        self.completeChanged.emit()
        self._job_over(QWizard.WizardButton.NextButton if held else None)

    @Slot(str)
    def _on_errored(self, text: str) -> None:
        if self.w.jobs.name != "train":
            return
        held = self._holds_focus()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.message.setText(f"Training failed: {text}")
        self.log.appendPlainText(f"Training failed: {text}")
        self._job_over(QWizard.WizardButton.BackButton if held else None)

    @Slot()
    def _on_cancelled(self) -> None:
        if self.w.jobs.name != "train":
            return
        held = self._holds_focus()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.message.setText("Training cancelled; nothing was saved. Back to change the images, or close.")
        self._job_over(QWizard.WizardButton.BackButton if held else None)

    def _holds_focus(self) -> bool:
        focus = QApplication.focusWidget()
        return focus is not None and self.w.isAncestorOf(focus)

    def _job_over(self, then: QWizard.WizardButton | None) -> None:
        """Cancel goes off and Back comes back; the keyboard focus that this step held (``then`` not None) moves to
        ``then``: Qt would hand it to the window's first widget (the toolbar's source box) as the wizard updates."""
        self.cancel_button.setEnabled(False)
        self.w.set_back_allowed(True)
        if then is not None:
            self.w.button(then).setFocus(Qt.FocusReason.OtherFocusReason)


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
        self.side_titles: list[QLabel] = []          # shown only over images: a check may have none of a kind
        for title, grid in (("Held-out good", self.good_grid), ("Known-bad", self.bad_grid)):
            box = QVBoxLayout()
            label = QLabel(title)
            label.setStyleSheet("font-weight: bold;")
            self.side_titles.append(label)
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
        outcome = self.w.trained()
        report = outcome.report
        lines = report.summary_lines() if isinstance(report, SummaryLines) else [str(report)]
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
        for title, results in zip(self.side_titles, (outcome.held_out, outcome.known_bad), strict=True):
            title.setVisible(bool(results))
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
        outcome = self.w.trained()
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
        outcome = self.w.trained()
        t = outcome.report.thresholds
        changed = self.w.thresholds_changed()
        file_pending = self.w.recipe_file_pending()
        self._saved_version = None if changed or file_pending else outcome.report.version
        self.save_button.setEnabled(changed or file_pending)
        todo = []
        if file_pending and self.w.recipe_path is not None:
            what = "the new recipe" if self.w.copied_from is not None else "the ROI drawn"
            todo.append(f"writes {what} into {self.w.recipe_path}")
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

    def take_focus(self) -> None:
        """The keyboard goes to Save, or to Finish once there is nothing to save, so that Enter does the next thing;
        Qt handed it to the window's first widget (the toolbar's source box) on this step, which has no Next."""
        target = self.save_button if self.save_button.isEnabled() else self.w.button(QWizard.WizardButton.FinishButton)
        target.setFocus(Qt.FocusReason.OtherFocusReason)

    @Slot()
    def save(self) -> None:
        outcome = self.w.trained()
        engine, review, fail = self.w.engine, self.w.review, self.w.fail
        recipe, version = outcome.recipe, outcome.report.version
        changed = self.w.thresholds_changed()
        write = self.w.recipe_file_pending()
        target, source = self.w.recipe_path, self.w.copied_from or self.w.recipe_path
        rect = roi_rect(recipe)
        name = recipe.name if self.w.copied_from is not None else None

        def job() -> Generator[Progress, None, str]:
            if write and target is not None and source is not None:
                yield Progress(done=0, total=2, message=f"writing {target.name}")
                engine.edit_recipe_file(source, target, name=name, roi=rect, new=name is not None,
                                        product=recipe.product if name is not None else "")
            if not changed:
                return str(version)
            yield Progress(done=1, total=2, message="saving thresholds")
            return engine.save_thresholds(recipe, version, review=review, fail=fail)

        self.save_button.setEnabled(False)
        self.message.setText("Saving…")
        self.w.jobs.start(job, name="save")

    @Slot(object)
    def _on_saved(self, version: object) -> None:
        if self.w.jobs.name != "save":
            return
        self._saved_version = str(version)
        self.w.copied_from = None                  # written: a second Save edits the file in place
        self.w.file_roi = self.w.taught_roi()
        self.message.setText(f"Saved: recipe {self.w.recipe_path or ''}, model "
                             f"{version} (review {self.w.review:.4f}, fail {self.w.fail:.4f}). Finish, then "
                             "select the recipe on the station.")
        self.completeChanged.emit()
        self.take_focus()

    @Slot(str)
    def _on_failed(self, text: str) -> None:
        if self.w.jobs.name == "save":
            self.message.setText(f"Saving failed: {text}")
            self.save_button.setEnabled(True)
            self.take_focus()

    @property
    def saved_version(self) -> str | None:
        return self._saved_version


# -------------------------------------------------------------------------------------------- wizard
class TeachWizard(QWizard):
    """The teaching flow; emits ``taught(recipe_path, version)`` when finished with a saved version."""

    taught = Signal(object, str)

    def __init__(self, *, recipes: Sequence[Path] = (), engine: TeachEngine | None = None,
                 open_source: OpenSource | None = None, source_text: str = "",
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
        self.recipe: Recipe | None = None
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
        self.currentIdChanged.connect(self._focus_step)

    @property
    def engine(self) -> TeachEngine:
        if self._engine is None:
            self._engine = TeachEngine.default()
        return self._engine

    def trained(self) -> TeachOutcome:
        """The train step's outcome, which the check and save steps render.

        Raises:
            RuntimeError: nothing was trained yet (those steps come after the train step completed).
        """
        if self.outcome is None:
            msg = "no teaching outcome yet: the check and save steps come after the train step"
            raise RuntimeError(msg)
        return self.outcome

    def taught_roi(self) -> tuple[int, int, int, int] | None:
        """The ROI rectangle of the recipe taught (None: the whole frame)."""
        return roi_rect(self.outcome.recipe if self.outcome is not None else self.recipe)

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
        """The train step's job (runs on the worker thread): `inspector.teach.teach_and_check` on the pages' input."""
        engine, recipe, path, roi = self.engine, self.recipe, self.recipe_path, self.roi
        good_files, captured, holdout = list(self.good_files), list(self.captured), self.holdout
        bad_files, bad_folder = list(self.bad_files), self.bad_folder

        def job() -> Generator[Progress, None, TeachOutcome]:
            if recipe is None:
                msg = "no recipe chosen: go back to the recipe step"
                raise InspectorError(msg)
            return (yield from teach_and_check(engine, recipe, good_files=good_files, captured=captured,
                                               holdout=holdout, bad_files=bad_files, defects=bad_folder, roi=roi,
                                               recipe_file=path))

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
    def _focus_step(self, _page_id: int) -> None:
        """A new step takes the keyboard focus at its first field (Next where it has none, as the ROI step: Enter goes
        on): Next hid the button that had it, and Qt passed it on to the window's first widget (the toolbar's source
        box), where the engineer's typing went."""
        page = self.currentPage()
        if page is None:
            return
        widget = page.nextInFocusChain()
        while widget is not None and widget is not page:
            if (page.isAncestorOf(widget) and not isinstance(widget, QPushButton)      # a field, not an action
                    and widget.isEnabled() and widget.isVisibleTo(page)
                    and widget.focusPolicy() in (Qt.FocusPolicy.StrongFocus, Qt.FocusPolicy.TabFocus,
                                                 Qt.FocusPolicy.WheelFocus)):
                widget.setFocus(Qt.FocusReason.TabFocusReason)
                return
            widget = widget.nextInFocusChain()
        if page is self.save_page:                     # no Next there: its own action (Save, then Finish)
            self.save_page.take_focus()
            return
        self.button(QWizard.WizardButton.NextButton).setFocus(Qt.FocusReason.TabFocusReason)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt name)
        """Escape does not close the wizard. A QWizard is a dialog, whose Escape is its Cancel: embedded in the Teach
        tab (and without a Cancel button) a stray Escape, as to close a list, threw away the steps filled in and a
        model trained but not yet saved, leaving an empty tab; found by driving the app under Xvfb."""
        if event.key() == Qt.Key.Key_Escape:
            event.ignore()
            return
        super().keyPressEvent(event)

    @Slot(int)
    def _on_wizard_finished(self, result: int) -> None:
        version = self.save_page.saved_version
        if result and self.recipe_path is not None and version:
            self.taught.emit(self.recipe_path, version)

    def shutdown(self) -> None:
        """Cancel a running job and join its thread."""
        self.jobs.shutdown()


class TeachPage(QWidget):
    """The Teach tab: the wizard embedded; when it is finished, what was saved and "New teaching" (not before: the
    wizard's own Back goes to an earlier step, and a restart mid-way would throw the steps away)."""

    taught = Signal(object, str)     # recipe path, model version

    def __init__(self, *, recipes: Sequence[Path] = (), open_source: OpenSource | None = None,
                 engine: TeachEngine | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._recipes = list(recipes)
        self._open_source = open_source
        self._engine = engine
        self._layout = QVBoxLayout(self)
        self.done_message = QLabel("")          # what the finished teaching left, where the wizard was
        self.done_message.setWordWrap(True)
        self.done_message.setStyleSheet("font-size: 15px;")
        self.done_message.hide()
        self._layout.addWidget(self.done_message)
        self.restart_button = QPushButton("New teaching")
        self.restart_button.clicked.connect(self.restart)
        self._layout.addWidget(self.restart_button, 0, Qt.AlignmentFlag.AlignLeft)
        self._layout.addStretch(0)      # below them when the wizard is gone; the wizard takes the space otherwise
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
        self.done_message.hide()
        self.restart_button.hide()      # shown when this teaching is finished: a click mid-way threw it away
        wizard.show()
        self.wizard = wizard

    @Slot(int)
    def _on_finished(self, result: int) -> None:
        wizard = self.wizard
        if wizard is None:
            return
        wizard.hide()
        version = wizard.save_page.saved_version
        if result and wizard.recipe_path is not None and version:
            self.done_message.setText(
                f"Recipe {wizard.recipe_path.stem}: model {version} saved. Choose it in the toolbar's Recipe box "
                "and press Start (F5). New teaching teaches another recipe.")
        else:
            self.done_message.setText("Teaching closed; nothing was saved. New teaching starts again.")
        self.done_message.show()
        self.restart_button.show()
        self.restart_button.setFocus(Qt.FocusReason.OtherFocusReason)   # not the toolbar's source box

    def shutdown(self) -> None:
        if self.wizard is not None:
            self.wizard.shutdown()
