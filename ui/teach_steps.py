"""The teaching wizard's input steps: 1 the recipe, 2 the good (and known-bad) images, 3 the ROI.

Each page validates what it was given before the wizard moves on, and writes it into the
`ui.teach_wizard.TeachWizard` it belongs to; the train, check and save steps live in ``ui.teach_wizard``.
`RoiEditor` is the rubber-band rectangle drawn on a frame in step 3.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, QRect, QSize, Qt, Signal, Slot
from PySide6.QtGui import QIcon, QMouseEvent, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QRubberBand,
    QSpinBox,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from inspector.overlay import thumbnail
from inspector.recipe import new_recipe_from
from inspector.results import Progress
from inspector.teach import GOOD_FROM_REVIEW_COUNT
from ui.live_view import HeatmapView
from ui.qimage import bgr_to_qimage

if TYPE_CHECKING:
    from inspector.recipe import Recipe
    from ui.teach_wizard import TeachWizard

__all__ = ["CapturedFrames", "ImagesPage", "RecipePage", "ReviewChoice", "RoiEditor", "RoiPage", "roi_rect"]


def roi_rect(recipe: Recipe | None) -> tuple[int, int, int, int] | None:
    """The recipe's ROI rectangle (x, y, w, h); None for no recipe, the whole frame or a polygon ROI."""
    if recipe is None or recipe.roi is None or not recipe.roi.rect:
        return None
    x, y, w, h = recipe.roi.rect
    return x, y, w, h


@dataclass(frozen=True, eq=False)
class CapturedFrames:
    """The capture job's result: the (H, W, 3) uint8 BGR frames read from the live source."""

    frames: tuple[np.ndarray, ...]


THUMB_SIDE = 200       # px, the longer side of a review image's thumbnail in the Images step
THUMB_ROLE = Qt.ItemDataRole.UserRole + 1   # a thumbnail item's own pixmap (its icon is greyed when unticked)


@dataclass(frozen=True)
class ReviewChoice:
    """The review-reading job's result: a zero-shot review's ``count`` lowest-scoring PASS images."""

    folder: Path
    count: int
    chosen: tuple[tuple[Path, float], ...]     # (file, score), lowest first
    thumbs: tuple[np.ndarray | None, ...] = ()  # BGR thumbnails of ``chosen`` (None: unreadable), same order


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
        height, width = image_bgr.shape[:2]
        self._image_size = (height, width)
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

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
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
        if watched is self.view and event.type() == QEvent.Type.Resize:
            self._update_band()
        return super().eventFilter(watched, event)


class RecipePage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("1 · Recipe")
        self.setSubTitle("Choose the product's recipe to teach, or create a new recipe from it: its settings, not its "
                         "product text, models, thresholds or ROI.")
        self.recipe_box = QComboBox()
        for path in wizard.recipes:
            self.recipe_box.addItem(path.stem, str(path))
        self.browse = QPushButton("Other recipe file…")
        self.browse.clicked.connect(self._on_browse)
        self.new_check = QCheckBox("Create a new recipe from it, named:")
        self.new_name = QLineEdit()
        self.new_name.setPlaceholderText("e.g. bracket_b (letters, digits, _ and -)")
        self.new_name.setEnabled(False)
        self.new_product = QLineEdit()        # the kiosk shows it to the operator; not the other product's
        self.new_product.setPlaceholderText("product, for the operator: e.g. Bracket B (part 4711-300)")
        self.new_product.setEnabled(False)
        self.new_check.toggled.connect(self.new_name.setEnabled)
        self.new_check.toggled.connect(self.new_product.setEnabled)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #ff5252; font-weight: bold;")
        row = QHBoxLayout()
        row.addWidget(self.recipe_box, 1)
        row.addWidget(self.browse)
        form = QFormLayout(self)
        form.addRow("Recipe", row)
        form.addRow(self.new_check, self.new_name)
        form.addRow("", self.new_product)
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
                # not the other product's text or models
                recipe = new_recipe_from(recipe, name, target, product=self.new_product.text())
                self.w.copied_from = path
                path = target
            else:
                self.w.copied_from = None
        except Exception as exc:
            self.error.setText(f"{type(exc).__name__}: {exc}")
            return False
        self.error.setText("")
        self.w.recipe_path, self.w.recipe = path, recipe
        self.w.file_roi = roi_rect(recipe) if self.w.copied_from is None else None
        return True


class ImagesPage(QWizardPage):
    def __init__(self, wizard: TeachWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("2 · Good images")
        self.setSubTitle("Pick a folder of good parts (10–50 is plenty), capture frames from the live "
                         "source, or take the lowest-scoring PASS images of a zero-shot review of a folder "
                         "nobody labelled. "
                         "Known-bad images are optional; they help to check and calibrate.")
        self.good_edit = QLineEdit()
        self.good_edit.setPlaceholderText("folder of good images")
        good_browse = QPushButton("Browse…")
        good_browse.clicked.connect(self._on_browse_good)
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText('camera "0", rtsp://…, video or folder')
        self.capture_count = QSpinBox()
        self.capture_count.setRange(1, 500)
        self.capture_count.setValue(20)
        self.capture_button = QPushButton("Capture")
        self.capture_button.clicked.connect(self._on_capture)
        self.review_edit = QLineEdit()
        self.review_edit.setPlaceholderText("a zero-shot review's folder (Review screen, zero-shot mode)")
        self.review_edit.editingFinished.connect(self._show_review_choice)
        review_browse = QPushButton("Browse…")
        review_browse.clicked.connect(self._on_browse_review)
        self.review_count = QSpinBox()
        self.review_count.setRange(1, 500)
        self.review_count.setValue(GOOD_FROM_REVIEW_COUNT)       # `inspector train --good-from-review`'s too
        self.review_count.setSuffix(" lowest")
        self.review_count.valueChanged.connect(self._show_review_choice)
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
        # the review's choice as thumbnails, ticked: the engineer looks at them and unticks a defective one
        self.review_list = QListWidget()
        self.review_list.setViewMode(QListView.ViewMode.IconMode)
        self.review_list.setIconSize(QSize(THUMB_SIDE, THUMB_SIDE))
        self.review_list.setFlow(QListView.Flow.LeftToRight)
        self.review_list.setWrapping(True)
        self.review_list.setResizeMode(QListView.ResizeMode.Adjust)
        self.review_list.setMovement(QListView.Movement.Static)
        self.review_list.setMinimumHeight(THUMB_SIDE + 56)
        self.review_list.setVisible(False)
        self.review_list.itemChanged.connect(self._on_thumb_ticked)

        good_row = QHBoxLayout()
        good_row.addWidget(self.good_edit, 1)
        good_row.addWidget(good_browse)
        capture_row = QHBoxLayout()
        capture_row.addWidget(self.source_edit, 1)
        capture_row.addWidget(self.capture_count)
        capture_row.addWidget(self.capture_button)
        review_row = QHBoxLayout()
        review_row.addWidget(self.review_edit, 1)
        review_row.addWidget(self.review_count)
        review_row.addWidget(review_browse)
        bad_row = QHBoxLayout()
        bad_row.addWidget(self.bad_edit, 1)
        bad_row.addWidget(bad_browse)
        page = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("Good images", good_row)
        form.addRow("…or capture", capture_row)
        form.addRow("…or from a review", review_row)
        form.addRow("Known-bad images", bad_row)
        form.addRow("Hold out for the check", self.holdout)
        page.addLayout(form)
        page.addWidget(self.summary)
        page.addWidget(self.review_list, 1)      # the thumbnails take the page's height when shown
        page.addStretch(0)
        self.review_choice: ReviewChoice | None = None   # what the review folder gives, once read
        self._read_again = False
        wizard.jobs.finished.connect(self._on_job_finished)
        wizard.jobs.errored.connect(self._on_job_errored)
        wizard.jobs.stopped.connect(self._on_job_stopped)

    def initializePage(self) -> None:  # noqa: N802 (Qt name)
        if not self.source_edit.text() and self.w.source_text:
            self.source_edit.setText(self.w.source_text)

    @Slot()
    def _on_browse_good(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of good images")
        if folder:
            self.good_edit.setText(folder)

    @Slot()
    def _on_browse_review(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of a zero-shot review")
        if folder:
            self.review_edit.setText(folder)
            self._show_review_choice()

    @Slot()
    def _show_review_choice(self) -> None:
        """Read the review on the job thread (a big review's journal takes seconds) and list its choice."""
        text = self.review_edit.text().strip()
        if not text:
            return
        if self.w.jobs.running:
            if self.w.jobs.name == "review-choice":   # typed on while it reads: read again when it ends
                self._read_again = True
            else:
                self.summary.setText("Another job is running (a capture?): wait for it, then Next.")
            return
        folder, count, read = Path(text), self.review_count.value(), self.w.engine.good_from_review
        load = self.w.engine.load_image
        self.review_choice = None
        self._show_thumbs(None)

        def job() -> Generator[Progress, None, ReviewChoice]:
            yield Progress(done=0, total=0, message=f"reading the review {folder}")
            chosen = tuple(read(folder, count))
            thumbs: list[np.ndarray | None] = []
            for i, (path, _) in enumerate(chosen):
                yield Progress(done=i, total=len(chosen), message=f"thumbnail of {path.name}")
                try:
                    thumbs.append(thumbnail(load(path), THUMB_SIDE))
                except Exception:  # noqa: BLE001  # listed as unreadable; teaching names the file and the error
                    thumbs.append(None)
            return ReviewChoice(folder, count, chosen, tuple(thumbs))

        self.summary.setText(f"Reading the review {folder}…")
        self.w.jobs.start(job, name="review-choice")

    def _review_choice_shown(self, choice: ReviewChoice) -> None:
        self.review_choice = choice
        folders = sorted({path.parent.name for path, _ in choice.chosen})
        self.summary.setText(
            f"Teaching from the {len(choice.chosen)} lowest-scoring PASS image(s) of the zero-shot review "
            f"{choice.folder} (images of {', '.join(folders)}), below with their scores. Look at them, or at "
            f"the review's report: a defective one would be taught as good; untick it.")
        self._show_thumbs(choice)

    def _show_thumbs(self, choice: ReviewChoice | None) -> None:
        """List ``choice``'s images as ticked thumbnails with their scores; None hides the list."""
        self.review_list.clear()
        self.review_list.setVisible(choice is not None)
        if choice is None:
            return
        thumbs = choice.thumbs or (None,) * len(choice.chosen)
        self.review_list.blockSignals(True)
        for (path, score), thumb in zip(choice.chosen, thumbs, strict=True):
            caption = f"{score:.4f}\n{path.name}" if thumb is not None else f"{path.name}\n(unreadable)"
            item = QListWidgetItem(caption)
            item.setData(Qt.ItemDataRole.UserRole, caption)
            if thumb is not None:
                pixmap = QPixmap.fromImage(bgr_to_qimage(thumb))
                item.setData(THUMB_ROLE, pixmap)
                item.setIcon(QIcon(pixmap))
            item.setToolTip(f"{path}\nuntick to leave it out of the good images")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.review_list.addItem(item)
        self.review_list.blockSignals(False)

    @Slot(QListWidgetItem)
    def _on_thumb_ticked(self, item: QListWidgetItem) -> None:
        """An unticked image is shown greyed and marked "left out" (the view's own tick box barely shows)."""
        ticked = item.checkState() == Qt.CheckState.Checked
        caption = str(item.data(Qt.ItemDataRole.UserRole))
        self.review_list.blockSignals(True)     # the changes below would call this again
        item.setText(caption if ticked else f"{caption}\nleft out")
        item.setForeground(self.palette().text() if ticked else self.palette().placeholderText())
        pixmap = item.data(THUMB_ROLE)
        if isinstance(pixmap, QPixmap):
            mode = QIcon.Mode.Normal if ticked else QIcon.Mode.Disabled     # Disabled: Qt's greyed copy
            item.setIcon(QIcon(QIcon(pixmap).pixmap(pixmap.size(), mode)))
        self.review_list.blockSignals(False)

    def ticked_review_files(self) -> list[Path]:
        """The review's chosen images whose thumbnails are ticked, lowest score first."""
        if self.review_choice is None:
            return []
        return [path for i, (path, _) in enumerate(self.review_choice.chosen)
                if self.review_list.item(i) is None
                or self.review_list.item(i).checkState() == Qt.CheckState.Checked]

    @Slot()
    def _on_job_stopped(self) -> None:
        if self._read_again:
            self._read_again = False
            self._show_review_choice()

    @Slot(str)
    def _on_job_errored(self, text: str) -> None:
        if self.w.jobs.name == "review-choice":
            self.summary.setText(text.partition(": ")[2] or text)

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

        def job() -> Generator[Progress, None, CapturedFrames]:
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
            return CapturedFrames(tuple(frames))

        self.capture_button.setEnabled(False)
        self.summary.setText("Capturing…")
        self.w.jobs.start(job, name="capture")

    @Slot(object)
    def _on_job_finished(self, value: object) -> None:
        if self.w.jobs.name == "review-choice" and isinstance(value, ReviewChoice):
            self._review_choice_shown(value)
            return
        if self.w.jobs.name != "capture" or not isinstance(value, CapturedFrames):
            return
        self.capture_button.setEnabled(True)
        self.w.captured = list(value.frames)
        self.good_edit.clear()
        self.review_edit.clear()
        self._show_thumbs(None)
        self.summary.setText(f"Captured {len(self.w.captured)} frames from {self.source_edit.text()}.")
        self.completeChanged.emit()

    def validatePage(self) -> bool:  # noqa: N802 (Qt name)
        good_text, bad_text = self.good_edit.text().strip(), self.bad_edit.text().strip()
        review_text = self.review_edit.text().strip()
        engine = self.w.engine
        try:
            if good_text and review_text:
                self.summary.setText("Choose one source of good images: a folder or a zero-shot review, not both.")
                return False
            if review_text:
                choice = self.review_choice
                if choice is None or choice.folder != Path(review_text) or choice.count != self.review_count.value():
                    self._show_review_choice()        # read it (again); Next once its images are listed
                    return False
                ticked = self.ticked_review_files()
                if not ticked:
                    self.summary.setText("Every image of the review's choice is unticked: tick at least one good "
                                         "image, or raise the count to list more.")
                    return False
                self.w.good_files, self.w.captured = ticked, []
                first = engine.load_image(self.w.good_files[0])
            elif good_text:
                folder = Path(good_text)
                if not folder.is_dir():
                    self.summary.setText(f"{folder}: not a folder; pick the folder holding the good images.")
                    return False
                files = engine.image_files(folder)
                if not files:
                    self.summary.setText(f"{folder}: no image found; teaching needs at least one good image.")
                    return False
                self.w.good_files, self.w.captured = files, []
                first = engine.load_image(files[0])
            elif self.w.captured:
                self.w.good_files = []
                first = self.w.captured[0]
            else:
                self.summary.setText("Choose a folder of good images or a zero-shot review, or capture frames first.")
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
        # at least one image is taught: a recipe taught from one image calibrates on that image's own regions
        self.w.holdout = min(self.holdout.value(), max(total - 1, 0))
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
        self.editor.set_roi(roi_rect(self.w.recipe))

    @Slot()
    def _on_whole(self) -> None:
        self.editor.set_roi(None)

    @Slot(object)
    def _on_roi_changed(self, roi: tuple[int, int, int, int] | None) -> None:
        self.label.setText("ROI: whole frame" if roi is None else "ROI: x {}, y {}, {} × {} px".format(*roi))

    def validatePage(self) -> bool:  # noqa: N802 (Qt name)
        self.w.roi = self.editor.roi
        return True
