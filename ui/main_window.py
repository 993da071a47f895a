"""The main window: station screen, statistics, review and teaching, and the run controls.

The window owns the live pipeline (an `inspector.pipeline.Pipeline`) and drives it from the GUI
thread: start / pause / stop / switch recipe. Results come back through a `PipelineBridge`;
opening a source and loading a recipe's model run in a `JobRunner` thread, so the GUI never
blocks on a camera or on torch. Closing the window stops the pipeline and every thread.

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
    QComboBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QSizePolicy,
    QSlider,
    QTabWidget,
    QToolBar,
    QWidget,
)

from inspector.errors import CaptureError, ModelError, RecipeError, WeightsNotFound
from inspector.recording import ResultRecorder
from inspector.results import InspectionResult, Progress
from ui.live_view import LotCounts
from ui.station_view import StationView
from ui.workers import JobRunner, PipelineBridge

__all__ = ["MainWindow", "RunState"]

log = logging.getLogger(__name__)

STATS_INTERVAL_MS = 250        # counters and fps refresh at 4 Hz: fast enough to feel live, cheap to paint
SCREEN_REFRESH_TICKS = 20      # the statistics screen, when shown, re-queries the store every 5 s (20 ticks)
JOB_SHUTDOWN_MS = 60_000       # close waits this long for a job without yields (torch import, model load)
STOP_TIMEOUT_S = 5.0           # a stop that takes longer is logged; threads are daemons in the engine


class RunState:
    """What the run controls show; plain strings so tests and the status bar can print them."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"


def _default_load_inspector(recipe_path: Path) -> Any:
    """Load a recipe and its trained model as a `FrameInspector` (the real `Station`)."""
    from inspector.recipe import load_recipe
    from inspector.station import Station

    return Station.load(load_recipe(recipe_path))


def _default_open_source(text: str) -> Any:
    from inspector.capture import open_source, parse_source

    return open_source(parse_source(text))


def _default_make_pipeline(source: Any, inspector: Any, *, consumers: list[Callable[[Any], None]],
                           on_event: Callable[[Any], None]) -> Any:
    from inspector.pipeline import Pipeline

    return Pipeline(source, inspector, consumers=consumers, on_event=on_event)


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


def _event_kind(event: Any) -> str:
    kind = getattr(event, "kind", "")
    return str(getattr(kind, "name", kind)).upper()


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
        self._load_inspector = load_inspector or _default_load_inspector
        self._open_source = open_source or _default_open_source
        self._make_pipeline = make_pipeline or _default_make_pipeline
        self._recipes = [Path(p) for p in recipes]
        self._inspectors: dict[Path, Any] = {}      # loaded once per recipe, reused on switch back
        self._pipeline: Any | None = None
        self._inspector: Any | None = None
        self._state = RunState.STOPPED
        self._counts = LotCounts()
        self._last_result_time: float | None = None
        self._closing = False
        self._source_done = False      # the pipeline's source ended or failed; stop once it has drained
        self._ticks = 0

        self.bridge = PipelineBridge(self)
        self.bridge.result_ready.connect(self._on_result)
        self.bridge.event.connect(self._on_pipeline_event)
        self.bridge.warning.connect(self._on_warning)
        self.recorder = ResultRecorder(store, on_warning=self.bridge.on_warning)
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
                                 recipes=self._recipe_list)
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
        self.act_pause = self._action("Pause", "Space", self.toggle_pause, tip="Pause / resume")
        self.act_stop = self._action("Stop", "Esc", self.stop, tip="Stop inspecting")
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
        self.source_box.setMinimumContentsLength(24)
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
        self.recipe_box.setMinimumContentsLength(16)
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
        self.opacity_slider.setValue(60)
        self.opacity_slider.setFixedWidth(110)
        self.opacity_slider.setToolTip("Heatmap opacity ([ and ])")
        self.opacity_slider.valueChanged.connect(self._on_opacity_changed)
        bar.addWidget(self.opacity_slider)
        bar.addSeparator()
        bar.addWidget(QLabel(" Lot "))
        self.lot_edit = QLineEdit()
        self.lot_edit.setPlaceholderText("lot number")
        self.lot_edit.setMaximumWidth(130)
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
        self.opacity_slider.setValue(int(s.value("station/opacity", 60)))
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
    def state(self) -> str:
        """One of `RunState`'s values."""
        return self._state

    @property
    def counts(self) -> LotCounts:
        return self._counts

    @property
    def pipeline(self) -> Any | None:
        return self._pipeline

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
        if self._state == RunState.PAUSED:
            self.resume()
            return
        if self._state != RunState.STOPPED:
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
        self._set_state(RunState.STARTING)
        where = text or "the recipe's source"
        self.station.banner.show_idle("STARTING", f"opening {where} · loading {recipe.stem}")
        self.jobs.start(self._start_job(text, recipe), name="start")

    def _start_job(self, text: str, recipe: Path) -> Callable[[], Generator[Progress, None, tuple[Any, Any]]]:
        def job() -> Generator[Progress, None, tuple[Any, Any]]:
            yield Progress(done=0, total=2, message=f"loading recipe {recipe.stem}")
            inspector = self._inspector_for(recipe)
            yield Progress(done=1, total=2, message=f"opening source {text or 'of the recipe'}")
            source = self._open_source(text) if text else _recipe_source(inspector)
            return source, inspector

        return job

    def _inspector_for(self, recipe: Path) -> Any:
        """Called on the job thread: loads (or reuses) the recipe's inspector."""
        inspector = self._inspectors.get(recipe)
        if inspector is None:
            inspector = self._load_inspector(recipe)
            self._inspectors[recipe] = inspector
        return inspector

    @Slot()
    def toggle_pause(self) -> None:
        """Pause or resume (Space)."""
        if self._state == RunState.RUNNING:
            self.pause()
        elif self._state == RunState.PAUSED:
            self.resume()

    def pause(self) -> None:
        if self._pipeline is not None and self._state == RunState.RUNNING:
            self._pipeline.pause()
            self._set_state(RunState.PAUSED)
            self.station.banner.show_idle("PAUSED", "Space to resume")

    def resume(self) -> None:
        if self._pipeline is not None and self._state == RunState.PAUSED:
            self._pipeline.resume()
            self._set_state(RunState.RUNNING)

    @Slot()
    def stop(self) -> None:
        """Stop inspecting (Esc); in kiosk mode Esc does not leave full screen (F11 does)."""
        if self._state == RunState.STARTING:
            self.jobs.cancel()
        self._stop_pipeline()
        if self._state != RunState.STOPPED:
            self._set_state(RunState.STOPPED)
            self.station.banner.show_idle("STOPPED", "F5 to start")

    def _stop_pipeline(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop(timeout=STOP_TIMEOUT_S)
            except Exception:
                log.exception("pipeline did not stop cleanly")
        self.station.yield_panel.set_stats(None)

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
        name = self.jobs.name
        if name == "start":
            source, inspector = value
            if self._state != RunState.STARTING or self._closing:
                source.close()
                return
            self._launch(source, inspector)
        elif name == "switch":
            recipe, inspector = value
            if self._pipeline is not None:
                self._pipeline.switch_inspector(inspector)
            self._inspector = inspector
            self._apply_inspector(inspector)
            self._status.setText(f"Switched to recipe {recipe.stem}")
            self.recipe_box.setEnabled(True)
        elif name == "feedback" and self.review is not None:
            current = self.review.current
            recipe = self._recipe_file(current.recipe) if current is not None else None
            if recipe is not None:
                self._inspectors.pop(recipe, None)    # reloaded with the new version on the next start
            self.review.on_feedback_done(value)

    @Slot(object)
    def _on_job_raised(self, exc: BaseException) -> None:
        name = self.jobs.name
        text = str(exc) or type(exc).__name__
        if name in ("start", "switch"):
            if isinstance(exc, WeightsNotFound):
                self._show_fault("model", f"DINOv2 weights missing: {text}")
            elif isinstance(exc, ModelError):
                recipe = self.current_recipe
                stem = recipe.stem if recipe else "?"
                self._show_fault("model",
                                 f"Model missing for recipe {stem}: {text} — or use the Teach tab.")
            elif isinstance(exc, RecipeError):
                self._show_fault("recipe", f"Recipe problem: {text}")
            elif isinstance(exc, CaptureError):
                self._show_fault("camera", f"Cannot open the source: {text}")
            else:
                self._show_fault("source", f"Cannot start: {type(exc).__name__}: {text}")
            if name == "start":
                self._set_state(RunState.STOPPED)
                self.station.banner.show_idle("STOPPED", "fix the fault above, then F5")
            self.recipe_box.setEnabled(True)
        elif name == "feedback" and self.review is not None:
            self.review.on_feedback_failed(f"{type(exc).__name__}: {text}")

    def _launch(self, source: Any, inspector: Any) -> None:
        self._inspector = inspector
        self._source_done = False
        consumers: list[Callable[[Any], None]] = [self.recorder.record, self.bridge.on_result]
        try:
            self._pipeline = self._make_pipeline(source, inspector, consumers=consumers,
                                                 on_event=self.bridge.on_event)
            self._pipeline.start()
        except Exception as exc:
            log.exception("pipeline failed to start")
            self._pipeline = None
            source.close()
            self._show_fault("source", f"Cannot start the pipeline: {type(exc).__name__}: {exc}")
            self._set_state(RunState.STOPPED)
            return
        self._apply_inspector(inspector)
        self._set_state(RunState.RUNNING)
        self.station.banner.show_idle("RUNNING", "waiting for the first part")

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
        self.recorder.use(inspector)
        review, fail, pixel = _thresholds(inspector)
        if self.statistics is not None:
            self.statistics.set_thresholds(review, fail)
        if pixel is not None and pixel > 0:
            # transparent at half the pixel threshold, opaque red at 1.5x (as the archive's overlays):
            # defects stand out, good parts stay clear
            self.station.heatmap.set_heat_range(0.5 * float(pixel), 1.5 * float(pixel))
        self._update_info()

    # ---------------------------------------------------------------------------- engine data
    @Slot(object)
    def _on_result(self, result: InspectionResult) -> None:
        if self._closing:
            return
        self._counts = self._counts.add(result.verdict)
        self._last_result_time = time.monotonic()
        self.station.show_result(result)
        if self._state == RunState.RUNNING and result.model_version:
            self._update_info(result)

    @Slot(object)
    def _on_pipeline_event(self, event: Any) -> None:
        if self._closing:
            return
        kind = _event_kind(event)
        message = str(getattr(event, "message", "") or "")
        log.info("pipeline event %s: %s", kind, message)
        if kind == "SOURCE_LOST":
            self._show_fault("camera", f"Camera lost — reconnecting… {message}".strip())
        elif kind == "SOURCE_RECONNECTED":
            self.station.faults.clear_fault("camera")
            self._status.setText(f"Camera reconnected. {message}".strip())
        elif kind == "SOURCE_FAILED":
            self._show_fault("camera", f"Source failed: {message}. Check the camera, cable or path, then F5.")
            self._source_done = True
        elif kind == "SOURCE_ENDED":
            self._source_done = True
        elif kind == "INSPECTOR_SWITCHED":
            self._status.setText(message or "Recipe switched")
        elif kind == "WARNING":
            self._show_fault("warning", message, level="warning")
        if kind != "WARNING":
            self._status.setText(f"{kind.replace('_', ' ').lower()}: {message}" if message else kind.lower())

    @Slot()
    def _on_stats_tick(self) -> None:
        self.station.set_counts(self._counts)
        self._ticks += 1
        if (self._ticks % SCREEN_REFRESH_TICKS == 0 and self._pipeline is not None
                and self.tabs.currentWidget() is self.statistics):
            self.statistics.refresh()
        if self._pipeline is None:
            return
        try:
            stats = self._pipeline.stats()
        except Exception:
            log.exception("pipeline.stats() failed")
            return
        self.station.yield_panel.set_stats(stats)
        if self._source_done and stats.state == "stopped":
            # the source ended (or failed) and the worker delivered every queued frame: join the threads
            self._stop_pipeline()
            self._set_state(RunState.STOPPED)
            self._status.setText(f"Source finished: {stats.frames_inspected} frames inspected")
            if self.station.banner.state == "IDLE":
                self.station.banner.show_idle("STOPPED", "source finished")

    # ------------------------------------------------------------------------------- controls
    def _set_state(self, state: str) -> None:
        self._state = state
        self._update_controls()
        self._update_info()

    def _update_controls(self) -> None:
        state = self._state
        self.act_start.setEnabled(state in (RunState.STOPPED, RunState.PAUSED))
        self.act_pause.setEnabled(state in (RunState.RUNNING, RunState.PAUSED))
        self.act_pause.setText("Resume" if state == RunState.PAUSED else "Pause")
        self.act_stop.setEnabled(state != RunState.STOPPED)
        self.source_box.setEnabled(state == RunState.STOPPED)
        self.act_open_folder.setEnabled(state == RunState.STOPPED)
        self.act_open_video.setEnabled(state == RunState.STOPPED)

    def _update_info(self, result: InspectionResult | None = None) -> None:
        recipe = self.current_recipe
        parts = [f"Recipe: {recipe.stem if recipe else '—'}"]
        if result is not None:
            version = result.model_version
        else:
            version = getattr(self._inspector, "model_version", "")
        if version:
            parts.append(f"model {version}")
        device = getattr(self._inspector, "device", None)
        if device:
            parts.append(f"on {device}")
        parts.append(f"Source: {self.source_box.currentText() or '—'}")
        parts.append(f"State: {self._state}")
        self.station.set_info("   ·   ".join(parts))

    def _show_fault(self, key: str, text: str, *, level: str = "error") -> None:
        self.station.faults.set_fault(key, text, level=level)
        self._status.setText(text)

    @Slot(int)
    def _on_recipe_changed(self, index: int) -> None:
        recipe = self.current_recipe
        self._update_info()
        if recipe is None or self._pipeline is None or self._state not in (RunState.RUNNING, RunState.PAUSED):
            return
        if self.jobs.running:
            self._status.setText("busy: recipe switch ignored, try again")
            return
        self.recipe_box.setEnabled(False)
        self._status.setText(f"Loading recipe {recipe.stem}…")

        def job() -> Generator[Progress, None, tuple[Path, Any]]:
            yield Progress(done=0, total=1, message=f"loading recipe {recipe.stem}")
            return recipe, self._inspector_for(recipe)

        self.jobs.start(job, name="switch")

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
        for path, inspector in self._inspectors.items():
            if getattr(inspector, "name", None) == name:
                return path
        return None

    def _recipe_list(self) -> list[Path]:
        return list(self._recipes)

    def _defect_classes_of(self, name: str) -> tuple[str, ...]:
        from ui.review_view import DEFAULT_DEFECT_CLASSES

        path = self._recipe_file(name)
        inspector = self._inspectors.get(path) if path is not None else None
        classes = getattr(getattr(inspector, "recipe", None), "defect_classes", None)
        return tuple(classes) if classes else DEFAULT_DEFECT_CLASSES

    @Slot(object, str)
    def _on_taught(self, recipe: Path, version: str) -> None:
        """A recipe got a new model version: forget its loaded model and offer it in the selector."""
        path = Path(recipe)
        self._inspectors.pop(path, None)
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
        self._stop_pipeline()
        self.recorder.close()
        if self.teach is not None:
            self.teach.shutdown()
        if self.review is not None:
            self.review.shutdown()
        self.statistics.insights.shutdown()      # its worker thread (ui.defect_insights)
        self._state = RunState.STOPPED

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.save_settings()
        self.shutdown()
        super().closeEvent(event)
