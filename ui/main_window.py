"""The main window: station screen, statistics, review and teaching, and the run controls.

The run state, the pipeline, the recorder and the recipe actually loaded belong to an
`inspector.controller.StationController`; the window sends it intents (start / pause / stop /
switch recipe) and renders the typed events it sends back through a `PipelineBridge`. Every intent
returns at once (loading, opening and stopping run on the controller's threads), so the GUI never
blocks on a camera, on torch or on a slow detector. Closing the window stops every thread.

The verdict banner shows a verdict only for the frame being inspected now; in every other state it is
grey (PAUSED, STOPPING, STOPPED, SOURCE ENDED, FAULT). A result finished after Pause or Stop is
counted and recorded, never shown as current. Stop asks for a second press (Esc Esc) while running,
and single-key shortcuts never fire while a text field has the focus.

Engine entry points are injectable (``load_inspector``, ``make_pipeline``, ``open_source``), so tests
can drive the real pipeline with a cheap stand-in inspector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPlainTextEdit,
    QSizePolicy,
    QSlider,
    QTabWidget,
    QTextEdit,
    QToolBar,
    QWidget,
)

from inspector.controller import (
    CAN_START,
    ControllerEvent,
    Notice,
    RecipeSwitchFailed,
    ResultArrived,
    RunState,
    StartFailed,
    StateChanged,
    StationController,
    StationSnapshot,
)
from inspector.errors import CaptureError, ModelError, RecipeError, WeightsNotFound
from inspector.pipeline import EventKind
from inspector.recording import ResultRecorder
from inspector.results import InspectionResult, Progress
from ui.live_view import LotCounts, short_source
from ui.station_view import StationView
from ui.workers import JobRunner, PipelineBridge

__all__ = ["MainWindow", "RunState"]    # RunState is inspector.controller's, re-exported for callers

log = logging.getLogger(__name__)

STATS_INTERVAL_MS = 250        # counters and rates refresh at 4 Hz: fast enough to feel live, cheap to paint
SCREEN_REFRESH_TICKS = 20      # the statistics screen, when shown, re-queries the store every 5 s (20 ticks)
JOB_SHUTDOWN_MS = 60_000       # close waits this long for a job without yields (torch import, model load)
STOP_CONFIRM_MS = 3000         # a second Stop (Esc) within this time confirms the first (ours: long enough
                               # to read the prompt, short enough that a stray Esc later does nothing)
MIN_REMEMBERED_OPACITY = 20    # a heatmap opacity below this % is not carried into the next session
DEFAULT_OPACITY = 60           # % (ours: the defect reads clearly, the part stays visible under it)

# What the grey banner says in each state that shows no verdict: (word, detail).
IDLE_BANNER: dict[RunState, tuple[str, str]] = {
    RunState.READY: ("READY", "choose a source and press Start (F5)"),
    RunState.STARTING: ("STARTING", ""),
    RunState.RUNNING: ("RUNNING", "waiting for the first part"),
    RunState.PAUSED: ("PAUSED", "Space to resume"),
    RunState.STOPPING: ("STOPPING", "finishing the part under inspection"),
    RunState.STOPPED: ("STOPPED", "F5 to start"),
    RunState.SOURCE_ENDED: ("SOURCE ENDED", "every image was inspected; F5 to run again"),
    RunState.FAULT: ("FAULT", "fix the fault above, then F5"),
}
# Widgets where a key is text: single-key shortcuts (Esc, Space, H, [ ]) never fire from them.
TEXT_WIDGETS = (QLineEdit, QTextEdit, QPlainTextEdit, QAbstractSpinBox)


def _default_load_inspector(recipe_path: Path) -> Any:
    """Load a recipe and its trained model as a `FrameInspector` (the real `Station`)."""
    from inspector.recipe import load_recipe
    from inspector.station import Station

    return Station.load(load_recipe(recipe_path))


def _default_open_source(text: str) -> Any:
    from inspector.capture import open_source, parse_source

    return open_source(parse_source(text))


def _thresholds(inspector: Any) -> tuple[float | None, float | None, float | None]:
    """(review, fail, pixel) of an inspector: `Station.thresholds` is that tuple; None where unknown."""
    value = getattr(inspector, "thresholds", None)
    if isinstance(value, tuple) and len(value) == 3:
        return value
    if value is None:
        return None, None, None
    return getattr(value, "review", None), getattr(value, "fail", None), getattr(value, "pixel", None)


def _recipe_source(inspector: Any) -> Any:
    """The source a recipe names (used when the source box is empty)."""
    recipe = getattr(inspector, "recipe", None)
    if recipe is None or not hasattr(recipe, "resolved_source"):
        msg = "no source: type a camera index, a stream URL, or pick a folder or video"
        raise CaptureError(msg)
    from inspector.capture import open_source

    return open_source(recipe.resolved_source())


class MainWindow(QMainWindow):
    """The inspection station's window.

    Args:
        recipes: recipe files offered in the recipe selector (the first is selected unless the
            settings remember another).
        source: source text for the source selector ("0", "rtsp://...", a video or folder path).
        store: an `inspector.store.Store` (results are recorded into it by the pipeline, and the
            statistics and review screens read it), or None to run without one.
        settings: where window layout and choices are remembered; tests pass one in tmp_path.
        load_inspector: recipe path -> `FrameInspector`; default loads the real `Station`.
        open_source: source text -> `FrameSource`; default `inspector.capture`.
        make_pipeline: builds the pipeline; default `inspector.pipeline.Pipeline`.
        kiosk: start full screen with only the station screen.
    """

    def __init__(
        self,
        *,
        recipes: Sequence[Path] = (),
        source: str | None = None,
        store: Any | None = None,
        settings: QSettings | None = None,
        load_inspector: Callable[[Path], Any] | None = None,
        open_source: Callable[[str], Any] | None = None,
        make_pipeline: Callable[..., Any] | None = None,
        kiosk: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Inspector — visual inspection station")
        self._settings = settings if settings is not None else QSettings("inspector", "inspector-gui")
        self._store = store
        self._open_source = open_source or _default_open_source
        self._recipes = [Path(p) for p in recipes]
        self._snapshot = StationSnapshot(state=RunState.READY)   # the controller's, as last rendered
        self._applied: Any | None = None       # the inspector whose warnings and thresholds are shown
        self._counts = LotCounts()
        self._closing = False
        self._ticks = 0
        self._stop_armed_until = 0.0   # time.monotonic() until which a second Stop confirms the first

        self.bridge = PipelineBridge(self)
        self.bridge.station_event.connect(self._on_station_event)
        self.bridge.warning.connect(self._on_warning)
        self.recorder = ResultRecorder(store, on_warning=self.bridge.on_warning)
        self.controller = StationController(
            load_inspector=load_inspector or _default_load_inspector,
            open_source=self._open_source,
            recipe_source=_recipe_source,
            recorder=self.recorder,
            on_event=self.bridge.on_station_event,
            make_pipeline=make_pipeline,
        )
        # Called with each result once it is durable, before it is shown: MQTT (ui/link_status.py).
        self.line_consumers: list[Callable[[Any], None]] = self.controller.after_record
        self.jobs = JobRunner(self)
        self.jobs.finished.connect(self._on_job_finished)
        self.jobs.raised.connect(self._on_job_raised)
        self.jobs.progress.connect(self._on_job_progress)

        self.station = StationView()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.station, "Station")
        self.statistics = None
        self.review = None
        self.teach = None
        self._build_screens()
        self.setCentralWidget(self.tabs)
        self._build_actions()
        self._build_toolbar()
        self._status = QLabel("")
        self.statusBar().addWidget(self._status, 1)
        self.store_status = QLabel("")          # "Store offline: N waiting" while the store is away
        self.store_status.setObjectName("storeStatus")
        self.store_status.setStyleSheet("QLabel#storeStatus { color: #b45309; font-weight: bold; }")
        self.store_status.setVisible(False)
        self.statusBar().addPermanentWidget(self.store_status)

        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self._on_stats_tick)
        self._stats_timer.start()

        self._restore_settings(source)
        self._update_controls()
        self._update_info()
        if kiosk:
            self.set_kiosk(True)

    # ---------------------------------------------------------------------------------- build
    def _build_screens(self) -> None:
        from ui.review_view import ReviewView
        from ui.stats_view import StatisticsView
        from ui.teach_wizard import TeachPage

        self.statistics = StatisticsView(self._store)
        self.review = ReviewView(self._store, feedback_runner=self._run_feedback,
                                 recipe_lookup=self._recipe_file, defect_classes=self._defect_classes_of,
                                 recipes=self._recipe_list, on_model_changed=self.controller.forget)
        self.teach = TeachPage(recipes=self._recipes, open_source=self._open_source)
        self.tabs.addTab(self.statistics, "Statistics")
        self.tabs.addTab(self.review, "Review")
        self.tabs.addTab(self.teach, "Teach")
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.teach.taught.connect(self._on_taught)

    def _action(self, text: str, shortcut: str | QKeySequence.StandardKey | None, slot: Callable[..., Any],
                *, checkable: bool = False, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.setCheckable(checkable)
        label = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setToolTip(f"{tip or text} ({label})" if label else (tip or text))
        (action.toggled if checkable else action.triggered).connect(slot)
        self.addAction(action)            # shortcuts work even when the toolbar is hidden (kiosk)
        return action

    def _build_actions(self) -> None:
        self.act_start = self._action("Start", "F5", self.start, tip="Start inspecting")
        self.act_pause = self._action("Pause", "Space", self._on_pause_key, tip="Pause / resume")
        self.act_stop = self._action("Stop", "Esc", self.request_stop,
                                     tip="Stop inspecting: press twice while running")
        self.act_heatmap = self._action("Heatmap", "H", self._on_heatmap_toggled, checkable=True,
                                        tip="Show the anomaly heatmap")
        self.act_heatmap.setChecked(True)
        self.act_more = self._action("Opacity +", "]", self._on_opacity_up)
        self.act_less = self._action("Opacity −", "[", self._on_opacity_down)
        self.act_kiosk = self._action("Kiosk", "F11", self.set_kiosk, checkable=True,
                                      tip="Full-screen kiosk mode")
        self.act_new_lot = self._action("New lot", "Ctrl+N", self.new_lot, tip="Reset the lot counters")
        self.act_next_recipe = self._action("Next recipe", "Ctrl+R", self._on_next_recipe)
        self.act_open_folder = self._action("Folder…", "Ctrl+O", self._on_open_folder,
                                            tip="Replay an image folder")
        self.act_open_video = self._action("Video…", "Ctrl+Shift+O", self._on_open_video,
                                           tip="Play a video file")
        self.act_refresh = self._action("Refresh", "Ctrl+F5", self._on_refresh,
                                        tip="Refresh statistics / review")
        self.act_quit = self._action("Quit", "Ctrl+Q", self.close)
        for index in range(4):
            self._action(f"Screen {index + 1}", f"Ctrl+{index + 1}", self._on_screen_shortcut)

    def _build_toolbar(self) -> None:
        bar = QToolBar("Run")
        bar.setObjectName("runToolbar")
        bar.setMovable(False)
        bar.setStyleSheet("QToolBar { spacing: 6px; } QToolButton { font-size: 15px; padding: 4px 10px; }")
        bar.addWidget(QLabel(" Source "))
        self.source_box = QComboBox()
        self.source_box.setEditable(True)
        self.source_box.setMinimumContentsLength(18)
        self.source_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.source_box.setToolTip('Camera index ("0"), stream URL ("rtsp://…"), video file or image folder; '
                                   "empty: the recipe's own source")
        self.source_box.lineEdit().setPlaceholderText("empty: the recipe's source")
        bar.addWidget(self.source_box)
        bar.addAction(self.act_open_folder)
        bar.addAction(self.act_open_video)
        bar.addSeparator()
        bar.addWidget(QLabel(" Recipe "))
        self.recipe_box = QComboBox()
        self.recipe_box.setMinimumContentsLength(12)
        for path in self._recipes:
            self.recipe_box.addItem(path.stem, str(path))
        self.recipe_box.currentIndexChanged.connect(self._on_recipe_changed)
        bar.addWidget(self.recipe_box)
        bar.addSeparator()
        bar.addAction(self.act_start)
        bar.addAction(self.act_pause)
        bar.addAction(self.act_stop)
        bar.addSeparator()
        bar.addAction(self.act_heatmap)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(DEFAULT_OPACITY)
        self.opacity_slider.setFixedWidth(110)
        self.opacity_slider.setToolTip("Heatmap opacity ([ and ])")
        self.opacity_slider.valueChanged.connect(self._on_opacity_changed)
        bar.addWidget(self.opacity_slider)
        bar.addSeparator()
        bar.addWidget(QLabel(" Lot "))
        self.lot_edit = QLineEdit()
        self.lot_edit.setPlaceholderText("lot number")
        self.lot_edit.setMaximumWidth(140)
        self.lot_edit.editingFinished.connect(self._on_lot_edited)
        bar.addWidget(self.lot_edit)
        bar.addAction(self.act_new_lot)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        bar.addWidget(spacer)
        bar.addAction(self.act_kiosk)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)
        self.toolbar = bar

    # ------------------------------------------------------------------------------- settings
    def _restore_settings(self, source: str | None) -> None:
        s = self._settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 860)
        state = s.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        splitter = s.value("station/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.station.splitter.restoreState(splitter)
        history = s.value("station/sources") or []
        if isinstance(history, str):
            history = [history]
        for text in history:
            if self.source_box.findText(str(text)) < 0:
                self.source_box.addItem(str(text))
        remembered = str(s.value("station/source", "") or "")
        self.source_box.setCurrentText(source if source is not None else remembered)
        recipe = str(s.value("station/recipe", "") or "")
        index = self.recipe_box.findData(recipe)
        if index >= 0 and source is None:
            self.recipe_box.setCurrentIndex(index)
        self.act_heatmap.setChecked(str(s.value("station/heatmap", "true")).lower() != "false")
        opacity = int(s.value("station/opacity", DEFAULT_OPACITY))
        # a heatmap turned (almost) invisible by one operator must not greet the next one
        self.opacity_slider.setValue(opacity if opacity >= MIN_REMEMBERED_OPACITY else DEFAULT_OPACITY)
        self.tabs.setCurrentIndex(0)

    def save_settings(self) -> None:
        """Remember window layout and the operator's choices (geometry, splitter, source, recipe, heatmap)."""
        s = self._settings
        if not self.isFullScreen():
            s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("station/splitter", self.station.splitter.saveState())
        s.setValue("station/source", self.source_box.currentText())
        sources = [self.source_box.itemText(i) for i in range(self.source_box.count())][-10:]
        s.setValue("station/sources", sources)
        if self.current_recipe is not None:
            s.setValue("station/recipe", str(self.current_recipe))
        s.setValue("station/heatmap", "true" if self.act_heatmap.isChecked() else "false")
        s.setValue("station/opacity", self.opacity_slider.value())
        s.sync()

    # ------------------------------------------------------------------------------ properties
    @property
    def state(self) -> RunState:
        """The controller's run state, as last rendered."""
        return self._snapshot.state

    @property
    def counts(self) -> LotCounts:
        return self._counts

    @property
    def pipeline(self) -> Any | None:
        return self.controller.pipeline

    @property
    def current_recipe(self) -> Path | None:
        data = self.recipe_box.currentData()
        return Path(data) if data else None

    def set_source_text(self, text: str) -> None:
        if self.source_box.findText(text) < 0:
            self.source_box.addItem(text)
        self.source_box.setCurrentText(text)

    def select_recipe(self, recipe: Path | str) -> None:
        """Select a recipe (added to the selector if new); switches the running pipeline to it."""
        path = Path(recipe)
        index = self.recipe_box.findData(str(path))
        if index < 0:
            self._recipes.append(path)
            self.recipe_box.addItem(path.stem, str(path))
            index = self.recipe_box.count() - 1
        self.recipe_box.setCurrentIndex(index)

    # ----------------------------------------------------------------------------- run control
    @Slot()
    def start(self) -> None:
        """Start inspecting (F5); resumes when paused."""
        if self.state is RunState.PAUSED:
            self.resume()
            return
        if self.state not in CAN_START:
            return
        recipe = self.current_recipe
        text = self.source_box.currentText().strip()
        if recipe is None:
            self._show_fault("recipe",
                             "No recipe selected: choose one in the Recipe box, or teach one (Teach tab)")
            return
        for key in ("camera", "recipe", "model", "source"):
            self.station.faults.clear_fault(key)
        if text and self.source_box.findText(text) < 0:
            self.source_box.addItem(text)
        self.controller.start(recipe, source_text=text)

    @Slot()
    def toggle_pause(self) -> None:
        """Pause or resume."""
        if self.state is RunState.RUNNING:
            self.pause()
        elif self.state is RunState.PAUSED:
            self.resume()

    def pause(self) -> None:
        """Take no new frames; returns at once (queued folder images are held, not skipped)."""
        self.controller.pause()

    def resume(self) -> None:
        self.controller.resume()

    @Slot()
    def request_stop(self) -> None:
        """Stop (Esc, the Stop button): while running, the first press asks and a second one stops.

        Esc typed in a text field (the lot number, the source) only leaves the field.
        """
        if self._text_has_focus():
            focus = QApplication.focusWidget()
            if focus is not None:
                focus.clearFocus()
            self._status.setText("Esc left the text field; it did not stop the line")
            return
        if self.state in (RunState.RUNNING, RunState.PAUSED):
            now = time.monotonic()
            if now > self._stop_armed_until:
                self._stop_armed_until = now + STOP_CONFIRM_MS / 1000
                self._status.setText(f"Press Stop (Esc) again within {STOP_CONFIRM_MS // 1000} s to stop")
                self.station.faults.set_fault(
                    "stop", "Stop the line? Press Stop (Esc) again to confirm.", level="info")
                QTimer.singleShot(STOP_CONFIRM_MS, self._on_stop_prompt_expired)
                return
        self.stop()

    @Slot()
    def stop(self) -> None:
        """Stop at once (no confirmation): returns immediately; the threads end on the controller's."""
        self._stop_armed_until = 0.0
        self.station.faults.clear_fault("stop")
        self.controller.stop()

    @Slot()
    def _on_stop_prompt_expired(self) -> None:
        if time.monotonic() >= self._stop_armed_until:
            self.station.faults.clear_fault("stop")

    def _text_has_focus(self) -> bool:
        """True when the keyboard focus is in a text field, where Esc / Space / H / [ ] are text."""
        focus = QApplication.focusWidget()
        if isinstance(focus, TEXT_WIDGETS):
            return True
        return isinstance(focus, QComboBox) and focus.isEditable()

    @Slot()
    def _on_pause_key(self) -> None:
        if not self._text_has_focus():
            self.toggle_pause()

    @Slot()
    def new_lot(self) -> None:
        """Reset the lot counters and the verdict strip (Ctrl+N)."""
        self._counts = LotCounts()
        self.station.strip.clear()
        self.station.set_counts(self._counts)
        self._status.setText("New lot: counters reset")

    @Slot(bool)
    def set_kiosk(self, on: bool) -> None:
        """Full-screen kiosk mode (F11): station screen only, no toolbar or tabs."""
        if self.act_kiosk.isChecked() != on:
            self.act_kiosk.setChecked(on)   # re-enters through toggled
            return
        self.toolbar.setVisible(not on)
        self.statusBar().setVisible(not on)
        self.tabs.tabBar().setVisible(not on)
        self.station.set_kiosk(on)
        if on:
            self.tabs.setCurrentWidget(self.station)
            self.showFullScreen()
        else:
            self.showNormal()

    # --------------------------------------------------------------------------- job results
    @Slot(object)
    def _on_job_progress(self, progress: Progress) -> None:
        self._status.setText(progress.message)

    @Slot(object)
    def _on_job_finished(self, value: Any) -> None:
        if self.jobs.name == "feedback" and self.review is not None:
            current = self.review.current
            recipe = self._recipe_file(current.recipe) if current is not None else None
            if recipe is not None:
                self.controller.forget(recipe)    # reloaded with the new version on the next start
            self.review.on_feedback_done(value)

    @Slot(object)
    def _on_job_raised(self, exc: BaseException) -> None:
        if self.jobs.name == "feedback" and self.review is not None:
            text = str(exc) or type(exc).__name__
            self.review.on_feedback_failed(f"{type(exc).__name__}: {text}")

    def _show_start_failure(self, failed: StartFailed) -> None:
        """Name what failed to start and how to fix it."""
        exc = failed.error
        text = str(exc) or type(exc).__name__
        if isinstance(exc, WeightsNotFound):
            self._show_fault("model", f"DINOv2 weights missing: {text}")
        elif isinstance(exc, ModelError):
            self._show_fault("model", f"Model missing for recipe {failed.recipe.stem}: {text} — or use the Teach tab.")
        elif isinstance(exc, RecipeError):
            self._show_fault("recipe", f"Recipe problem: {text}")
        elif isinstance(exc, CaptureError):
            self._show_fault("camera", f"Cannot open the source: {text}")
        else:
            self._show_fault("source", f"Cannot start: {type(exc).__name__}: {text}")

    def _apply_inspector(self, inspector: Any) -> None:
        """Show what the inspector says about itself: warnings (GPU unavailable), thresholds (heat range)."""
        warnings = tuple(getattr(inspector, "warnings", ()) or ())
        gpu = [w for w in warnings if "gpu" in w.lower() or "cuda" in w.lower()]
        other = [w for w in warnings if w not in gpu]
        if gpu:
            self._show_fault("gpu", "; ".join(gpu), level="warning")
        else:
            self.station.faults.clear_fault("gpu")
        if other:
            self._show_fault("warning", "; ".join(other), level="warning")
        else:
            self.station.faults.clear_fault("warning")
        self.station.faults.clear_fault("model")
        review, fail, pixel = _thresholds(inspector)
        if self.statistics is not None:
            self.statistics.set_thresholds(review, fail)
        if pixel is not None and pixel > 0:
            # transparent at half the pixel threshold, opaque red at 1.5x (as the archive's overlays):
            # defects stand out, good parts stay clear
            self.station.heatmap.set_heat_range(0.5 * float(pixel), 1.5 * float(pixel))

    # ---------------------------------------------------------------------------- engine data
    @Slot(object)
    def _on_station_event(self, event: ControllerEvent) -> None:
        """Render one controller event (GUI thread)."""
        if self._closing:
            return
        if isinstance(event, StateChanged):
            # events from the controller's threads may arrive after a newer state set on this one:
            # render the controller's state now, not the one the event carried
            self._render_state(self.controller.snapshot)
        elif isinstance(event, ResultArrived):
            self._on_result(event.result, current=event.current)
        elif isinstance(event, Notice):
            self._on_notice(event)
        elif isinstance(event, StartFailed):
            self._show_start_failure(event)
        elif isinstance(event, RecipeSwitchFailed):
            self._on_switch_failed(event)

    def _render_state(self, snapshot: StationSnapshot) -> None:
        if snapshot is self._snapshot:
            return
        previous, self._snapshot = self._snapshot, snapshot
        state = snapshot.state
        inspector = self.controller.inspector
        if inspector is not None and inspector is not self._applied:
            # a run may even have ended before this thread heard it started: apply what was loaded anyway
            self._applied = inspector
            self._apply_inspector(inspector)
            self._select_quietly(snapshot.recipe)
        if state is RunState.RUNNING:
            if previous.state is not RunState.RUNNING:
                word, detail = IDLE_BANNER[state]
                self.station.show_idle(word, detail)
        else:
            word, detail = IDLE_BANNER[state]
            if state is RunState.STARTING:
                detail = snapshot.message
            elif state is RunState.SOURCE_ENDED and snapshot.message:
                detail = f"{snapshot.message}; F5 to run again"
            self.station.show_idle(word, detail)
        if state not in (RunState.RUNNING, RunState.PAUSED, RunState.STARTING):
            self.station.faults.clear_fault("stop")
            self._stop_armed_until = 0.0
        if snapshot.message:
            self._status.setText(snapshot.message)
        self._update_controls()
        self._update_info()

    def _on_result(self, result: InspectionResult, *, current: bool) -> None:
        self._counts = self._counts.add(result.verdict)
        if current and self.state is RunState.RUNNING:     # Pause may have come since it was sent
            self.station.show_result(result)        # banner, heatmap and the verdict strip
        else:
            self.station.strip.add(result.verdict)  # history only: the banner stays grey
            self._status.setText(f"frame {result.frame_id} finished after {self.state.value.replace('_', ' ')}: "
                                 f"{result.verdict.value}, recorded (not shown as current)")

    def _on_notice(self, notice: Notice) -> None:
        kind, message = notice.kind, notice.message
        if kind is EventKind.SOURCE_LOST:
            self._show_fault("camera", f"Camera lost — reconnecting… {message}".strip())
        elif kind is EventKind.SOURCE_RECONNECTED:
            self.station.faults.clear_fault("camera")
            self._status.setText(f"Camera reconnected. {message}".strip())
        elif kind is EventKind.SOURCE_FAILED:
            self._show_fault("camera", f"Source failed: {message}. Check the camera, cable or path, then F5.")
        elif kind is EventKind.WARNING:
            self._show_fault("warning", message, level="warning")
        else:
            self._status.setText(message)

    def _on_switch_failed(self, failed: RecipeSwitchFailed) -> None:
        """The selector goes back to the recipe that runs; the banner says why."""
        running = failed.running
        self._select_quietly(running)
        self.recipe_box.setEnabled(True)
        goes_on = f"{running.stem} goes on inspecting" if running is not None else "nothing changed"
        self._show_fault("recipe", f"Cannot switch to recipe {failed.requested.stem}: {failed.reason}. {goes_on}.")
        self._update_info()

    def _select_quietly(self, recipe: Path | None) -> None:
        """Show ``recipe`` in the selector without asking for a switch."""
        if recipe is None:
            return
        index = self.recipe_box.findData(str(recipe))
        if index >= 0 and index != self.recipe_box.currentIndex():
            self.recipe_box.blockSignals(True)
            self.recipe_box.setCurrentIndex(index)
            self.recipe_box.blockSignals(False)

    @Slot()
    def _on_stats_tick(self) -> None:
        self.station.set_counts(self._counts)
        self._update_store_status()
        self._ticks += 1
        pipeline = self.controller.pipeline
        if (self._ticks % SCREEN_REFRESH_TICKS == 0 and pipeline is not None
                and self.tabs.currentWidget() is self.statistics):
            self.statistics.refresh()
        if pipeline is None and self.state is not RunState.STOPPING:
            self.station.yield_panel.set_metrics(None)
            return
        try:
            metrics = self.controller.metrics()
        except Exception:
            log.exception("reading the line metrics failed")
            return
        self.station.yield_panel.set_metrics(metrics)

    def _update_store_status(self) -> None:
        """Say so while results wait in the local journal because the statistics store does not take them."""
        error = self.recorder.last_error
        waiting = self.recorder.pending
        if error is None:
            self.store_status.setVisible(False)
            return
        self.store_status.setText(f"Store offline: {waiting} waiting")
        self.store_status.setToolTip(f"Results are kept in {self.recorder.journal_path} and sent in order when "
                                     f"the store is back.\n{error}")
        self.store_status.setVisible(True)

    # ------------------------------------------------------------------------------- controls
    def _update_controls(self) -> None:
        state = self.state
        idle = state in CAN_START
        self.act_start.setEnabled(idle or state is RunState.PAUSED)
        self.act_pause.setEnabled(state in (RunState.RUNNING, RunState.PAUSED))
        self.act_pause.setText("Resume" if state is RunState.PAUSED else "Pause")
        self.act_stop.setEnabled(state in (RunState.STARTING, RunState.RUNNING, RunState.PAUSED))
        self.source_box.setEnabled(idle)
        self.act_open_folder.setEnabled(idle)
        self.act_open_video.setEnabled(idle)
        self.recipe_box.setEnabled(state is not RunState.STARTING and state is not RunState.STOPPING)

    def _update_info(self) -> None:
        """The footer: what actually runs (the controller's recipe, model, device and source)."""
        snap = self._snapshot
        active = snap.state in (RunState.STARTING, RunState.RUNNING, RunState.PAUSED, RunState.STOPPING)
        if snap.recipe is not None and (active or snap.recipe == self.current_recipe):
            parts = [f"Recipe: {snap.recipe.stem}"]
            if snap.model_version:
                parts.append(f"model {snap.model_version}")
            if snap.device:
                parts.append(f"on {snap.device}")
            parts.append(f"Source: {short_source(snap.source) if snap.source else '—'}")
        else:
            recipe = self.current_recipe
            parts = [f"Recipe: {recipe.stem if recipe else '—'} (selected)"]
            text = self.source_box.currentText().strip()
            parts.append(f"Source: {text or 'of the recipe'}")
        parts.append(f"State: {snap.state.value.replace('_', ' ')}")
        self.station.set_info("   ·   ".join(parts))

    def _show_fault(self, key: str, text: str, *, level: str = "error") -> None:
        self.station.faults.set_fault(key, text, level=level)
        self._status.setText(text)

    @Slot(int)
    def _on_recipe_changed(self, index: int) -> None:
        """The operator picked a recipe: while running, ask the controller to switch (it may refuse)."""
        recipe = self.current_recipe
        if recipe is not None and self.state in (RunState.RUNNING, RunState.PAUSED):
            self.station.faults.clear_fault("recipe")
            self._status.setText(f"Loading recipe {recipe.stem}; the running recipe goes on until it is ready")
            self.controller.switch_recipe(recipe)
        self._update_info()

    @Slot()
    def _on_next_recipe(self) -> None:
        if self.recipe_box.count() > 1 and self.recipe_box.isEnabled():
            self.recipe_box.setCurrentIndex((self.recipe_box.currentIndex() + 1) % self.recipe_box.count())

    @Slot(bool)
    def _on_heatmap_toggled(self, on: bool) -> None:
        self.station.heatmap.set_heatmap_visible(on)

    @Slot(int)
    def _on_opacity_changed(self, value: int) -> None:
        self.station.heatmap.set_opacity(value / 100.0)

    @Slot()
    def _on_opacity_up(self) -> None:
        self.opacity_slider.setValue(self.opacity_slider.value() + 10)

    @Slot()
    def _on_opacity_down(self) -> None:
        self.opacity_slider.setValue(self.opacity_slider.value() - 10)

    @Slot()
    def _on_open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Replay an image folder")
        if folder:
            self.set_source_text(folder)

    @Slot()
    def _on_open_video(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Play a video file", "",
                                              "Videos (*.mp4 *.avi *.mkv *.mov);;All (*)")
        if path:
            self.set_source_text(path)

    @Slot()
    def _on_screen_shortcut(self) -> None:
        action = self.sender()
        if isinstance(action, QAction) and not self.act_kiosk.isChecked():
            index = int(action.text().split()[-1]) - 1
            if index < self.tabs.count():
                self.tabs.setCurrentIndex(index)

    @Slot(int)
    def _on_tab_changed(self, index: int) -> None:
        widget = self.tabs.widget(index)
        if widget is self.statistics or widget is self.review:
            widget.refresh()

    @Slot()
    def _on_lot_edited(self) -> None:
        self.recorder.set_lot(self.lot_edit.text())
        self._status.setText(f"Lot: {self.recorder.lot or '(none)'}")

    @Slot(str)
    def _on_warning(self, text: str) -> None:
        self._show_fault("warning", text, level="warning")

    def _recipe_file(self, name: str) -> Path | None:
        """The recipe file of a recipe name (file stem first, then the name inside each file)."""
        for path in self._recipes:
            if path.stem == name:
                return path
        for path in self._recipes:
            inspector = self.controller.loaded(path)
            if getattr(inspector, "name", None) == name:
                return path
        return None

    def _recipe_list(self) -> list[Path]:
        return list(self._recipes)

    def _defect_classes_of(self, name: str) -> tuple[str, ...]:
        """The recipe's own defect classes (read from its file when its model is not loaded)."""
        from ui.review_view import DEFAULT_DEFECT_CLASSES

        path = self._recipe_file(name)
        if path is None:
            return DEFAULT_DEFECT_CLASSES
        recipe = getattr(self.controller.loaded(path), "recipe", None)
        if recipe is None:
            from inspector.recipe import load_recipe

            try:
                recipe = load_recipe(path)
            except Exception as exc:           # a broken file: say so, offer the generic classes
                log.warning("defect classes of %s unavailable: %s", path, exc)
                return DEFAULT_DEFECT_CLASSES
        classes = getattr(recipe, "defect_classes", None)
        return tuple(classes) if classes else DEFAULT_DEFECT_CLASSES

    @Slot(object, str)
    def _on_taught(self, recipe: Path, version: str) -> None:
        """A recipe got a new model version: forget its loaded model and offer it in the selector."""
        path = Path(recipe)
        self.controller.forget(path)
        index = self.recipe_box.findData(str(path))
        if index < 0:
            self._recipes.append(path)
            self.recipe_box.addItem(path.stem, str(path))
        self._status.setText(f"Recipe {path.stem}: model {version} ready; select it and press F5")

    @Slot()
    def _on_refresh(self) -> None:
        widget = self.tabs.currentWidget()
        if hasattr(widget, "refresh"):
            widget.refresh()

    def _run_feedback(self, job: Callable[[], Generator[Progress, None, Any]]) -> bool:
        """Run a review feedback job (e.g. teach.add_good_feedback) on the job thread; False when busy."""
        if self.jobs.running:
            return False
        self.jobs.start(job, name="feedback")
        return True

    # ---------------------------------------------------------------------------------- close
    def shutdown(self) -> None:
        """Stop the pipeline and every thread this window started (idempotent)."""
        self._closing = True
        self._stats_timer.stop()
        self.bridge.close()
        # a job cancels at its next yield; loading a model has none, so give it time to finish
        self.jobs.shutdown(timeout_ms=JOB_SHUTDOWN_MS)
        self.controller.shutdown()
        self.recorder.close()
        if self.teach is not None:
            self.teach.shutdown()
        if self.review is not None:
            self.review.shutdown()
        if self.statistics is not None:
            self.statistics.shutdown()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.save_settings()
        self.shutdown()
        super().closeEvent(event)
