"""Triggered mode: one frame per PLC trigger, inspected and answered before the station's deadline.

Threads (all daemon, one shared stop event)::

    PLC --trigger counter--> LineSignals --controller--> grab frame --inspect worker--> result
                                                        record (store) --> answer PLC --> publish (MQTT)

- Each trigger is answered exactly once, in order. Its deadline starts when the station saw the
  trigger; if no frame or no result is there by then, the answer is ERROR (a reject) at the deadline:
  never late, never skipped. A late result is logged and dropped; the ERROR is what is recorded.
- Frames: a camera with a software trigger (`SoftwareTriggerSource`, e.g. a GenICam camera) takes one
  frame per PLC trigger, fired on the controller thread; any other live source is read continuously on
  a capture thread and the trigger takes the first frame captured after it (the newest frame after the
  trigger); a file or memory source is read on demand, one frame per trigger.
- Faults (camera lost, model raising, the recorder failing) set FAULT and stay set until the part that
  failed works again (the next frame read, inspection or record that succeeds clears its fault); the
  trigger that met the fault is answered ERROR, and while a live camera is lost every trigger is
  answered ERROR at once. Recording goes on whatever the links do.
- Changeover: when the PLC requests another recipe (HR7), RecipeActive (HR8) reads 0 while the new
  recipe loads on its own thread; triggers meanwhile are answered ERROR; the new inspector is used
  from the next trigger on.
- The answer follows the record step: the PLC hears a verdict only after the recorder took it.
- Defect typing follows the answer: a `Station` returns the verdict with its regions untyped
  (``inspect(frame, defer_typing=True)``), the recorder journals it held back from the store, the PLC is
  answered, and then the regions are typed (the crop pass, label spreading) before the result goes on to
  the store, the screen and MQTT. So a FAIL costs the PLC no more time than a PASS for the types.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from inspector.capture import FrameSource, SoftwareTriggerSource
from inspector.lineio.signals import LineSignals, Trigger
from inspector.pipeline import FrameInspector, ResultConsumer, error_result, inspect_frame
from inspector.results import Frame, InspectionResult, Verdict

__all__ = ["ANSWER_RESERVE_S", "TriggerStats", "TriggeredRunner"]

logger = logging.getLogger(__name__)

_POLL_S: Final = 0.05
# Kept free before the deadline to record and write an ERROR answer: waiting for the model right up to
# the deadline would answer it a fraction of a millisecond late (measured: 0.4 ms).
ANSWER_RESERVE_S: Final = 0.005
_RECONNECT_MAX_S: Final = 5.0
# A recipe that failed to load is loaded again after this long, or at once when the PLC asks for another
# number: a broken recipe is not reloaded on every poll (a large model that fails late would hold the CPU).
RECIPE_RETRY_S: Final = 10.0

RecipeLoader = Callable[[int], FrameInspector]


@dataclass(frozen=True, kw_only=True)
class TriggerStats:
    """Counters of a triggered run, cheap to take from any thread."""

    answered: int
    errors: int                 # answers that were ERROR, for whatever reason
    deadline_misses: int        # inspections that did not finish before the deadline
    late_answers: int           # answers written after their deadline (should stay 0)
    last_answer_ms: float       # trigger seen -> answer written, last trigger
    max_answer_ms: float


class TriggeredRunner:
    """Answers PLC triggers with inspections.

    Args:
        source: a `FrameSource`, not yet opened.
        inspector: the inspector of the active recipe (a `Station`, or anything with ``inspect``).
        signals: the handshake state the PLC links serve.
        deadline_ms: the longest time from trigger to answer.
        record: called with each result before the PLC is answered (the recorder); must be quick. If it
            returns an `InspectionResult` (the result as recorded, lot stamped), that one is published.
        after_answer: called with each result after the answer (the MQTT publisher); must be quick.
        load_recipe: builds the inspector of a PLC recipe number (changeover), on a loader thread.
        on_fault: called with a sentence when a fault is raised (a failed changeover: on_changeover only, when
            given); any thread.
        on_changeover: called on the controller thread once a PLC changeover (HR7) is over, with the
            recipe number and its inspector (now answering), or None and why it failed to load.
    """

    def __init__(
        self,
        source: FrameSource,
        inspector: FrameInspector,
        signals: LineSignals,
        *,
        deadline_ms: float,
        record: Callable[[InspectionResult], object] | None = None,
        after_answer: Sequence[ResultConsumer] = (),
        load_recipe: RecipeLoader | None = None,
        on_fault: Callable[[str], None] | None = None,
        on_changeover: Callable[[int, FrameInspector | None, str], None] | None = None,
    ) -> None:
        self._source = source
        self._inspector = inspector
        self._signals = signals
        self._deadline_s = deadline_ms / 1000.0
        self._record = record
        self._after = tuple(after_answer)
        self._load_recipe = load_recipe
        self._on_fault = on_fault
        self._on_changeover = on_changeover
        self._live = bool(source.is_live)
        self._software: SoftwareTriggerSource | None = None   # armed camera: one frame per trigger
        self._rearm = False                                   # the armed camera failed: open and arm again
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # One inference thread of our own (a ThreadPoolExecutor's workers are not daemons and are not
        # joined by shutdown(wait=False)): jobs are (future, inspector, frame); None stops it.
        self._jobs: queue.Queue[tuple[concurrent.futures.Future[InspectionResult], FrameInspector, Frame] | None] \
            = queue.Queue()
        self._frame_cond = threading.Condition()
        self._latest: tuple[Frame, float] | None = None       # newest live frame and when it arrived
        self._lock = threading.Lock()
        self._loading: int | None = None                      # recipe number being loaded
        self._failed_load: tuple[int, float] | None = None    # (number, monotonic time) of the last failed load
        # (number, inspector or None, why it failed, whether the PLC asked for it)
        self._loaded: tuple[int, FrameInspector | None, str, bool] | None = None
        self._active = signals.snapshot().recipe_active
        self._held: str | None = None                         # why every trigger is answered ERROR now
        self._answered = 0
        self._errors = 0
        self._misses = 0
        self._late = 0
        self._last_ms = 0.0
        self._max_ms = 0.0

    # ---- control ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the source (on the capture thread for free-running cameras) and start answering triggers."""
        if self._live and isinstance(self._source, SoftwareTriggerSource):
            self._open_on_demand()
            if "camera" not in self._signals.faults and self._source.arm_software_trigger():
                self._software = self._source
                self._live = False              # read on demand, like a file: never free-running
            else:
                self._close_source()
        if not self._live:
            if self._software is None:
                self._open_on_demand()
        else:
            self._threads.append(threading.Thread(target=self._capture_loop, name="inspector-capture", daemon=True))
        self._threads.append(threading.Thread(target=self._control_loop, name="inspector-trigger", daemon=True))
        self._threads.append(threading.Thread(target=self._infer_loop, name="inspector-infer", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering, join the threads, close the source; idempotent."""
        self._stop.set()
        interrupt = getattr(self._source, "interrupt", None)
        if callable(interrupt):
            interrupt()
        with self._frame_cond:
            self._frame_cond.notify_all()
        self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:                       # a model stuck in a frame: the threads are daemons
            logger.warning("%s did not stop within %s s", ", ".join(alive), timeout)
        if not self._live:
            self._close_source()

    def hold(self, reason: str | None) -> None:
        """Answer every trigger ERROR with ``reason`` (the operator paused the station); None: inspect again."""
        self._held = reason

    def use(self, number: int, inspector: FrameInspector) -> None:
        """Inspect with ``inspector`` as recipe ``number`` from the next trigger on (the operator switched).

        Takes the changeover path: HR8 follows at the next trigger check, and HR7 is set to ``number`` so
        that an older PLC request does not switch back. ``number`` 0 (a recipe station.yaml does not list)
        answers every trigger ERROR ("no active recipe") until a listed one is used.
        """
        with self._lock:                   # both at once: _changeover never sees one without the other
            self._signals.write_recipe_requested(number)
            self._loaded = (number, inspector, "", False)

    def stats(self) -> TriggerStats:
        with self._lock:
            return TriggerStats(answered=self._answered, errors=self._errors, deadline_misses=self._misses,
                                late_answers=self._late, last_answer_ms=self._last_ms, max_answer_ms=self._max_ms)

    # ---- the controller thread --------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            self._changeover()
            trigger = self._signals.next_trigger(_POLL_S)
            if trigger is None or self._stop.is_set():
                continue
            self._changeover()      # a switch asked for before this trigger (HR7, the app) applies to it
            try:
                self._handle(trigger)
            except Exception as exc:        # a bug must not leave the PLC without an answer
                logger.exception("trigger %d failed", trigger.count)
                self._deliver(trigger, self._error(trigger, None, f"internal error: {exc}"))

    def _handle(self, trigger: Trigger) -> None:
        deadline = trigger.seen + self._deadline_s - min(ANSWER_RESERVE_S, self._deadline_s / 10)
        camera_fault = self._signals.faults.get("camera")
        if camera_fault is not None and self._live:     # the capture thread clears it when frames come back
            self._deliver(trigger, self._error(trigger, None, f"station fault: {camera_fault}"))
            return
        held = self._held
        if held is not None:
            self._deliver(trigger, self._error(trigger, None, held))
            return
        if self._loading is not None or not self._active:
            recipe_fault = self._signals.faults.get("recipe")
            what = (f"recipe changeover to {self._loading} in progress" if self._loading
                    else f"station fault: {recipe_fault}" if recipe_fault else "no active recipe")
            self._deliver(trigger, self._error(trigger, None, what))
            return
        frame = self._grab(trigger.seen, deadline)
        if frame is None:
            lost = self._signals.faults.get("camera")
            reason = f"station fault: {lost}" if lost is not None else "no frame before the deadline"
            self._deliver(trigger, self._error(trigger, None, reason))
            return
        future: concurrent.futures.Future[InspectionResult] = concurrent.futures.Future()
        self._jobs.put((future, self._inspector, frame))
        try:
            result = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            with self._lock:
                self._misses += 1
            count = trigger.count
            future.add_done_callback(lambda _: logger.info("late result of trigger %d dropped", count))
            result = self._error(trigger, frame, f"deadline of {self._deadline_s * 1000:.0f} ms missed")
        except Exception as exc:
            self._fault("model", f"inspection failed: {type(exc).__name__}: {exc}")
            result = self._error(trigger, frame, f"inspection failed: {type(exc).__name__}: {exc}")
        else:
            self._signals.set_fault("model", None)
        self._deliver(trigger, result)

    def _deliver(self, trigger: Trigger, result: InspectionResult) -> None:
        if self._record is not None:
            try:
                # The answer follows durability: the recorder returns once the result is in its journal.
                recorded = self._record(result)
            except Exception as exc:
                # Never a verdict that is not recorded: the PLC hears ERROR (a reject) and FAULT is set.
                self._fault("store", f"recording failed: {type(exc).__name__}: {exc}")
                reason = f"trigger {trigger.count}: not recorded: {type(exc).__name__}: {exc}"
                result = dataclasses.replace(result, verdict=Verdict.ERROR, score=None, regions=(), error=reason,
                                             typing=None)
            else:
                self._signals.set_fault("store", None)
                if isinstance(recorded, InspectionResult):
                    result = recorded           # as recorded (lot stamped): what the line hears about
        self._signals.answer(trigger, result)
        answer_ms = (time.monotonic() - trigger.seen) * 1000.0
        with self._lock:
            self._answered += 1
            self._errors += result.verdict is Verdict.ERROR
            self._late += answer_ms > self._deadline_s * 1000.0
            self._last_ms = answer_ms
            self._max_ms = max(self._max_ms, answer_ms)
        if result.typing is not None:       # the PLC has its verdict: now the defect types
            from inspector.defect_typing import finish_typing

            result = finish_typing(result)
        for consumer in self._after:
            try:
                consumer(result)
            except Exception:
                logger.exception("result consumer %r raised", consumer)

    def _error(self, trigger: Trigger, frame: Frame | None, reason: str) -> InspectionResult:
        return error_result(
            frame_id=frame.frame_id if frame is not None else -1,
            timestamp=frame.timestamp if frame is not None else time.time(),
            source=frame.source if frame is not None else getattr(self._source, "name", "source"),
            recipe=self._inspector.name,
            error=f"trigger {trigger.count}: {reason}",
            path=frame.path if frame is not None else None,
            image_bgr=frame.image_bgr if frame is not None else None,
        )

    def _fault(self, key: str, reason: str, *, tell: bool = True) -> None:
        if key not in self._signals.faults:
            logger.warning("FAULT %s: %s", key, reason)
            if tell and self._on_fault is not None:
                self._on_fault(reason)
        self._signals.set_fault(key, reason)

    def _infer_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, inspector, frame = job
            try:
                future.set_result(inspect_frame(inspector, frame, defer_typing=True))   # the types after the answer
            except BaseException as exc:    # out of memory included: the controller answers ERROR
                future.set_exception(exc)

    # ---- changeover -------------------------------------------------------------------------

    def _changeover(self) -> None:
        with self._lock:
            loaded, self._loaded = self._loaded, None
        if loaded is not None:
            number, inspector, problem, by_plc = loaded
            self._loading = None
            # a recipe that fails to load is tried again (after RECIPE_RETRY_S): the listener hears it once
            by_plc = by_plc and (inspector is not None or "recipe" not in self._signals.faults)
            if inspector is None:
                # the changeover listener says why (below); on_fault would show the same failure twice
                self._fault("recipe", problem, tell=not (by_plc and self._on_changeover is not None))
                self._failed_load = (number, time.monotonic())
            else:
                self._failed_load = None
                self._inspector = inspector
                self._active = number
                self._signals.set_fault("recipe", None)
                self._signals.set_recipe_active(number)
                logger.info("recipe %d active: %s", number, inspector.name)
            if by_plc and self._on_changeover is not None:
                try:
                    self._on_changeover(number, inspector, problem)
                except Exception:
                    logger.exception("changeover listener raised")
        with self._lock:
            if self._loaded is not None:    # an operator's switch came meanwhile: taken on the next pass
                return
            requested = self._signals.recipe_requested
        if self._loading is not None or requested == self._active or self._load_recipe is None:
            return
        if requested == 0:
            return
        failed = self._failed_load
        if failed is not None and failed[0] == requested and time.monotonic() - failed[1] < RECIPE_RETRY_S:
            return
        self._loading = requested
        self._active = 0
        self._signals.set_recipe_active(0)
        threading.Thread(target=self._load, args=(requested,), name="inspector-recipe-load", daemon=True).start()

    def _load(self, number: int) -> None:
        assert self._load_recipe is not None
        try:
            inspector = self._load_recipe(number)
        except Exception as exc:
            logger.exception("loading recipe %d failed", number)
            outcome: tuple[int, FrameInspector | None, str, bool] = (
                number, None, f"recipe {number} failed to load: {exc}", True)
        else:
            outcome = (number, inspector, "", True)
        with self._lock:
            self._loaded = outcome

    # ---- frames -----------------------------------------------------------------------------

    def _grab(self, after: float, deadline: float) -> Frame | None:
        if self._software is not None:
            return self._read_triggered(deadline)
        if not self._live:
            return self._read_on_demand()
        with self._frame_cond:
            while not self._stop.is_set():
                if self._latest is not None and self._latest[1] >= after:
                    return self._latest[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._frame_cond.wait(remaining)
        return None

    def _open_on_demand(self) -> None:
        try:
            self._source.open()
        except Exception as exc:
            self._fault("camera", f"source could not be opened: {exc}")

    def _read_on_demand(self) -> Frame | None:
        try:
            frame = self._source.read()
        except Exception as exc:
            self._fault("camera", f"source failed: {exc}")
            return None
        if frame is None:
            self._fault("camera", "source has no more frames")
        else:
            self._signals.set_fault("camera", None)
        return frame

    def _read_triggered(self, deadline: float) -> Frame | None:
        """One frame by the camera's software trigger; a camera that failed is opened and armed again first."""
        camera = self._software
        assert camera is not None
        try:
            if self._rearm:                     # lost at an earlier trigger: reconnect (fails fast when absent)
                self._source.open()
                if not camera.arm_software_trigger():
                    msg = "the camera no longer accepts a software trigger"
                    raise RuntimeError(msg)
                self._rearm = False
            frame: Frame = camera.read_triggered(max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            self._fault("camera", f"camera lost: {exc}")
            self._close_source()
            self._rearm = True
            return None
        self._signals.set_fault("camera", None)
        return frame

    def _close_source(self) -> None:
        try:
            self._source.close()
        except Exception:
            logger.exception("closing the source failed")

    def _capture_loop(self) -> None:
        delay = 0.5
        opened = False
        while not self._stop.is_set():
            try:
                if not opened:
                    self._source.open()
                    opened = True
                frame = self._source.read()
                if frame is None:
                    msg = "source ended"
                    raise RuntimeError(msg)
            except Exception as exc:
                self._fault("camera", f"camera lost: {exc}")
                if opened:
                    self._close_source()
                    opened = False
                self._stop.wait(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)
                continue
            delay = 0.5
            self._signals.set_fault("camera", None)
            with self._frame_cond:
                self._latest = (frame, time.monotonic())
                self._frame_cond.notify_all()
        if opened:
            self._close_source()
