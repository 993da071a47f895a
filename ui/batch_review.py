"""The review screen's batch panel: review a folder of images offline, in a worker thread.

`BatchReviewPanel` runs ``inspector.review.review`` (a recipe's model, or zero-shot) on a `JobRunner`
thread with a progress bar and Cancel, and opens the HTML report in the browser. A cancelled review
continues where it stopped when run again with the same folders (the review keeps a journal).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Protocol, runtime_checkable

from PySide6.QtCore import Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from inspector.results import Progress
from ui.workers import JobRunner

__all__ = ["ZERO_SHOT", "BatchReview", "BatchReviewPanel", "ReviewOutcome"]

ZERO_SHOT = "zero-shot (no recipe)"     # the recipe box's last choice: no recipe, batch statistics only


@runtime_checkable
class ReviewOutcome(Protocol):
    """What the panel shows of a finished review (`inspector.review.ReviewSummary` is one)."""

    @property
    def report(self) -> Path:
        """The report's index.html."""
        ...

    def summary_lines(self) -> list[str]:
        """A few lines saying what was reviewed and what came out."""
        ...


# (folder, out, *, recipe, zero_shot[, zero_shot_thresholds]) -> progress, then the outcome:
# `inspector.review.review` (``zero_shot_thresholds`` is passed only when the reviewer set them).
BatchReview = Callable[..., Generator[Progress, None, ReviewOutcome]]


def _default_batch_review(folder: Path, out: Path, *, recipe: Path | None, zero_shot: bool,
                          zero_shot_thresholds: tuple[float, float] | None = None,
                          ) -> Generator[Progress, None, ReviewOutcome]:
    from inspector.review import review

    return review(folder, out, recipe=recipe, zero_shot=zero_shot, zero_shot_thresholds=zero_shot_thresholds)


class BatchReviewPanel(QGroupBox):
    """Review a folder of images offline (``inspector.review``) with a recipe or zero-shot, in a worker
    thread with a progress bar and Cancel; the report opens in the browser. A cancelled review
    continues where it stopped when run again with the same folders.

    Args:
        recipes: the recipe files offered (called at each refresh).
        run_review: the review job; default `inspector.review.review`.
    """

    def __init__(self, *, recipes: Callable[[], list[Path]] = list, run_review: BatchReview | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("Batch review of a folder", parent)
        self._recipes = recipes
        self._run_review = run_review or _default_batch_review
        self.jobs = JobRunner(self)
        self.jobs.progress.connect(self._on_progress)
        self.jobs.finished.connect(self._on_finished)
        self.jobs.errored.connect(self._on_errored)
        self.jobs.cancelled.connect(self._on_cancelled)
        self.jobs.stopped.connect(self._on_stopped)
        self.summary: ReviewOutcome | None = None
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder of images")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._on_browse)
        self.recipe_box = QComboBox()
        self.recipe_box.currentIndexChanged.connect(self._on_mode_changed)
        # zero-shot only: the reviewer's REVIEW,FAIL scores, read off the report's histogram (empty: the batch's rule)
        self.thresholds_edit = QLineEdit()
        self.thresholds_edit.setPlaceholderText("REVIEW,FAIL")
        self.thresholds_edit.setMaximumWidth(110)
        self.thresholds_edit.setToolTip(
            "Zero-shot only: flag images at these scores, e.g. 0.085,0.12 read off the report's score histogram. "
            "Empty: the batch's own rule, which assumes most images are good. A folder reviewed before is "
            "written again from its kept scores in seconds.")
        self.run_button = QPushButton("Review")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.jobs.cancel)
        self.open_button = QPushButton("Open report")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self._on_open_report)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        row = QHBoxLayout()
        for widget in (self.folder_edit, browse, self.recipe_box, self.thresholds_edit, self.run_button,
                       self.cancel_button, self.open_button):
            row.addWidget(widget, 1 if widget is self.folder_edit else 0)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.bar)
        layout.addWidget(self.message)
        self.refresh_recipes()

    def refresh_recipes(self) -> None:
        current = self.recipe_box.currentText()
        self.recipe_box.clear()
        for path in self._recipes():
            self.recipe_box.addItem(path.stem, str(path))
        self.recipe_box.addItem(ZERO_SHOT, None)
        index = self.recipe_box.findText(current) if current else -1
        if index >= 0:
            self.recipe_box.setCurrentIndex(index)

    @Slot()
    def run(self) -> None:
        """Start reviewing the chosen folder into ``<folder>-review`` beside it."""
        folder = Path(self.folder_edit.text().strip()).expanduser()
        if not self.folder_edit.text().strip() or not folder.is_dir():
            self.message.setText("Choose the folder of images to review.")
            return
        data = self.recipe_box.currentData()
        recipe = Path(data) if data else None
        extra: dict[str, tuple[float, float]] = {}
        text = self.thresholds_edit.text().strip()
        if recipe is None and text:
            from inspector.review import parse_thresholds

            try:
                extra["zero_shot_thresholds"] = parse_thresholds(text)
            except ValueError as exc:
                self.message.setText(f"{str(exc)[0].upper()}{str(exc)[1:]}.")
                return
        out = folder.with_name(f"{folder.name}-review")
        run_review = self._run_review

        def job() -> Generator[Progress, None, ReviewOutcome]:
            return (yield from run_review(folder, out, recipe=recipe, zero_shot=recipe is None, **extra))

        self.summary = None
        self.open_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._pass_focus(self.run_button, self.cancel_button)
        self.run_button.setEnabled(False)
        self.bar.setRange(0, 0)
        self.message.setText(f"Reviewing {folder} into {out}…")
        self.jobs.start(job, name="batch-review")

    def shutdown(self) -> None:
        self.jobs.shutdown()

    @Slot()
    def _on_mode_changed(self) -> None:
        self.thresholds_edit.setEnabled(self.recipe_box.currentData() is None)   # a recipe has its own

    @Slot()
    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to review")
        if folder:
            self.folder_edit.setText(folder)

    @Slot(object)
    def _on_progress(self, progress: Progress) -> None:
        if progress.total:
            self.bar.setRange(0, progress.total)
            self.bar.setValue(progress.done)
        self.message.setText(progress.message)

    @Slot(object)
    def _on_finished(self, summary: object) -> None:
        outcome = summary if isinstance(summary, ReviewOutcome) else None
        self.summary = outcome
        lines = outcome.summary_lines() if outcome is not None else [str(summary)]
        self.message.setText("\n".join(lines))
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        self.open_button.setEnabled(outcome is not None)

    @Slot(str)
    def _on_errored(self, text: str) -> None:
        self.message.setText(f"Review failed: {text}")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)

    @Slot()
    def _on_cancelled(self) -> None:
        self.message.setText("Review cancelled; run it again to continue where it stopped.")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)

    @Slot()
    def _on_stopped(self) -> None:
        self.run_button.setEnabled(True)
        self._pass_focus(self.cancel_button, self.open_button if self.open_button.isEnabled() else self.run_button)
        self.cancel_button.setEnabled(False)

    @staticmethod
    def _pass_focus(going: QPushButton, to: QPushButton) -> None:
        """The keyboard focus on a button about to be disabled moves to the next action, not to the window's first
        widget (the toolbar's source box), where Qt put it and a reviewer's typing went (found under Xvfb)."""
        if going.hasFocus():
            to.setFocus(Qt.FocusReason.OtherFocusReason)

    @Slot()
    def _on_open_report(self) -> None:
        if self.summary is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.summary.report)))
