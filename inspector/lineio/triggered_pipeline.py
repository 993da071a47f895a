"""The app's runs with a station.yaml: triggered mode behind the pipeline's interface, and the FAULT bit.

The desktop app drives every run through a `StationController`, which builds a pipeline, records each
result before it shows it, and sends Start / Pause / Stop / recipe switches to the pipeline. For a
station.yaml in ``triggered`` mode the app hands the controller `triggered_pipelines(line, ...)` as
its ``make_pipeline``: each run is then a `TriggeredRunner` answering the PLC, with the
controller's record step as the runner's ``record`` (so the PLC hears a verdict only once it is
durable, and a result that could not be recorded is answered ERROR with FAULT set) and MQTT after
the answer, as ``inspector run --station`` does.

What the PLC sees of the operator's controls:

- before Start and after Stop: FAULT set ("not inspecting"), READY off; triggers wait and are
  answered (ERROR, their deadline long gone) once the station runs again;
- Pause: FAULT set ("paused"), READY off, every trigger answered ERROR at once; Resume clears it;
- a recipe chosen in the app: HR8 and HR7 become its number in station.yaml (0, and every trigger
  answered ERROR, for a recipe station.yaml does not list); the PLC may still change over by HR7,
  and ``on_changeover`` tells the app which recipe answers now (or why the new one failed to load).

In ``continuous`` mode the app runs its usual `Pipeline` (`continuous_pipelines`): no trigger is
answered, but FAULT follows the station as in triggered mode (not inspecting, camera lost or ended,
the last result ERROR or not recorded), so that a PLC watching HR1 stops the line.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Literal

from inspector.capture import FrameSource
from inspector.errors import InspectorError
from inspector.lineio.line import LineIO
from inspector.lineio.trigger import TriggeredRunner
from inspector.pipeline import EventKind, FrameInspector, Pipeline, PipelineEvent, PipelineStats
from inspector.results import InspectionResult, Verdict

__all__ = ["NOT_RUNNING", "OPERATOR_FAULT", "ChangeoverListener", "TriggeredPipeline", "continuous_pipelines",
           "recipe_number", "triggered_pipelines"]

logger = logging.getLogger(__name__)

OPERATOR_FAULT: Final = "operator"            # the LineSignals fault key of a station not inspecting
NOT_RUNNING: Final = "not inspecting: the station is stopped (press Start in the app)"
_PAUSED: Final = "paused by the operator"
_FPS_WINDOW_S: Final = 2.0

RecordStep = Callable[[InspectionResult], object]
# (pipeline, recipe number, its inspector now answering or None, why it failed to load)
ChangeoverListener = Callable[["TriggeredPipeline", int, FrameInspector | None, str], None]


def recipe_number(line: LineIO, inspector: FrameInspector) -> int:
    """The station.yaml number of the recipe ``inspector`` runs (its ``recipe.path``); 0 if not listed."""
    recipe = getattr(inspector, "recipe", None)
    path = getattr(recipe, "path", None)
    if path is None:
        return 0
    for slot in line.config.recipes:
        if line.config.recipe_file(slot.number) == Path(path).resolve():
            return slot.number
    return 0


class TriggeredPipeline:
    """One triggered run, with the methods a `StationController` calls on its pipeline.

    Args:
        source: a `FrameSource`, not yet opened.
        inspector: the recipe chosen in the app.
        consumers: the controller's record step(s): each is called with every result before the PLC
            is answered; one that returns a result returns the result as recorded (an ERROR one when
            it could not be recorded).
        on_event: gets warnings (faults) as `PipelineEvent`; any thread.
        line: the started links of a triggered station.yaml.
        load_recipe: builds the inspector of a PLC recipe number (changeover by HR7).
        on_changeover: told when a changeover by HR7 is over: (this pipeline, the recipe number, its
            inspector now answering or None, why it failed to load); on the runner's thread.
    """

    def __init__(self, source: FrameSource, inspector: FrameInspector, *, consumers: Sequence[RecordStep],
                 on_event: Callable[[PipelineEvent], None] | None, line: LineIO,
                 load_recipe: Callable[[int], FrameInspector] | None = None,
                 on_changeover: ChangeoverListener | None = None) -> None:
        self._consumers = tuple(consumers)
        self._on_event = on_event
        self._line = line
        self._live = bool(source.is_live)
        self._lock = threading.Lock()
        self._state: Literal["idle", "running", "paused", "stopped"] = "idle"
        self._stopped = threading.Event()
        self._started_at = 0.0
        self._done_times: collections.deque[float] = collections.deque(maxlen=20_000)
        number = recipe_number(line, inspector)
        line.signals.set_recipe_active(number)
        line.signals.write_recipe_requested(number)
        if not number:
            self._emit(EventKind.WARNING, f"recipe {inspector.name} is not in the recipes of "
                                          f"{line.config.path or 'station.yaml'}: PLC triggers are answered ERROR")
        self._on_changeover = on_changeover
        self._runner = TriggeredRunner(source, inspector, line.signals, deadline_ms=line.config.deadline_ms,
                                       record=self._record, after_answer=[self._answered, line.publish],
                                       load_recipe=load_recipe, on_fault=self._fault,
                                       on_changeover=self._changed_over)

    # ---- what the controller calls ------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._state != "idle":
                msg = "pipeline already started; build a new one to run again"
                raise RuntimeError(msg)
            self._state = "running"
            self._started_at = time.monotonic()
        self._runner.start()
        self._line.signals.set_fault(OPERATOR_FAULT, None)

    def pause(self, *, wait: bool = True) -> None:
        """READY off and every trigger answered ERROR until `resume` (``wait`` is the pipeline's: unused)."""
        self._line.signals.set_fault(OPERATOR_FAULT, _PAUSED)
        self._runner.hold(_PAUSED)
        with self._lock:
            self._state = "paused"

    def resume(self) -> None:
        self._runner.hold(None)
        self._line.signals.set_fault(OPERATOR_FAULT, None)
        with self._lock:
            self._state = "running"

    def switch_inspector(self, inspector: FrameInspector) -> None:
        """The operator chose another recipe: it answers from the next trigger on, as its station.yaml number."""
        number = recipe_number(self._line, inspector)
        if not number:
            self._emit(EventKind.WARNING, f"recipe {inspector.name} is not in the recipes of station.yaml: "
                                          f"PLC triggers are answered ERROR")
        self._runner.use(number, inspector)
        self._emit(EventKind.INSPECTOR_SWITCHED, f"recipe {inspector.name} answers the PLC (number {number})")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering (FAULT "not inspecting" from now on) and join the runner; idempotent."""
        self._line.signals.set_fault(OPERATOR_FAULT, NOT_RUNNING)
        self._runner.stop(timeout)
        with self._lock:
            self._state = "stopped"
        self._stopped.set()
        self._emit(EventKind.STOPPED, "triggered run stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """A triggered run has no end of its own: False unless it was stopped within ``timeout``."""
        return self._stopped.wait(timeout)

    def stats(self) -> PipelineStats:
        runner = self._runner.stats()
        now = time.monotonic()
        with self._lock:
            while self._done_times and self._done_times[0] < now - _FPS_WINDOW_S:
                self._done_times.popleft()
            window = min(_FPS_WINDOW_S, now - self._started_at) if self._started_at else 0.0
            fps = len(self._done_times) / window if window > 0 and self._state != "stopped" else 0.0
            state = self._state
        return PipelineStats(state=state, frames_captured=runner.answered, frames_inspected=runner.answered,
                             frames_dropped=0, errors=runner.errors, fps=fps, latency_ms=runner.last_answer_ms,
                             source_live=self._live)

    # ---- the runner's callbacks (its controller thread) ----------------------------------------

    def _record(self, result: InspectionResult) -> InspectionResult:
        recorded = result
        for consumer in self._consumers:
            out = consumer(result)
            if isinstance(out, InspectionResult):
                recorded = out
        if recorded.verdict is Verdict.ERROR and result.verdict is not Verdict.ERROR:
            # The record step could not make it durable (and showed it as ERROR): the runner answers
            # ERROR and sets FAULT, as it does for a recorder that raises.
            raise InspectorError(recorded.error or "result not recorded")
        return recorded

    def _answered(self, result: InspectionResult) -> None:
        with self._lock:
            self._done_times.append(time.monotonic())

    def _changed_over(self, number: int, inspector: FrameInspector | None, problem: str) -> None:
        if self._on_changeover is not None:
            self._on_changeover(self, number, inspector, problem)

    def _fault(self, message: str) -> None:
        self._emit(EventKind.WARNING, f"FAULT: {message}")

    def _emit(self, kind: EventKind, message: str) -> None:
        if self._on_event is not None:
            try:
                self._on_event(PipelineEvent(kind=kind, message=message))
            except Exception:
                logger.exception("pipeline event listener raised")


def continuous_pipelines(line: LineIO) -> Callable[..., Pipeline]:
    """A ``make_pipeline`` for a continuous station.yaml in the app: the usual `Pipeline`, with the PLC's
    FAULT bit following it (not inspecting, camera lost, an ERROR result, a result not recorded)."""
    line.signals.set_fault(OPERATOR_FAULT, NOT_RUNNING)

    def on_result(consume: RecordStep) -> Callable[[InspectionResult], None]:
        def step(result: InspectionResult) -> None:
            shown = consume(result)
            line.follow_result(shown if isinstance(shown, InspectionResult) else result)
        return step

    def make(source: FrameSource, inspector: FrameInspector, *, consumers: Sequence[RecordStep],
             on_event: Callable[[PipelineEvent], None] | None = None) -> Pipeline:
        def event(e: PipelineEvent) -> None:
            line.follow_pipeline(e)
            if e.kind is EventKind.SOURCE_OPENED:
                line.signals.set_fault(OPERATOR_FAULT, None)
            elif e.kind is EventKind.STOPPED:
                line.signals.set_fault(OPERATOR_FAULT, NOT_RUNNING)
            if on_event is not None:
                on_event(e)

        return Pipeline(source, inspector, consumers=[on_result(c) for c in consumers], on_event=event,
                        defer_typing=True)      # the controller's consumer shows first, publishes once typed

    return make


def triggered_pipelines(line: LineIO, *, load_recipe: Callable[[int], FrameInspector] | None = None,
                        on_changeover: ChangeoverListener | None = None) -> Callable[..., TriggeredPipeline]:
    """A ``make_pipeline`` for `inspector.controller.StationController`: every run answers ``line``'s PLC.

    Also raises FAULT ("not inspecting") at once: until the first Start, the PLC sees the station not READY.
    """
    line.signals.set_fault(OPERATOR_FAULT, NOT_RUNNING)

    def make(source: FrameSource, inspector: FrameInspector, *, consumers: Sequence[RecordStep],
             on_event: Callable[[PipelineEvent], None] | None = None) -> TriggeredPipeline:
        return TriggeredPipeline(source, inspector, consumers=consumers, on_event=on_event, line=line,
                                 load_recipe=load_recipe, on_changeover=on_changeover)

    return make
