"""The station's run state and what runs: one owner, no Qt.

`StationController` owns the run state (`RunState`), the live `Pipeline`, the `ResultRecorder`
and the recipe actually loaded. Widgets send it intents (`start`, `pause`, `resume`, `stop`,
`switch_recipe`) and render the typed events it sends back; they never keep their own idea of
what is running (STYLE.md section 11, "the run state has one owner").

Every intent returns at once: loading a recipe, opening a source, stopping the threads and waiting
for the frame under inspection all run on short-lived threads of the controller, so a GUI thread
that calls it never blocks on torch, a camera or a slow detector.

What the operator sees follows one rule: a verdict is *current* only while the station is RUNNING
and the result belongs to the run in progress. A result that the worker finishes after Pause or
Stop (the frame already inside the model) is recorded like any other, and delivered as
``ResultArrived(current=False)``: counted and stored, never shown as the verdict of now.

A REVIEW/FAIL result is shown before its defects are typed (``ResultArrived`` with the regions
untyped); once typed, ``ResultTyped`` brings the same result with its types, and only then is it
published (``after_record``: MQTT). A triggered run also answers the PLC before the typing.

Pause holds the frames already queued (a folder source): they are inspected after Resume, none is
skipped. A live source drops its one stale frame instead (counted as dropped).

Example:
    >>> controller = StationController(load_inspector=load, open_source=open_source,
    ...                                recorder=ResultRecorder(store), on_event=print)  # doctest: +SKIP
    >>> controller.start(Path("recipes/fryum_demo.yaml"), source_text="")              # doctest: +SKIP
    >>> controller.stop()          # returns at once; StateChanged(STOPPED) follows   # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from inspector.pipeline import EventKind, Pipeline, PipelineEvent
from inspector.results import InspectionResult, Verdict

__all__ = [
    "CAN_START",
    "ControllerEvent",
    "LineMetrics",
    "Notice",
    "RecipeSwitchFailed",
    "ResultArrived",
    "ResultTyped",
    "RunState",
    "StartFailed",
    "StateChanged",
    "StationController",
    "StationSnapshot",
]

log = logging.getLogger(__name__)

# Longest wait for the frame under inspection when stopping (off the caller's thread). The DINOv2
# model on a loaded 2-core CPU took up to ~40 s for one 448 px frame in the field report of issue 13;
# past this we report the worker as stuck rather than wait for ever.
STOP_WAIT_S: Final = 120.0
# Window of the parts-per-minute figure: a minute, so that a CPU station at 0.2 parts/s reads 12, not 0.0
# (the pipeline's own fps window is 2 s).
RATE_WINDOW_S: Final = 60.0


class RunState(enum.StrEnum):
    """What the station is doing; the value is what status lines print."""

    READY = "ready"                  # nothing has run yet
    STARTING = "starting"            # loading the recipe's model and opening the source
    RUNNING = "running"
    PAUSED = "paused"                # no new frames are taken; queued frames are held
    STOPPING = "stopping"            # waiting for the frame under inspection, then joining the threads
    STOPPED = "stopped"              # stopped by the operator
    SOURCE_ENDED = "source_ended"    # a folder or video has no more frames; every one was inspected
    FAULT = "fault"                  # could not start, or the source failed


CAN_START: Final = frozenset({RunState.READY, RunState.STOPPED, RunState.SOURCE_ENDED, RunState.FAULT})


@dataclass(frozen=True, kw_only=True)
class StationSnapshot:
    """The run state and what is loaded, as one value (sent with every `StateChanged`)."""

    state: RunState
    recipe: Path | None = None       # the recipe file actually loaded (None before the first start)
    recipe_name: str = ""            # the name inside it (what results carry)
    product: str = ""                # the recipe's product text, for the operator ("Bracket A (part 4711-200)")
    model_version: str = ""          # of the loaded model, e.g. "v3"
    device: str = ""                 # where the model runs ("cpu", "cuda:0")
    source: str = ""                 # the running source's display name
    message: str = ""                # one sentence: why this state (e.g. "source ended (180 frames inspected)")


@dataclass(frozen=True, kw_only=True)
class StateChanged:
    """The run state or what is loaded changed."""

    snapshot: StationSnapshot


@dataclass(frozen=True, kw_only=True)
class ResultArrived:
    """A result was recorded. ``current`` is False for one finished after Pause/Stop or by an older run."""

    result: InspectionResult
    current: bool


@dataclass(frozen=True, kw_only=True)
class ResultTyped:
    """The defect types of a result already delivered by ``ResultArrived`` (same frame): counted once,
    there; this only brings the regions typed. ``current`` as the ``ResultArrived`` it follows."""

    result: InspectionResult
    current: bool


@dataclass(frozen=True, kw_only=True)
class Notice:
    """A pipeline event the operator should hear about (source lost/reconnected, a warning)."""

    kind: EventKind
    message: str


@dataclass(frozen=True, kw_only=True)
class StartFailed:
    """Start failed: the recipe or its model could not be loaded, or the source not opened."""

    recipe: Path
    error: BaseException


@dataclass(frozen=True, kw_only=True)
class RecipeSwitchFailed:
    """A switch was refused or failed; ``running`` is the recipe still inspecting (and recording)."""

    requested: Path
    running: Path | None
    reason: str


ControllerEvent = StateChanged | ResultArrived | ResultTyped | Notice | StartFailed | RecipeSwitchFailed


@dataclass(frozen=True, kw_only=True)
class LineMetrics:
    """Figures a line engineer can check against the store."""

    inspect_ms: float | None         # the last result's inspection time, as stored (StageTimes.total_ms)
    behind: int                      # frames read but not yet inspected (queued, or in the model)
    parts_per_minute: float | None   # results over the last RATE_WINDOW_S (None before the first)
    dropped: int | None              # live frames replaced before inspection; None for file sources


def _default_make_pipeline(source: Any, inspector: Any, *, consumers: Sequence[Callable[[Any], object]],
                           on_event: Callable[[Any], None]) -> Any:
    return Pipeline(source, inspector, consumers=consumers, on_event=on_event, defer_typing=True)


class StationController:
    """Owns the run state, the pipeline, the recorder and the loaded recipe of one station.

    Args:
        load_inspector: recipe path -> `FrameInspector` (the real `Station.load`); called on a
            controller thread, once per recipe (reused on switch back until `forget`).
        open_source: source text -> `FrameSource` (not opened); called on a controller thread.
        recipe_source: inspector -> its recipe's own `FrameSource`, used when the source text is empty.
        recorder: records every result (a `ResultRecorder`); called before the result is delivered.
        on_event: gets every `ControllerEvent`, from any thread; must be quick and thread-safe (the
            Qt bridge only emits a signal).
        make_pipeline: builds the pipeline; default `inspector.pipeline.Pipeline`.
        stop_wait_s: how long a stop waits for the frame under inspection before reporting it stuck.
    """

    def __init__(
        self,
        *,
        load_inspector: Callable[[Path], Any],
        open_source: Callable[[str], Any],
        recipe_source: Callable[[Any], Any],
        recorder: Any,
        on_event: Callable[[ControllerEvent], None],
        make_pipeline: Callable[..., Any] | None = None,
        stop_wait_s: float = STOP_WAIT_S,
    ) -> None:
        self._load_inspector = load_inspector
        self._open_source = open_source
        self._recipe_source = recipe_source
        self._make_pipeline = make_pipeline or _default_make_pipeline
        self._recorder = recorder
        self._on_event = on_event
        self._stop_wait_s = stop_wait_s
        self._lock = threading.RLock()
        self._snapshot = StationSnapshot(state=RunState.READY)
        self._inspectors: dict[Path, Any] = {}
        self._inspector: Any | None = None
        self._pipeline: Any | None = None
        self._run = 0                       # id of the run in progress; results of older runs are late
        self._switching = False
        self._last_inspect_ms: float | None = None
        self._last_frame: tuple[int, float] | None = None     # (frame_id, timestamp) of that result
        self._done_times: collections.deque[float] = collections.deque(maxlen=100_000)
        self._threads: list[threading.Thread] = []
        # Called with each result after the recorder made it durable and before it is delivered (MQTT
        # publishing, a PLC answer); append before start. Each must be quick; one that raises is logged.
        self.after_record: list[Callable[[InspectionResult], None]] = []

    # ---- what is loaded (any thread) --------------------------------------------------------
    @property
    def snapshot(self) -> StationSnapshot:
        with self._lock:
            return self._snapshot

    @property
    def state(self) -> RunState:
        return self.snapshot.state

    @property
    def inspector(self) -> Any | None:
        """The inspector of the recipe actually loaded (None before the first start)."""
        with self._lock:
            return self._inspector

    @property
    def pipeline(self) -> Any | None:
        with self._lock:
            return self._pipeline

    def loaded(self, recipe: Path) -> Any | None:
        """The inspector already loaded for ``recipe``, if any (no loading)."""
        with self._lock:
            return self._inspectors.get(Path(recipe))

    def forget(self, recipe: Path) -> None:
        """Drop a recipe's loaded model: the next start or switch loads it again (a new version)."""
        with self._lock:
            self._inspectors.pop(Path(recipe), None)

    def metrics(self) -> LineMetrics:
        """Inspection time, backlog, parts per minute and dropped frames now."""
        with self._lock:
            pipeline, inspect_ms = self._pipeline, self._last_inspect_ms
            now = time.monotonic()
            while self._done_times and self._done_times[0] < now - RATE_WINDOW_S:
                self._done_times.popleft()
            count = len(self._done_times)
            span = now - self._done_times[0] if count else 0.0
        # one result is no rate; over a short span, a rate from the gaps between results
        rate = 60.0 * (count - 1) / span if count > 1 and span > 0 else None
        behind, dropped = 0, None
        if pipeline is not None:
            stats = pipeline.stats()
            behind = max(0, stats.frames_captured - stats.frames_inspected - stats.frames_dropped)
            dropped = stats.frames_dropped if stats.source_live else None
        return LineMetrics(inspect_ms=inspect_ms, behind=behind, parts_per_minute=rate, dropped=dropped)

    # ---- intents (any thread; each returns at once) -----------------------------------------
    def start(self, recipe: Path, *, source_text: str = "") -> bool:
        """Load ``recipe`` and open the source (empty text: the recipe's own), then run.

        Resumes when paused. Returns False (and does nothing) when a run is already under way.
        """
        recipe = Path(recipe)
        with self._lock:
            state = self._snapshot.state
            if state is RunState.PAUSED:
                self.resume()
                return True
            if state not in CAN_START:
                return False
            self._run += 1
            run = self._run
            where = source_text or "the recipe's source"
            self._set(StationSnapshot(state=RunState.STARTING, recipe=recipe,
                                      message=f"opening {where} · loading {recipe.stem}"))
        self._spawn(f"inspector-start-{run}", self._start_run, run, recipe, source_text)
        return True

    def pause(self) -> bool:
        """Take no new frames; queued frames are held until `resume`. False when not running."""
        with self._lock:
            if self._snapshot.state is not RunState.RUNNING or self._pipeline is None:
                return False
            pipeline = self._pipeline
            self._set(self._with(RunState.PAUSED, "paused: queued frames are held until Resume"))
        pipeline.pause(wait=False)
        return True

    def resume(self) -> bool:
        """Take frames again after `pause`. False when not paused."""
        with self._lock:
            if self._snapshot.state is not RunState.PAUSED or self._pipeline is None:
                return False
            self._pipeline.resume()
            self._set(self._with(RunState.RUNNING, ""))
        return True

    def stop(self) -> bool:
        """Stop: returns at once; the threads are joined on a controller thread, then STOPPED.

        A result the worker finishes after this call is recorded and sent with ``current=False``.
        Returns False when there is nothing to stop.
        """
        with self._lock:
            state = self._snapshot.state
            if state is RunState.STARTING:
                self._run += 1            # the start thread sees a newer run and closes what it opened
                self._set(self._with(RunState.STOPPED, "stopped before the source opened"))
                return True
            if state not in (RunState.RUNNING, RunState.PAUSED) or self._pipeline is None:
                return False
            pipeline, self._pipeline = self._pipeline, None
            self._run += 1
            run = self._run
            self._set(self._with(RunState.STOPPING, "finishing the frame under inspection"))
        self._spawn(f"inspector-stop-{run}", self._finish, pipeline, run, RunState.STOPPED,
                    "stopped by the operator")
        return True

    def switch_recipe(self, recipe: Path) -> bool:
        """Inspect with another recipe from the next frame on (RUNNING or PAUSED only).

        Until the new recipe is loaded the running one goes on and stays the loaded one; if loading
        fails, `RecipeSwitchFailed` names the running recipe and why. Returns False when refused
        (not running, or a switch is under way), after sending `RecipeSwitchFailed`.
        """
        recipe = Path(recipe)
        with self._lock:
            running = self._snapshot.recipe
            if recipe == running:
                return True
            if self._snapshot.state not in (RunState.RUNNING, RunState.PAUSED) or self._pipeline is None:
                return False
            if self._switching:
                reason = f"still loading another recipe; {running.stem if running else '—'} goes on"
                self._emit(RecipeSwitchFailed(requested=recipe, running=running, reason=reason))
                return False
            self._switching = True
            run = self._run
        self._spawn(f"inspector-switch-{run}", self._switch, run, recipe)
        return True

    def follow_pipeline(self, pipeline: Any, recipe: Path, inspector: Any | None, message: str) -> None:
        """The running ``pipeline`` changed its recipe itself (a PLC changeover): what is loaded follows.

        ``inspector`` answers as ``recipe`` from now on (kept for a later switch back, recorded with its
        archive); None: ``recipe`` failed to load and no recipe inspects (`RecipeSwitchFailed` says why,
        ``message``, and the snapshot names no recipe, so the operator may pick one again). Any thread;
        ignored when ``pipeline`` is no longer the running one.
        """
        recipe = Path(recipe)
        with self._lock:
            if pipeline is not self._pipeline or self._snapshot.state not in (RunState.RUNNING, RunState.PAUSED):
                return
            snap = self._snapshot
            if inspector is None:
                self._set(StationSnapshot(state=snap.state, source=snap.source, message=message))
                self._emit(RecipeSwitchFailed(requested=recipe, running=None, reason=message))
                return
            self._inspectors[recipe] = inspector
            self._inspector = inspector
            self._set(_loaded(snap.state, recipe, inspector, None, message, source_name=snap.source))

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop and join every controller thread (the window is closing)."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:          # a drain thread may start a stop thread: join until none is left
            with self._lock:
                alive = [t for t in self._threads if t.is_alive() and t is not threading.current_thread()]
            if not alive or time.monotonic() >= deadline:
                break
            alive[0].join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in alive]
        if left:
            log.warning("controller threads did not end within %.0f s: %s", timeout, ", ".join(left))

    # ---- controller threads -----------------------------------------------------------------
    def _start_run(self, run: int, recipe: Path, source_text: str) -> None:
        source = None
        try:
            inspector = self._inspector_for(recipe)
            source = self._open_source(source_text) if source_text else self._recipe_source(inspector)
        except Exception as exc:
            with self._lock:
                if run != self._run:
                    return
                self._set(StationSnapshot(state=RunState.FAULT, recipe=recipe, message=str(exc)))
            self._emit(StartFailed(recipe=recipe, error=exc))
            return
        self._recorder.use(inspector)
        with self._lock:
            if run != self._run:          # stopped while loading
                _close_quietly(source)
                return
            consumers = [self._record_then_deliver(run)]
            try:
                pipeline = self._make_pipeline(source, inspector, consumers=consumers,
                                               on_event=self._pipeline_event(run))
                pipeline.start()
            except Exception as exc:
                log.exception("pipeline failed to start")
                _close_quietly(source)
                self._set(StationSnapshot(state=RunState.FAULT, recipe=recipe, message=str(exc)))
                self._emit(StartFailed(recipe=recipe, error=exc))
                return
            self._pipeline, self._inspector = pipeline, inspector
            self._set(_loaded(RunState.RUNNING, recipe, inspector, source, "waiting for the first part"))

    def _switch(self, run: int, recipe: Path) -> None:
        try:
            inspector = self._inspector_for(recipe)
        except Exception as exc:
            with self._lock:
                self._switching = False
                running = self._snapshot.recipe
            reason = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            self._emit(RecipeSwitchFailed(requested=recipe, running=running, reason=reason))
            return
        self._recorder.use(inspector)
        with self._lock:
            self._switching = False
            if run != self._run or self._pipeline is None:
                return
            self._pipeline.switch_inspector(inspector)
            self._inspector = inspector
            snap = self._snapshot
            self._set(_loaded(snap.state, recipe, inspector, None, f"switched to recipe {recipe.stem}",
                              source_name=snap.source))

    def _finish(self, pipeline: Any, run: int, state: RunState, message: str) -> None:
        """Join a pipeline's threads (the in-flight result is delivered first), then enter ``state``."""
        try:
            pipeline.stop(timeout=self._stop_wait_s)
        except Exception:
            log.exception("pipeline did not stop cleanly")
        with self._lock:
            if run != self._run:
                return
            if self._pipeline is pipeline:
                self._pipeline = None
            stats = pipeline.stats()
            text = f"{message} ({stats.frames_inspected} frames inspected)"   # a message may end in "?"
            self._set(self._with(state, text))

    def _inspector_for(self, recipe: Path) -> Any:
        with self._lock:
            inspector = self._inspectors.get(recipe)
        if inspector is None:
            inspector = self._load_inspector(recipe)
            with self._lock:
                self._inspectors[recipe] = inspector
        return inspector

    # ---- pipeline callbacks (engine threads) ------------------------------------------------
    def _record_then_deliver(self, run: int) -> Callable[[InspectionResult], InspectionResult]:
        """Record durably first; only then publish and show. A result that could not be recorded is shown
        as ERROR ("not recorded"), never with its verdict, and the reason is a notice. Returns the result
        shown (what a triggered run answers the PLC)."""
        deliver = self._consumer(run)

        def publish(result: InspectionResult) -> None:
            for fn in tuple(self.after_record):
                try:
                    fn(result)
                except Exception:
                    log.exception("result consumer %r raised", fn)

        def typed(result: InspectionResult) -> None:
            with self._lock:            # its inspection time as stored: the typing's time included
                if self._last_frame == (result.frame_id, result.timestamp):
                    self._last_inspect_ms = result.times.total_ms
                current = self._current_locked(run)
            publish(result)
            self._emit(ResultTyped(result=result, current=current))

        def consume(result: InspectionResult) -> InspectionResult:
            lot = getattr(self._recorder, "lot", "")
            if lot and not result.lot:              # as recorded: what MQTT publishes and the screen shows
                result = dataclasses.replace(result, lot=lot)
            try:
                self._recorder.record(result)       # returns once the result is durable
            except Exception as exc:
                reason = f"not recorded: {type(exc).__name__}: {exc}"
                log.error("frame %s: %s", result.frame_id, reason)
                self._emit(Notice(kind=EventKind.WARNING, message=f"frame {result.frame_id} {reason}"))
                shown = dataclasses.replace(result, verdict=Verdict.ERROR, score=None, regions=(), error=reason,
                                            typing=None)
                deliver(shown)
                return shown
            pending = result.typing
            if pending is None:
                publish(result)
                deliver(result)
                return result
            # typed after the verdict (a triggered run: after the PLC's answer): the verdict is shown now,
            # the types follow (ResultTyped), and it is published once typed
            deliver(dataclasses.replace(result, typing=None))
            recorded = result
            pending.add_done_callback(lambda regions: typed(pending.applied(recorded)))
            return result

        return consume

    def _current_locked(self, run: int) -> bool:
        """Whether a result of ``run`` is shown as the verdict of now (held: ``_lock``)."""
        return run == self._run and self._snapshot.state is RunState.RUNNING

    def _consumer(self, run: int) -> Callable[[InspectionResult], None]:
        def deliver(result: InspectionResult) -> None:
            with self._lock:
                current = self._current_locked(run)
                self._last_inspect_ms = result.times.total_ms
                self._last_frame = (result.frame_id, result.timestamp)
                self._done_times.append(time.monotonic())
            self._emit(ResultArrived(result=result, current=current))

        return deliver

    def _pipeline_event(self, run: int) -> Callable[[PipelineEvent], None]:
        def on_event(event: PipelineEvent) -> None:
            kind = event.kind
            if kind in (EventKind.SOURCE_ENDED, EventKind.SOURCE_FAILED):
                with self._lock:
                    pipeline = self._pipeline if run == self._run else None
                if pipeline is not None:      # frames still queued are inspected (and shown) first
                    self._spawn(f"inspector-drain-{run}", self._drain, pipeline, run,
                                kind is EventKind.SOURCE_ENDED, event.message)
            if kind in (EventKind.SOURCE_LOST, EventKind.SOURCE_RECONNECTED, EventKind.SOURCE_FAILED,
                        EventKind.WARNING, EventKind.INSPECTOR_SWITCHED):
                self._emit(Notice(kind=kind, message=event.message))

        return on_event

    def _drain(self, pipeline: Any, run: int, ended: bool, message: str) -> None:
        """The source ended or failed: wait until every queued frame was delivered, then stop."""
        pipeline.wait(self._stop_wait_s)
        state = RunState.SOURCE_ENDED if ended else RunState.FAULT
        self._finish(pipeline, run, state, "source ended" if ended else f"source failed: {message}")

    # ---- helpers ----------------------------------------------------------------------------
    def _with(self, state: RunState, message: str) -> StationSnapshot:
        return dataclasses.replace(self._snapshot, state=state, message=message)

    def _set(self, snapshot: StationSnapshot) -> None:
        """Enter a new snapshot (under the lock) and tell the listener."""
        self._snapshot = snapshot
        log.info("station %s: %s", snapshot.state.value, snapshot.message)
        self._emit(StateChanged(snapshot=snapshot))

    def _emit(self, event: ControllerEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("controller listener raised for %s", type(event).__name__)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()


def _loaded(state: RunState, recipe: Path, inspector: Any, source: Any, message: str, *,
            source_name: str = "") -> StationSnapshot:
    """A snapshot naming what an inspector and a source say about themselves."""
    return StationSnapshot(
        state=state,
        recipe=recipe,
        recipe_name=str(getattr(inspector, "name", recipe.stem)),
        product=str(getattr(getattr(inspector, "recipe", None), "product", "") or ""),
        model_version=str(getattr(inspector, "model_version", "") or ""),
        device=str(getattr(inspector, "device", "") or ""),
        source=str(getattr(source, "name", "")) if source is not None else source_name,
        message=message,
    )


def _close_quietly(source: Any) -> None:
    try:
        source.close()
    except Exception:
        log.exception("closing a source that was not used failed")
