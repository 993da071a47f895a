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

Engine entry points are injectable (``load_inspector``, ``make_pipeline``, ``open_source``; their types
and defaults are in `ui.engine`), so tests can drive the real pipeline with a cheap stand-in inspector.
The toolbar and its actions are `ui.run_toolbar`, the footer line and the store warning `ui.footer`, kiosk
mode `ui.kiosk`, the lot number and counters `ui.lot` (they go on after a restart).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QLabel,
    QMainWindow,
    QTabWidget,
    QWidget,
)

from inspector.controller import (
    CAN_START,
    ControllerEvent,
    Notice,
    RecipeSwitchFailed,
    ResultArrived,
    ResultTyped,
    RunState,
    StartFailed,
    StateChanged,
    StationController,
    StationSnapshot,
)
from inspector.pipeline import EventKind
from inspector.recording import ResultRecorder
from inspector.results import InspectionResult, Progress
from ui.engine import (
    LoadInspector,
    OpenSource,
    RecipeInspector,
    StationInspector,
    default_load_inspector,
    default_open_source,
    recipe_source,
)
from ui.footer import StoreStatus, kiosk_info, run_info
from ui.kiosk import Kiosk
from ui.live_view import LotCounts
from ui.lot import LotCounter
from ui.run_toolbar import RunActions, RunToolbar, make_action, text_has_focus
from ui.station_messages import idle_banner, sentence, split_warnings, start_failure
from ui.station_view import StationView
from ui.workers import JobRunner, PipelineBridge

if TYPE_CHECKING:
    from inspector.lineio.triggered_pipeline import TriggeredPipeline
    from inspector.pipeline import Pipeline
    from inspector.store import Store
    from ui.review_view import FeedbackJob, ReviewView
    from ui.stats_view import StatisticsView
    from ui.teach_wizard import TeachPage

__all__ = ["MainWindow", "RunState"]    # RunState is inspector.controller's, re-exported for callers

log = logging.getLogger(__name__)

STATS_INTERVAL_MS = 250        # counters and rates refresh at 4 Hz: fast enough to feel live, cheap to paint
SCREEN_REFRESH_TICKS = 20      # the statistics screen, when shown, re-queries the store every 5 s (20 ticks)
JOB_SHUTDOWN_MS = 60_000       # close waits this long for a job without yields (torch import, model load)
STOP_CONFIRM_MS = 3000         # a second Stop (Esc) within this time confirms the first (ours: long enough
                               # to read the prompt, short enough that a stray Esc later does nothing)
STOP_PROMPT = "Press Stop (Esc) again within {seconds} s to stop"


class MainWindow(QMainWindow):
    """The inspection station's window.

    Args:
        recipes: recipe files offered in the recipe selector (the first is selected unless the
            settings remember another).
        source: source text for the source selector ("0", "rtsp://...", a video or folder path).
        store: an `inspector.store.Store` (results are recorded into it by the pipeline, and the
            statistics and review screens read it), or None to run without one.
        settings: where window layout and choices are remembered; tests pass one in tmp_path.
        load_inspector: recipe path -> `ui.engine.StationInspector`; default loads the real `Station`.
        open_source: source text -> `FrameSource` (not opened); default `inspector.capture`.
        make_pipeline: builds the pipeline; default `inspector.pipeline.Pipeline` (triggered: the app's --station).
        kiosk: start full screen with only the station screen.
    """

    # a recipe's inspector was applied, a teaching or a batch review ended: torch may have been imported since
    # (`ui.collector.GuiThreadCollector.settle`)
    engine_loaded = Signal()

    def __init__(
        self,
        *,
        recipes: Sequence[Path] = (),
        source: str | None = None,
        store: Store | None = None,
        settings: QSettings | None = None,
        load_inspector: LoadInspector | None = None,
        open_source: OpenSource | None = None,
        make_pipeline: Callable[..., Pipeline | TriggeredPipeline] | None = None,
        kiosk: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Inspector — visual inspection station")
        self._settings = settings if settings is not None else QSettings("inspector", "inspector-gui")
        self._store = store
        self._open_source = open_source or default_open_source
        self._recipes = [Path(p) for p in recipes]
        self._snapshot = StationSnapshot(state=RunState.READY)   # the controller's, as last rendered
        self._applied: StationInspector | None = None       # the inspector whose warnings and thresholds are shown
        self._closing = False
        self._ticks = 0
        self._stop_prompt = QTimer(self)   # running: a second Stop confirms the first (a Qt timer may fire early,
        self._stop_prompt.setSingleShot(True)  # so the window is the timer's, not a clock's: the banner went with it)
        self._stop_prompt.timeout.connect(self._on_stop_prompt_expired)

        self.bridge = PipelineBridge(self)
        self.bridge.station_event.connect(self._on_station_event)
        self.bridge.warning.connect(self._on_warning)
        self.recorder = ResultRecorder(store, on_warning=self.bridge.on_warning, count_lot=True)
        self.lot = LotCounter(self.recorder, self._settings)
        self.controller = StationController(
            load_inspector=load_inspector or default_load_inspector, open_source=self._open_source,
            recipe_source=recipe_source, recorder=self.recorder, on_event=self.bridge.on_station_event,
            make_pipeline=make_pipeline)
        # Called with each result once it is durable, before it is shown: MQTT (ui/link_status.py).
        self.line_consumers: list[Callable[[InspectionResult], None]] = self.controller.after_record
        self.jobs = JobRunner(self)
        self.jobs.finished.connect(self._on_job_finished)
        self.jobs.raised.connect(self._on_job_raised)
        self.jobs.progress.connect(self._on_job_progress)

        self.station = StationView()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.station, "Station")
        self.statistics, self.review, self.teach = self._build_screens()
        self.setCentralWidget(self.tabs)
        self._build_actions()
        self._build_toolbar()
        self._status = QLabel("")
        self.statusBar().addWidget(self._status, 1)
        self.store_status = StoreStatus()          # "Store offline: N waiting" while the store is away
        self.statusBar().addPermanentWidget(self.store_status)
        self.kiosk = Kiosk(self, self.tabs, self.station, chrome=(self.toolbar, self.statusBar()))

        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self._on_stats_tick)
        self._stats_timer.start()

        self._restore_settings(source)
        self._update_controls()
        self._on_recipe_changed(self.recipe_box.currentIndex())     # the info line; statistics take the recipe
        if kiosk:
            self.set_kiosk(True)

    # ---------------------------------------------------------------------------------- build
    def _build_screens(self) -> tuple[StatisticsView, ReviewView, TeachPage]:
        from ui.review_view import ReviewView
        from ui.stats_view import StatisticsView
        from ui.teach_wizard import TeachPage

        statistics = StatisticsView(self._store)
        review = ReviewView(self._store, feedback_runner=self._run_feedback,
                            recipe_lookup=self._recipe_file, defect_classes=self._defect_classes_of,
                            recipes=self._recipe_list, on_model_changed=self.controller.forget)
        teach = TeachPage(recipes=self._recipes, open_source=self._open_source)
        self.tabs.addTab(statistics, "Statistics")
        self.tabs.addTab(review, "Review")
        self.tabs.addTab(teach, "Teach")
        self.tabs.currentChanged.connect(self._on_tab_changed)
        teach.taught.connect(self._on_taught)
        teach.taught.connect(self.engine_loaded)           # teaching and batch reviews import the engine too
        review.batch.jobs.stopped.connect(self.engine_loaded)
        return statistics, review, teach

    def _action(self, text: str, shortcut: str | QKeySequence.StandardKey | None, slot: Callable[..., object],
                *, checkable: bool = False, tip: str = "") -> QAction:
        return make_action(self, text, shortcut, slot, checkable=checkable, tip=tip)

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
        actions = RunActions(start=self.act_start, pause=self.act_pause, stop=self.act_stop,
                             heatmap=self.act_heatmap, kiosk=self.act_kiosk, new_lot=self.act_new_lot,
                             open_folder=self.act_open_folder, open_video=self.act_open_video)
        self.toolbar = RunToolbar(actions, self._recipes)
        # the toolbar's widgets, under the names tests and older callers use
        self.source_box = self.toolbar.source_box
        self.recipe_box = self.toolbar.recipe_box
        self.opacity_slider = self.toolbar.opacity_slider
        self.lot_edit = self.toolbar.lot_edit
        self.recipe_box.currentIndexChanged.connect(self._on_recipe_changed)
        self.opacity_slider.valueChanged.connect(self._on_opacity_changed)
        self.lot_edit.editingFinished.connect(self._on_lot_edited)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)

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
        self.toolbar.restore(s, source)
        number, told = self.lot.restore(self.lot_edit.text())     # stamped and counted as before the restart
        self.lot_edit.setText(number)
        self._status.setText(told)
        self.station.set_counts(self.lot.counts)
        self.tabs.setCurrentIndex(0)

    def save_settings(self) -> None:
        """Remember window layout and the operator's choices (geometry, splitter, source, recipe, heatmap)."""
        s = self._settings
        if not self.isFullScreen():
            s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("station/splitter", self.station.splitter.saveState())
        self.toolbar.save(s)
        s.sync()

    # ------------------------------------------------------------------------------ properties
    @property
    def state(self) -> RunState:
        """The controller's run state, as last rendered."""
        return self._snapshot.state

    @property
    def counts(self) -> LotCounts:
        return self.lot.counts

    @property
    def pipeline(self) -> Pipeline | TriggeredPipeline | None:
        pipeline: Pipeline | TriggeredPipeline | None = self.controller.pipeline
        return pipeline

    @property
    def current_recipe(self) -> Path | None:
        return self.toolbar.current_recipe

    def set_source_text(self, text: str) -> None:
        self.toolbar.set_source_text(text)

    def select_recipe(self, recipe: Path | str) -> None:
        """Select a recipe (added to the selector if new); switches the running pipeline to it."""
        self.recipe_box.setCurrentIndex(self._add_recipe(Path(recipe)))

    def _add_recipe(self, path: Path) -> int:
        """The recipe's row in the selector; a new recipe is added to the selector and the list offered."""
        if path not in self._recipes:
            self._recipes.append(path)
        return self.toolbar.recipe_index(path)

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
        text = self.toolbar.source_text
        if recipe is None:
            self._show_fault("recipe",
                             "No recipe selected: choose one in the Recipe box, or teach one (Teach tab)")
            return
        for key in ("camera", "recipe", "model", "source"):
            self.station.faults.clear_fault(key)
        self.toolbar.remember_source(text)
        self.save_settings()      # what runs is on disk: a power cut brings the station back to it
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
        """Stop (Esc, the Stop button): while running, the first press asks and a second one stops; Esc typed
        in a text field (the lot number, the source) only leaves the field."""
        if text_has_focus():
            if (focus := QApplication.focusWidget()) is not None:
                focus.clearFocus()
            self._status.setText("Esc left the text field; it did not stop the line")
            return
        if self.state in (RunState.RUNNING, RunState.PAUSED) and not self._stop_prompt.isActive():
            self._stop_prompt.start(STOP_CONFIRM_MS)
            self._status.setText(STOP_PROMPT.format(seconds=STOP_CONFIRM_MS // 1000))
            self.station.faults.set_fault("stop", "Stop the line? Press Stop (Esc) again to confirm.", level="info")
            return
        self.stop()

    @Slot()
    def stop(self) -> None:
        """Stop at once (no confirmation): returns immediately; the threads end on the controller's."""
        self._stop_prompt.stop()
        self.station.faults.clear_fault("stop")
        self.controller.stop()

    @Slot()
    def _on_stop_prompt_expired(self) -> None:
        self.station.faults.clear_fault("stop")
        if self._status.text() == STOP_PROMPT.format(seconds=STOP_CONFIRM_MS // 1000):   # not left asking after it
            self._status.setText("")

    @Slot()
    def _on_pause_key(self) -> None:
        if not text_has_focus():
            self.toggle_pause()

    @Slot()
    def new_lot(self) -> None:
        """Reset the lot counters and the verdict strip (Ctrl+N)."""
        self.lot.new_lot()
        self._show_new_counts()
        self._status.setText("New lot: counters reset")

    def _show_new_counts(self) -> None:
        self.station.strip.clear()
        self.station.set_counts(self.lot.counts)

    @Slot(bool)
    def set_kiosk(self, on: bool) -> None:
        """Full-screen kiosk mode (F11): station screen only, no toolbar or tabs."""
        if self.act_kiosk.isChecked() != on:
            self.act_kiosk.setChecked(on)   # re-enters through toggled
            return
        self.kiosk.apply(on)

    # --------------------------------------------------------------------------- job results
    @Slot(object)
    def _on_job_progress(self, progress: Progress) -> None:
        self._status.setText(progress.message)

    @Slot(object)
    def _on_job_finished(self, value: object) -> None:
        if self.jobs.name == "feedback":
            current = self.review.current
            recipe = self._recipe_file(current.recipe) if current is not None else None
            if recipe is not None:
                self.controller.forget(recipe)    # reloaded with the new version on the next start
            self.review.on_feedback_done(str(value))

    @Slot(object)
    def _on_job_raised(self, exc: BaseException) -> None:
        if self.jobs.name == "feedback":
            text = str(exc) or type(exc).__name__
            self.review.on_feedback_failed(f"{type(exc).__name__}: {text}")

    def _show_start_failure(self, failed: StartFailed) -> None:
        """Name what failed to start and how to fix it."""
        line = start_failure(failed)
        self._show_fault(line.key, line.text)

    def _apply_inspector(self, inspector: StationInspector) -> None:
        """Show what the inspector says about itself: warnings (GPU unavailable), thresholds (heat range)."""
        for key, text in zip(("gpu", "warning"), split_warnings(inspector.warnings), strict=True):
            if text:
                self._show_fault(key, text, level="warning")
            else:
                self.station.faults.clear_fault(key)
        self.station.faults.clear_fault("model")
        review, fail, pixel = inspector.thresholds
        self.statistics.set_thresholds(review, fail)
        self.statistics.set_recipe(inspector.recipe if isinstance(inspector, RecipeInspector) else None,
                                   inspector.model_version)
        if pixel > 0:
            # transparent at half the pixel threshold, opaque red at 1.5x (as the archive's overlays):
            # defects stand out, good parts stay clear
            self.station.heatmap.set_heat_range(0.5 * float(pixel), 1.5 * float(pixel))
        self.engine_loaded.emit()

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
        elif isinstance(event, ResultTyped):        # the types of a frame shown (if still shown) untyped
            self.station.heatmap.show_types(event.result)
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
        inspector: StationInspector | None = self.controller.inspector
        if inspector is not None and inspector is not self._applied:
            # a run may even have ended before this thread heard it started: apply what was loaded anyway
            self._applied = inspector
            self._apply_inspector(inspector)
            self._select_quietly(snapshot.recipe)
        if state is not RunState.RUNNING or previous.state is not RunState.RUNNING:
            self.station.show_idle(*idle_banner(snapshot))    # RUNNING: until the first result comes
        if state not in (RunState.RUNNING, RunState.PAUSED, RunState.STARTING):
            self.station.faults.clear_fault("stop")
            self._stop_prompt.stop()
        if snapshot.message:
            self._status.setText(snapshot.message)
        self._update_controls()
        self._update_info()

    def _on_result(self, result: InspectionResult, *, current: bool) -> None:
        self.lot.add(result.verdict)
        if current and self.state is RunState.RUNNING:     # Pause may have come since it was sent
            self.station.show_result(result)        # banner, heatmap and the verdict strip
            self.statistics.offer_frame(result)     # the location map's good image, once per recipe
            if self._snapshot.message and self._status.text() == self._snapshot.message:
                self._status.clear()                # "waiting for the first part" is over
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
            self._show_fault("camera", f"Source failed: {sentence(message)} Check the camera, cable or path, then F5.")
        elif kind is EventKind.WARNING:
            self._show_fault("warning", message, level="warning")
        else:
            self._status.setText(message)

    def _on_switch_failed(self, failed: RecipeSwitchFailed) -> None:
        """The selector goes back to the recipe that runs; the banner says why."""
        running = failed.running
        self._select_quietly(running)
        self.recipe_box.setEnabled(True)
        goes_on = f"{running.stem} goes on inspecting" if running is not None else "no recipe inspects now"
        self._show_fault("recipe", f"Cannot switch to recipe {failed.requested.stem}: {failed.reason}. {goes_on}.")
        self._update_info()

    def _select_quietly(self, recipe: Path | None) -> None:
        """Show ``recipe`` in the selector without asking for a switch."""
        self.toolbar.select_quietly(recipe)

    @Slot()
    def _on_stats_tick(self) -> None:
        self.station.set_counts(self.lot.counts)
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
        self.store_status.show_recorder(self.recorder)

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
        self.station.set_info(run_info(self._snapshot, selected=self.current_recipe,
                                       source_text=self.toolbar.source_text),
                              headline=kiosk_info(self._snapshot, selected=self.current_recipe, lot=self.lot.number))

    def _show_fault(self, key: str, text: str, *, level: str = "error") -> None:
        self.station.faults.set_fault(key, text, level=level)
        self._status.setText(text)

    @Slot(int)
    def _on_recipe_changed(self, index: int) -> None:
        """The operator picked a recipe: while running, ask the controller to switch (it may refuse); while
        stopped, the Statistics screen takes its thresholds, location picture and drift's teaching scores at once."""
        recipe = self.current_recipe
        if recipe is not None and self.state in (RunState.RUNNING, RunState.PAUSED):
            self.station.faults.clear_fault("recipe")
            self._status.setText(f"Loading recipe {recipe.stem}; the running recipe goes on until it is ready")
            self.controller.switch_recipe(recipe)
        elif recipe is not None:
            self.statistics.show_recipe_file(recipe)
        self._update_info()

    @Slot()
    def _on_next_recipe(self) -> None:
        self.toolbar.next_recipe()

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
        self._refresh_screen(self.tabs.widget(index))

    def _refresh_screen(self, widget: QWidget | None) -> None:
        """Re-query the statistics or review screen when it is ``widget`` (the others show live data)."""
        if widget is self.statistics:
            self.statistics.refresh()
        elif widget is self.review:
            self.review.refresh()

    @Slot()
    def _on_lot_edited(self) -> None:
        counts = self.lot.counts
        told = self.lot.set_number(self.lot_edit.text())
        if told is None:
            return
        if self.lot.counts is not counts:         # another lot: its counters start afresh
            self._show_new_counts()
        self._status.setText(told)
        self._update_info()

    @Slot(str)
    def _on_warning(self, text: str) -> None:
        self._show_fault("warning", text, level="warning")

    def _recipe_file(self, name: str) -> Path | None:
        from ui.review_reads import recipe_file_named

        return recipe_file_named(name, self._recipes, self.controller.loaded)

    def _recipe_list(self) -> list[Path]:
        return list(self._recipes)

    def _defect_classes_of(self, name: str) -> tuple[str, ...]:
        """The recipe's own defect classes (read from its file when its model is not loaded)."""
        from ui.review_reads import recipe_defect_classes

        path = self._recipe_file(name)
        loaded = self.controller.loaded(path) if path is not None else None
        return recipe_defect_classes(path, loaded.recipe if isinstance(loaded, RecipeInspector) else None)

    @Slot(object, str)
    def _on_taught(self, recipe: Path, version: str) -> None:
        """A recipe got a new model version: forget its loaded model and offer it in the selector."""
        path = Path(recipe)
        self.controller.forget(path)
        self._add_recipe(path)
        self._status.setText(f"Recipe {path.stem}: model {version} ready; select it and press F5")

    @Slot()
    def _on_refresh(self) -> None:
        self._refresh_screen(self.tabs.currentWidget())

    def _run_feedback(self, job: FeedbackJob) -> bool:
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
        self.teach.shutdown()
        self.review.shutdown()
        self.statistics.shutdown()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt name)
        self.save_settings()
        self.shutdown()
        super().closeEvent(event)
