"""The main window's run toolbar and its keyboard actions.

`make_action` gives every command of the station one `QAction` with its shortcut and tooltip; the
actions belong to the window, so shortcuts work even while the toolbar is hidden (kiosk mode).
`RunToolbar` holds what the operator chooses before and during a run (source, recipe, heatmap
opacity, lot number) and remembers those choices in `QSettings`. It only shows choices: the run state
belongs to `inspector.controller.StationController`, which the window asks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSizePolicy,
    QSlider,
    QTextEdit,
    QToolBar,
    QWidget,
)

__all__ = ["DEFAULT_OPACITY", "MIN_REMEMBERED_OPACITY", "TEXT_WIDGETS", "RunActions", "RunToolbar", "make_action",
           "text_has_focus"]

MIN_REMEMBERED_OPACITY = 20    # a heatmap opacity below this % is not carried into the next session
DEFAULT_OPACITY = 60           # % (ours: the defect reads clearly, the part stays visible under it)
SOURCE_HISTORY = 10            # source texts remembered between sessions (the newest)
LOT_SETTING = "station/lot"    # the lot number's key in the settings (also written as it is typed: ui.lot)
# Widgets where a key is text: single-key shortcuts (Esc, Space, H, [ ]) never fire from them.
TEXT_WIDGETS = (QLineEdit, QTextEdit, QPlainTextEdit, QAbstractSpinBox)


def make_action(owner: QWidget, text: str, shortcut: str | QKeySequence.StandardKey | None,
                slot: Callable[..., object], *, checkable: bool = False, tip: str = "") -> QAction:
    """An action of ``owner`` (a window-wide shortcut) connected to ``slot``: ``toggled`` when checkable."""
    action = QAction(text, owner)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    action.setCheckable(checkable)
    label = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
    action.setToolTip(f"{tip or text} ({label})" if label else (tip or text))
    (action.toggled if checkable else action.triggered).connect(slot)
    owner.addAction(action)            # shortcuts work even when the toolbar is hidden (kiosk)
    return action


def text_has_focus() -> bool:
    """True when the keyboard focus is in a text field, where Esc / Space / H / [ ] are text."""
    focus = QApplication.focusWidget()
    if isinstance(focus, TEXT_WIDGETS):
        return True
    return isinstance(focus, QComboBox) and focus.isEditable()


@dataclass(frozen=True, kw_only=True)
class RunActions:
    """The toolbar's actions, made by the window (`make_action`) with its slots."""

    start: QAction
    pause: QAction
    stop: QAction
    heatmap: QAction           # checkable
    kiosk: QAction             # checkable
    new_lot: QAction
    open_folder: QAction
    open_video: QAction


def _int_setting(settings: QSettings, key: str, default: int) -> int:
    """An integer setting; ``default`` when it is missing or not a number (an edited settings file)."""
    try:
        return int(str(settings.value(key, default)))
    except ValueError:
        return default


class RunToolbar(QToolBar):
    """Source, recipe, Start/Pause/Stop, heatmap and its opacity, lot number, kiosk.

    Args:
        actions: the window's actions shown on the bar.
        recipes: recipe files offered in the recipe box (its item data is the path as text).
    """

    def __init__(self, actions: RunActions, recipes: Sequence[Path], parent: QWidget | None = None) -> None:
        super().__init__("Run", parent)
        self._run_actions = actions
        self.setObjectName("runToolbar")
        self.setMovable(False)
        self.setStyleSheet("QToolBar { spacing: 6px; } QToolButton { font-size: 15px; padding: 4px 10px; }")
        self.addWidget(QLabel(" Source "))
        self.source_box = QComboBox()
        self.source_box.setEditable(True)
        self.source_box.setMinimumContentsLength(18)
        self.source_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.source_box.setToolTip('Camera index ("0"), stream URL ("rtsp://…"), video file or image folder; '
                                   "empty: the recipe's own source")
        line = self.source_box.lineEdit()
        if line is not None:
            line.setPlaceholderText("empty: the recipe's source")
        self.addWidget(self.source_box)
        self.addAction(actions.open_folder)
        self.addAction(actions.open_video)
        self.addSeparator()
        self.addWidget(QLabel(" Recipe "))
        self.recipe_box = QComboBox()
        self.recipe_box.setMinimumContentsLength(12)
        for path in recipes:
            self.recipe_box.addItem(path.stem, str(path))
        self.addWidget(self.recipe_box)
        self.addSeparator()
        for action in (actions.start, actions.pause, actions.stop):
            self.addAction(action)
        self.addSeparator()
        self.addAction(actions.heatmap)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(DEFAULT_OPACITY)
        self.opacity_slider.setFixedWidth(110)
        self.opacity_slider.setToolTip("Heatmap opacity ([ and ])")
        self.addWidget(self.opacity_slider)
        self.addSeparator()
        self.addWidget(QLabel(" Lot "))
        self.lot_edit = QLineEdit()
        self.lot_edit.setPlaceholderText("lot number")
        self.lot_edit.setMaximumWidth(140)
        self.addWidget(self.lot_edit)
        self.addAction(actions.new_lot)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.addWidget(spacer)
        self.addAction(actions.kiosk)

    # ------------------------------------------------------------------------------ choices
    @property
    def current_recipe(self) -> Path | None:
        data = self.recipe_box.currentData()
        return Path(str(data)) if data else None

    @property
    def source_text(self) -> str:
        return self.source_box.currentText().strip()

    def set_source_text(self, text: str) -> None:
        """Show ``text`` in the source box, remembered in its history."""
        self.remember_source(text)
        self.source_box.setCurrentText(text)

    def remember_source(self, text: str) -> None:
        if text and self.source_box.findText(text) < 0:
            self.source_box.addItem(text)

    def recipe_index(self, recipe: Path) -> int:
        """The recipe's row in the recipe box, added at the end when new."""
        index = self.recipe_box.findData(str(recipe))
        if index < 0:
            self.recipe_box.addItem(recipe.stem, str(recipe))
            index = self.recipe_box.count() - 1
        return index

    def select_quietly(self, recipe: Path | None) -> None:
        """Show ``recipe`` in the recipe box without emitting a change (no switch is asked for)."""
        if recipe is None:
            return
        index = self.recipe_box.findData(str(recipe))
        if index >= 0 and index != self.recipe_box.currentIndex():
            self.recipe_box.blockSignals(True)
            self.recipe_box.setCurrentIndex(index)
            self.recipe_box.blockSignals(False)

    def next_recipe(self) -> None:
        """Select the next recipe (wrapping), when there is a choice and the box is enabled."""
        box = self.recipe_box
        if box.count() > 1 and box.isEnabled():
            box.setCurrentIndex((box.currentIndex() + 1) % box.count())

    # ----------------------------------------------------------------------------- settings
    def restore(self, settings: QSettings, source: str | None) -> None:
        """The choices of the last session; ``source`` (given on the command line) wins over them."""
        history = settings.value("station/sources") or []
        if isinstance(history, str):            # QSettings gives a one-item list back as its item
            history = [history]
        for text in history if isinstance(history, list) else []:
            self.remember_source(str(text))
        remembered = str(settings.value("station/source", "") or "")
        self.source_box.setCurrentText(source if source is not None else remembered)
        index = self.recipe_box.findData(str(settings.value("station/recipe", "") or ""))
        if index >= 0 and source is None:
            self.recipe_box.setCurrentIndex(index)
        self._run_actions.heatmap.setChecked(str(settings.value("station/heatmap", "true")).lower() != "false")
        opacity = _int_setting(settings, "station/opacity", DEFAULT_OPACITY)
        # a heatmap turned (almost) invisible by one operator must not greet the next one
        self.opacity_slider.setValue(opacity if opacity >= MIN_REMEMBERED_OPACITY else DEFAULT_OPACITY)
        # the lot goes on after a restart (a power cut mid-lot left its results without a lot number)
        self.lot_edit.setText(str(settings.value(LOT_SETTING, "") or ""))

    def save(self, settings: QSettings) -> None:
        """Remember the source (and the last few), the recipe, the heatmap switch and its opacity, the lot."""
        settings.setValue("station/source", self.source_box.currentText())
        sources = [self.source_box.itemText(i) for i in range(self.source_box.count())][-SOURCE_HISTORY:]
        settings.setValue("station/sources", sources)
        if self.current_recipe is not None:
            settings.setValue("station/recipe", str(self.current_recipe))
        settings.setValue("station/heatmap", "true" if self._run_actions.heatmap.isChecked() else "false")
        settings.setValue("station/opacity", self.opacity_slider.value())
        settings.setValue(LOT_SETTING, self.lot_edit.text().strip())
