"""The worker pipeline: capture thread -> newest-frame slot -> one inference worker -> result consumers.

Qt-free (threads, one shared stop `threading.Event`, bounded queues), so the CLI, the tests and the GUI
drive the same code (STYLE.md section 5)::

    source.read() --capture thread--> slot --worker thread--> inspector.inspect(frame) --> consumers

- Live sources (cameras) feed a one-slot buffer where the newest frame wins; replaced frames are
  counted as dropped. File sources (folders, videos) feed a small bounded queue and the capture
  thread waits instead: every image gets exactly one result, in order.
- Anything that goes wrong with one frame (a file that does not decode, ``inspect`` raising,
  including out-of-memory) becomes an ERROR result for that frame, delivered like any other; the
  pipeline goes on with the next frame. An ERROR is never counted as PASS.
- A live source that fails (unplugged, stream dropped) is closed and opened again with a backoff
  (0.5 s doubling up to ``max_reconnect_delay``) until it works or the pipeline stops; events say so.
- Consumers run on the worker thread, in the order added, and must be quick (the store and the
  archive enqueue to their own threads). One that raises is logged, reported once as a WARNING
  event, and called again for the next result.
- ``defer_typing=True`` (the app's station): a `inspector.station.Station` returns a REVIEW/FAIL
  result before its defects are typed (``result.typing``), the consumers get it at once (the screen
  shows the verdict), and the worker types the regions right after them, before the next frame; the
  consumers that want the types listen on ``result.typing`` (`inspector.defect_typing.PendingTyping`).

Example:
    >>> pipeline = Pipeline(open_source(spec), station,
    ...                     consumers=[store.record], on_event=print)  # doctest: +SKIP
    >>> with pipeline:
    ...     pipeline.start()
    ...     pipeline.wait()          # a folder replay: returns when every result was delivered
"""

from __future__ import annotations

import collections
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Protocol, Self

from inspector.capture import FrameSource
from inspector.errors import FrameDecodeError, InspectorError
from inspector.results import Frame, InspectionResult, StageTimes, Verdict

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "EventKind",
    "FrameInspector",
    "Pipeline",
    "PipelineEvent",
    "PipelineStats",
    "ResultConsumer",
    "error_result",
    "inspect_frame",
]

logger = logging.getLogger(__name__)

# How often idle threads look at the stop event; bounds how long stop() waits for a blocked stage.
_POLL_S: Final = 0.05
# Frames waiting between capture and inference for file sources: enough to decode the next image while
# the current one is scored, small enough that a pause or stop leaves little behind (anomalib's service
# uses maxsize=5).
FILE_QUEUE_SIZE: Final = 4
# Window of the frames-per-second figure in `PipelineStats`.
FPS_WINDOW_S: Final = 2.0
# How long pause() waits for the capture thread to park (a camera read can block this long at most).
_PAUSE_ACK_S: Final = 1.0

ResultConsumer = Callable[[InspectionResult], object]


class FrameInspector(Protocol):
    """What the worker calls for every frame: `inspector.station.Station` in the app, a stub in tests."""

    @property
    def name(self) -> str:
        """The recipe name, written into ERROR results made on its behalf (read-only, as `Station` has it)."""
        ...

    def inspect(self, frame: Frame) -> InspectionResult:
        """Score one frame; may raise (the pipeline turns that into an ERROR result)."""
        ...


class EventKind(enum.StrEnum):
    """What a `PipelineEvent` reports."""

    SOURCE_OPENED = "source_opened"
    SOURCE_LOST = "source_lost"                # a live source failed; reconnection under way
    SOURCE_RECONNECTED = "source_reconnected"
    SOURCE_ENDED = "source_ended"              # a file source has no more frames
    SOURCE_FAILED = "source_failed"            # could not open, or a file source broke: capture stopped
    INSPECTOR_SWITCHED = "inspector_switched"  # a new recipe is in use from this point on
    WARNING = "warning"                        # a consumer raised, out of memory, a thread did not stop
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class PipelineEvent:
    """Something the operator should hear about. Sent to ``on_event`` from whichever thread saw it."""

    kind: EventKind
    message: str                               # one sentence for a status bar
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class PipelineStats:
    """A snapshot of the counters, cheap to take a few times per second from any thread."""

    state: Literal["idle", "running", "paused", "stopped"]
    frames_captured: int                       # read from the source, undecodable files included
    frames_inspected: int                      # results delivered, ERROR results included
    frames_dropped: int                        # live frames replaced in the slot before inference
    errors: int                                # ERROR results
    fps: float                                 # results per second over the last ~2 s
    latency_ms: float                          # last frame, capture time to result delivered
    source_live: bool


@dataclass(frozen=True, kw_only=True)
class _FailedFrame:
    """A frame the source could not produce (an undecodable file): becomes an ERROR result in order."""

    frame_id: int
    timestamp: float
    source: str
    path: str | None
    error: str


class _End:
    """Marks the end of a file source in the queue."""


_END: Final = _End()
_Item = Frame | _FailedFrame | _End


def error_result(
    *,
    frame_id: int,
    timestamp: float,
    source: str,
    recipe: str,
    error: str,
    path: str | None = None,
    image_bgr: np.ndarray | None = None,
    capture_ms: float = 0.0,
) -> InspectionResult:
    """An ERROR result for a frame that could not be inspected (never PASS, score None).

    Args:
        frame_id: the frame's id (from the source).
        timestamp: capture time, ``time.time()``.
        source: the source's display name.
        recipe: the inspector's (recipe) name.
        error: one sentence saying what went wrong.
        path: the file, for file sources.
        image_bgr: (H, W, 3) uint8 BGR frame when there is one, for display.
        capture_ms: time spent reading the frame.
    """
    return InspectionResult(
        frame_id=frame_id,
        timestamp=timestamp,
        source=source,
        recipe=recipe,
        model_version="",
        verdict=Verdict.ERROR,
        score=None,
        image_bgr=image_bgr,
        times=StageTimes(capture_ms=capture_ms),
        error=error,
        path=path,
    )


def inspect_frame(inspector: FrameInspector, frame: Frame, *, defer_typing: bool) -> InspectionResult:
    """``inspector.inspect(frame)``; with ``defer_typing``, an inspector that can (``can_defer_typing``: a
    `inspector.station.Station`) leaves a REVIEW/FAIL frame's defect typing for later (``result.typing``)."""
    if defer_typing and getattr(inspector, "can_defer_typing", False):
        return inspector.inspect(frame, defer_typing=True)  # type: ignore[call-arg]
    return inspector.inspect(frame)


def _one_sentence(exc: BaseException, limit: int = 300) -> str:
    """``TypeName: first line of the message``, cut to ``limit`` characters (torch errors run long)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _source_problem(name: str, what: str, exc: BaseException) -> str:
    """One sentence about a source failure; our own errors already name the source and say what to check."""
    if isinstance(exc, InspectorError) and str(exc).strip():
        return str(exc).strip().splitlines()[0]
    return f"{name} {what}: {_one_sentence(exc)}"


def _offer(slot: queue.Queue[_Item], item: _Item) -> bool:
    """Put ``item`` into a one-slot queue, replacing an unread item. One producer per slot.

    Returns False when a stale item was dropped, so the caller can count it.
    """
    try:
        slot.put_nowait(item)
        return True
    except queue.Full:
        try:
            slot.get_nowait()          # drop the stale frame
            dropped = True
        except queue.Empty:            # the worker took it first
            dropped = False
        slot.put_nowait(item)          # room now: we are the only producer
        return not dropped


class Pipeline:
    """Runs a frame source through an inspector on two threads and hands results to consumers.

    Args:
        source: a `FrameSource`, not yet opened; the capture thread opens, reads and closes it.
        inspector: called as ``inspector.inspect(frame)`` on the worker thread, which owns it.
        consumers: called with every `InspectionResult` on the worker thread, in order; must be quick.
        on_event: called with each `PipelineEvent`, from the thread that saw it (capture, worker, or
            the caller of `stop`/`switch_inspector`); must be quick and thread-safe.
        max_reconnect_delay: longest wait in seconds between reconnection attempts of a live source.
        reconnect_delay: first wait in seconds; doubles after each failed attempt.
        defer_typing: deliver a result before its defect typing and type it after the consumers
            (an inspector with ``can_defer_typing``); the consumers must handle ``result.typing``.

    A pipeline runs once: `start`, optionally `pause`/`resume`/`switch_inspector`, then `stop`
    (or use it as a context manager, which stops on exit). Build a new one to run again.
    """

    def __init__(
        self,
        source: FrameSource,
        inspector: FrameInspector,
        *,
        consumers: Sequence[ResultConsumer] = (),
        on_event: Callable[[PipelineEvent], None] | None = None,
        max_reconnect_delay: float = 10.0,
        reconnect_delay: float = 0.5,
        defer_typing: bool = False,
    ) -> None:
        if not 0 < reconnect_delay <= max_reconnect_delay:
            msg = (
                f"reconnect delays must satisfy 0 < reconnect_delay <= max_reconnect_delay, "
                f"got {reconnect_delay} and {max_reconnect_delay}"
            )
            raise ValueError(msg)
        self._source = source
        self._inspector = inspector
        self._next_inspector: FrameInspector | None = None
        self._consumers: tuple[ResultConsumer, ...] = tuple(consumers)
        self._warned: set[int] = set()              # id() of consumers already reported
        self._on_event = on_event
        self._defer_typing = defer_typing
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._live = bool(source.is_live)
        self._slot: queue.Queue[_Item] = queue.Queue(maxsize=1 if self._live else FILE_QUEUE_SIZE)

        self._stop_event = threading.Event()         # shared by every stage
        self._running = threading.Event()            # cleared while paused
        self._running.set()
        self._parked = threading.Event()             # the capture thread waits in pause
        self._worker_exited = threading.Event()
        self._drained = False                        # the worker saw the end marker
        self._lock = threading.Lock()                # counters, state, consumers, next inspector
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._state: Literal["idle", "running", "paused", "stopped"] = "idle"
        self._stopped = False

        self._captured = 0
        self._inspected = 0
        self._dropped = 0
        self._errors = 0
        self._latency_ms = 0.0
        self._started_at = 0.0
        self._done_times: collections.deque[float] = collections.deque(maxlen=20_000)
        self._last_frame_id = -1                     # for ids of failures that carry none

    # ---- control (any thread) ---------------------------------------------------------------

    def add_consumer(self, fn: ResultConsumer) -> None:
        """Add a result consumer; it gets every result delivered after this call."""
        with self._lock:
            self._consumers = (*self._consumers, fn)

    def start(self) -> None:
        """Start the capture and worker threads; the source is opened on the capture thread.

        Raises:
            RuntimeError: the pipeline was already started.
        """
        with self._lock:
            if self._state != "idle" or self._stopped:
                msg = "pipeline already started; build a new Pipeline to run again"
                raise RuntimeError(msg)
            self._state = "running" if self._running.is_set() else "paused"
            self._started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._capture_loop, name="inspector-capture", daemon=True),
            threading.Thread(target=self._worker_loop, name="inspector-worker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def pause(self, *, wait: bool = True) -> None:
        """Stop reading and inspecting frames until `resume`.

        Frames already queued from a file source are held and inspected after `resume`; a live
        source's one waiting frame is dropped (counted), since it is stale by then. The frame inside
        the inspector when this is called is finished and delivered.

        Args:
            wait: wait up to 1 s for the capture thread to finish the read it is in (never when called
                from a consumer, on the worker thread). A GUI passes False and returns at once.
        """
        self._parked.clear()
        self._running.clear()
        with self._lock:
            if self._state == "running":
                self._state = "paused"
        # Wait for the capture thread to park, so nothing is read after pause() returns. Not on the
        # worker thread: the capture thread may be waiting for the worker to take a frame.
        if wait and len(self._threads) == 2 and threading.current_thread() not in self._threads:
            if self._threads[0].is_alive():
                self._parked.wait(_PAUSE_ACK_S)

    def resume(self) -> None:
        """Read frames again after `pause`."""
        with self._lock:
            if self._state == "paused":
                self._state = "running"
        self._running.set()

    def switch_inspector(self, inspector: FrameInspector) -> None:
        """Use another inspector (recipe) from the next frame the worker takes up.

        The worker swaps it in between frames, so no frame is scored half by each, and reports an
        INSPECTOR_SWITCHED event when it does.
        """
        with self._lock:
            self._next_inspector = inspector

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every stage and join its thread; idempotent, safe from any thread.

        Frames still queued are discarded. Joins the threads within ``timeout`` seconds in all; a
        thread that does not finish (a camera driver stuck in a read) is reported as a WARNING event.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop_event.set()
        self._running.set()                         # unpark a paused capture thread
        interrupt = getattr(self._source, "interrupt", None)
        if callable(interrupt):
            interrupt()                             # cut short a replay-rate wait
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:               # a consumer may call stop() on the worker thread
                thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive() and t is not current]
        with self._lock:
            self._state = "stopped"
        if alive:
            self._emit(EventKind.WARNING, f"{', '.join(alive)} did not stop within {timeout} s")
        self._emit(EventKind.STOPPED, f"pipeline on {self._source.name} stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a file source to end.

        Returns:
            True when the source ended (or failed) and every frame's result was delivered; False on
            timeout, when the pipeline was stopped before that, or when it was never started.
        """
        if not self._threads:
            return False
        self._worker_exited.wait(timeout)
        return self._worker_exited.is_set() and self._drained

    def stats(self) -> PipelineStats:
        """The counters now."""
        now = time.monotonic()
        with self._lock:
            while self._done_times and self._done_times[0] < now - FPS_WINDOW_S:
                self._done_times.popleft()
            window = min(FPS_WINDOW_S, now - self._started_at) if self._started_at else 0.0
            fps = len(self._done_times) / window if window > 0 and self._state != "stopped" else 0.0
            return PipelineStats(
                state=self._state,
                frames_captured=self._captured,
                frames_inspected=self._inspected,
                frames_dropped=self._dropped,
                errors=self._errors,
                fps=fps,
                latency_ms=self._latency_ms,
                source_live=self._live,
            )

    @property
    def source(self) -> FrameSource:
        """The frame source (owned by the capture thread while running)."""
        return self._source

    @property
    def inspector(self) -> FrameInspector:
        """The inspector in use (a pending switch is not yet reflected)."""
        return self._inspector

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- capture thread ---------------------------------------------------------------------

    def _capture_loop(self) -> None:
        source = self._source
        opened = False
        try:
            try:
                source.open()
                opened = True
            except Exception as exc:
                message = _source_problem(source.name, "could not be opened", exc)
                self._emit(EventKind.SOURCE_FAILED, message)
                return
            self._emit(EventKind.SOURCE_OPENED, f"{source.name} opened")
            while not self._stop_event.is_set():
                if not self._running.is_set():
                    self._parked.set()
                    self._running.wait(_POLL_S)
                    continue
                try:
                    frame = source.read()
                except FrameDecodeError as exc:
                    self._put(self._failed(exc))
                    continue
                except Exception as exc:
                    if self._stop_event.is_set():
                        return
                    if not self._live:
                        self._emit(EventKind.SOURCE_FAILED, _source_problem(source.name, "failed", exc))
                        return
                    if not self._reconnect(exc):
                        return
                    continue
                if frame is None:
                    if not self._stop_event.is_set():
                        self._emit(EventKind.SOURCE_ENDED, f"{source.name} ended")
                    return
                self._put(frame)
        except BaseException:   # a bug in this file: say so rather than die silently
            logger.exception("capture thread of %s crashed", source.name)
            self._emit(EventKind.SOURCE_FAILED, f"capture of {source.name} crashed; see the log")
        finally:
            if opened:
                try:
                    source.close()
                except Exception:
                    logger.exception("closing %s failed", source.name)
            self._put(_END)

    def _failed(self, exc: FrameDecodeError) -> _FailedFrame:
        # TODO: FrameDecodeError carries no frame id; our file sources spend one id per failed file,
        # so the id after the last good frame is the right one for them.
        frame_id = getattr(exc, "frame_id", None)
        if not isinstance(frame_id, int):
            frame_id = self._last_frame_id + 1
        self._last_frame_id = frame_id
        return _FailedFrame(
            frame_id=frame_id,
            timestamp=time.time(),
            source=self._source.name,
            path=str(exc.path) if exc.path is not None else None,
            error=str(exc),
        )

    def _put(self, item: _Item) -> None:
        """Hand an item to the worker: newest-wins for live sources, waiting for file sources."""
        if isinstance(item, Frame):
            self._last_frame_id = item.frame_id
        if not isinstance(item, _End):
            with self._lock:
                self._captured += 1
        if self._live and not isinstance(item, _End):   # the end marker must not replace the last frame
            if not _offer(self._slot, item):
                with self._lock:
                    self._dropped += 1
            return
        while not self._stop_event.is_set():
            try:
                self._slot.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _reconnect(self, exc: BaseException) -> bool:
        """Close and reopen a live source with backoff. False when stopped first."""
        source = self._source
        self._emit(EventKind.SOURCE_LOST, f"{_source_problem(source.name, 'lost', exc)} (reconnecting)")
        delay = self._reconnect_delay
        attempt = 0
        while not self._stop_event.is_set():
            try:
                source.close()
            except Exception:
                logger.debug("closing lost %s failed", source.name, exc_info=True)
            if self._stop_event.wait(delay):
                return False
            attempt += 1
            try:
                source.open()
            except Exception as again:
                logger.info(
                    "%s: reconnection attempt %d failed: %s", source.name, attempt, _one_sentence(again)
                )
                delay = min(delay * 2, self._max_reconnect_delay)
                continue
            self._emit(
                EventKind.SOURCE_RECONNECTED, f"{source.name} reconnected after {attempt} attempt(s)"
            )
            return True
        return False

    # ---- worker thread ----------------------------------------------------------------------

    def _worker_loop(self) -> None:
        try:
            while True:
                if not self._running.is_set() and not self._stop_event.is_set():
                    self._hold()
                    continue
                try:
                    item = self._slot.get(timeout=_POLL_S)
                except queue.Empty:
                    if self._stop_event.is_set():
                        return
                    continue
                if isinstance(item, _End):
                    self._drained = not self._stop_event.is_set()
                    return
                if self._stop_event.is_set():
                    return
                self._deliver(self._inspect(item))
        except BaseException:
            logger.exception("inference worker crashed")
            self._emit(EventKind.WARNING, "inference worker crashed; see the log")
        finally:
            with self._lock:
                if self._drained:
                    self._state = "stopped"
            self._worker_exited.set()

    def _hold(self) -> None:
        """Paused: file frames wait in their queue; a live source's waiting frame is dropped as stale."""
        if self._live:
            try:
                item = self._slot.get_nowait()
            except queue.Empty:
                pass
            else:
                if isinstance(item, _End):
                    self._slot.put_nowait(item)       # the end marker is never dropped
                else:
                    with self._lock:
                        self._dropped += 1
        self._running.wait(_POLL_S)

    def _inspect(self, item: Frame | _FailedFrame) -> InspectionResult:
        with self._lock:
            incoming, self._next_inspector = self._next_inspector, None
        if incoming is not None:
            previous, self._inspector = self._inspector, incoming
            self._emit(
                EventKind.INSPECTOR_SWITCHED, f"recipe switched from '{previous.name}' to '{incoming.name}'"
            )
        inspector = self._inspector
        if isinstance(item, _FailedFrame):
            return error_result(
                frame_id=item.frame_id,
                timestamp=item.timestamp,
                source=item.source,
                recipe=inspector.name,
                error=item.error,
                path=item.path,
            )
        try:
            result = inspect_frame(inspector, item, defer_typing=self._defer_typing)
            if not isinstance(result, InspectionResult):
                msg = (
                    f"{type(inspector).__name__}.inspect returned {type(result).__name__}, "
                    f"not InspectionResult"
                )
                raise TypeError(msg)
            return result
        except Exception as exc:
            where = f" ({item.path})" if item.path else ""
            error = f"inspection of frame {item.frame_id}{where} failed: {_one_sentence(exc)}"
            if "OutOfMemory" in type(exc).__name__:
                message = f"recipe '{inspector.name}' ran out of memory: {_one_sentence(exc)}"
                self._emit(EventKind.WARNING, message)
            logger.warning("%s", error, exc_info=logger.isEnabledFor(logging.DEBUG))
            return error_result(
                frame_id=item.frame_id,
                timestamp=item.timestamp,
                source=item.source,
                recipe=inspector.name,
                error=error,
                path=item.path,
                image_bgr=item.image_bgr,
                capture_ms=item.capture_ms,
            )

    def _deliver(self, result: InspectionResult) -> None:
        now = time.monotonic()
        with self._lock:
            self._inspected += 1
            if result.verdict is Verdict.ERROR:
                self._errors += 1
            self._latency_ms = max(0.0, (time.time() - result.timestamp) * 1000)
            self._done_times.append(now)
            consumers = self._consumers
        for consumer in consumers:
            try:
                consumer(result)
            except Exception as exc:
                logger.exception("result consumer %r raised", consumer)
                if id(consumer) not in self._warned:
                    self._warned.add(id(consumer))
                    name = getattr(consumer, "__qualname__", None) or repr(consumer)
                    self._emit(
                        EventKind.WARNING,
                        f"result consumer {name} raised {_one_sentence(exc)}; it is called again for "
                        f"later results, but this warning is not repeated",
                    )
        if result.typing is not None:       # the verdict is out: now the defect types (the station's turn)
            from inspector.defect_typing import finish_typing

            finish_typing(result)

    # ---- events -----------------------------------------------------------------------------

    def _emit(self, kind: EventKind, message: str) -> None:
        bad = kind in (EventKind.WARNING, EventKind.SOURCE_LOST, EventKind.SOURCE_FAILED)
        level = logging.WARNING if bad else logging.INFO
        logger.log(level, "%s: %s", kind.value, message)
        if self._on_event is None:
            return
        try:
            self._on_event(PipelineEvent(kind=kind, message=message))
        except Exception:
            logger.exception("on_event callback raised for %s", kind.value)
