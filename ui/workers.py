"""The Qt bridge to the engine's threads, and a worker thread for long jobs.

Two patterns, both from STYLE.md section 5:

- `PipelineBridge` lives on the GUI thread. The pipeline calls `PipelineBridge.on_result` and
  `PipelineBridge.on_event` on its own threads (the `StationController` calls
  `PipelineBridge.on_station_event`); they only emit signals, and because the bridge
  lives on the GUI thread Qt queues the delivery there. Connect the signals to widget methods,
  not lambdas, so the receiving thread is unambiguous.
- `JobRunner` runs a long engine job (teaching, feedback, loading a model) in a ``QThread``
  (Worker/Controller pattern of Qt for Python's ``QThread`` page). The job is a generator yielding
  `inspector.results.Progress`; each ``yield`` is a progress tick and a place to cancel, as in
  superqt's ``GeneratorWorker``. Errors are delivered as a sentence (``errored``), never swallowed.

Example:
    >>> runner = JobRunner()
    >>> runner.progress.connect(progress_bar_slot)
    >>> runner.finished.connect(on_report)
    >>> runner.start(lambda: teach(recipe, good=folder))
    >>> runner.cancel()        # from the GUI thread: stops at the next yield
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, QThread, Signal, SignalInstance, Slot

from inspector.errors import InspectorError
from inspector.results import InspectionResult, Progress

if TYPE_CHECKING:
    from inspector.controller import ControllerEvent
    from inspector.pipeline import PipelineEvent

__all__ = ["JobRunner", "JobWorker", "PipelineBridge", "QueryRunner", "call_as_job", "running_job_threads"]

log = logging.getLogger(__name__)

_LIVE_THREADS: set[QThread] = set()     # started by a JobRunner and not yet collected (GUI thread only)


def running_job_threads() -> list[str]:
    """Names of `JobRunner` threads still running: for tests and for a clean shutdown check."""
    return sorted(t.objectName() for t in _LIVE_THREADS if t.isRunning())

# A job: called on the worker thread, yields progress (each yield is a place to cancel), returns its result.
JobFactory = Callable[[], Generator[Progress, None, object]]


class PipelineBridge(QObject):
    """Turns the pipeline's callbacks (engine threads) into queued Qt signals (GUI thread).

    Pass `on_result` as a pipeline consumer and `on_event` as its ``on_event`` callback. Every
    result is emitted; the views keep only the newest one per paint tick (see
    `ui.live_view.HeatmapView`), so a fast camera never floods the screen.
    """

    # Qt carries these as Python objects; the emitting methods below fix their types.
    result_ready = Signal(object)     # inspector.results.InspectionResult
    pipeline_event = Signal(object)   # inspector.pipeline.PipelineEvent (not `event`: QObject.event is Qt's)
    warning = Signal(str)             # one sentence (e.g. the archive paused: disk full)
    station_event = Signal(object)    # inspector.controller.ControllerEvent (typed: StateChanged, ...)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._closed = threading.Event()

    def on_result(self, result: InspectionResult) -> None:
        """Pipeline consumer: called on the inference thread with each `InspectionResult`."""
        if not self._closed.is_set():
            self.result_ready.emit(result)

    def on_event(self, event: PipelineEvent) -> None:
        """Pipeline ``on_event`` callback: called on engine threads with each `PipelineEvent`."""
        if not self._closed.is_set():
            self.pipeline_event.emit(event)

    def on_station_event(self, event: ControllerEvent) -> None:
        """`StationController` listener: called on any thread with each `ControllerEvent`."""
        if not self._closed.is_set():
            self.station_event.emit(event)

    def on_warning(self, text: str) -> None:
        """Warning callback of engine helpers (archive, store); any thread."""
        if not self._closed.is_set():
            self.warning.emit(text)

    def close(self) -> None:
        """Stop forwarding (the window is closing); callbacks still in flight become no-ops."""
        self._closed.set()


class JobWorker(QObject):
    """Iterates a job generator on a worker thread; lives on that thread after ``moveToThread``.

    Every signal carries the job's id first, so a late signal of a finished job is recognised;
    then plain data: a `Progress`, the generator's return value, or one sentence.
    """

    progress = Signal(int, object)     # job id, Progress
    finished = Signal(int, object)     # job id, the generator's return value
    errored = Signal(int, str)         # job id, "TypeName: message"
    raised = Signal(int, object)       # job id, the exception itself (for callers that react by type)
    cancelled = Signal(int)
    done = Signal(int)                 # last of all; the controller then joins the thread

    def __init__(self, job: JobFactory, job_id: int) -> None:
        super().__init__()        # parentless, so it can move to the worker thread
        self._job = job
        self._id = job_id
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next yield; safe from any thread."""
        self._cancel.set()

    @Slot()
    def run(self) -> None:
        """Build and iterate the generator; checks the cancel flag at every yield."""
        job_id = self._id
        try:
            generator = self._job()
            try:
                while True:
                    if self._cancel.is_set():
                        generator.close()
                        self.cancelled.emit(job_id)
                        return
                    self.progress.emit(job_id, next(generator))
            except StopIteration as stop:
                self.finished.emit(job_id, stop.value)
        except Exception as exc:  # delivered to the GUI, not swallowed
            if isinstance(exc, InspectorError):     # an expected failure with its own sentence
                log.warning("background job failed: %s: %s", type(exc).__name__, exc)
            else:
                log.exception("background job failed")
            self.raised.emit(job_id, exc)
            self.errored.emit(job_id, f"{type(exc).__name__}: {exc}")
        finally:
            self.done.emit(job_id)


class JobRunner(QObject):
    """Controller of one background job at a time: owns the ``QThread`` and forwards the worker's signals.

    ``shutdown()`` (called when the owning window closes) cancels the job, quits the thread and
    waits for it, so no thread outlives its window.

    The worker and its thread are owned by Python and released only after ``QThread.wait()``
    returned. We do not connect ``thread.finished`` to ``worker.deleteLater`` as the C++ pattern
    does: with PySide the Python reference and the deferred delete race, which crashed the tests
    (segfault in ``_collect``); once the thread has ended, dropping the references is safe.
    """

    progress = Signal(object)
    finished = Signal(object)
    errored = Signal(str)
    raised = Signal(object)
    cancelled = Signal()
    stopped = Signal()            # the thread has ended, whatever the outcome

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: JobWorker | None = None
        self._job_id = 0              # id of the current (or last) job; signals of older jobs are ignored
        self._terminal = False        # the worker has sent its last result; its thread is ending
        self.name = ""                # name of the current (or last) job

    @property
    def running(self) -> bool:
        """True while a job's thread runs."""
        return self._thread is not None

    def start(self, job: JobFactory, *, name: str = "job") -> None:
        """Run ``job()`` (a factory returning a `Progress` generator) on a new thread.

        May be called from a ``finished``/``errored`` handler of the previous job: that thread is
        already leaving, so it is joined first.

        Raises:
            RuntimeError: a job is still running; cancel it or wait for ``stopped``.
        """
        if self._thread is not None and self._terminal:
            self._collect()
        if self._thread is not None:
            msg = f"cannot start {name!r}: another background job is still running; cancel it first"
            raise RuntimeError(msg)
        self._job_id += 1
        thread = QThread()
        thread.setObjectName(f"inspector-{name}")
        worker = JobWorker(job, self._job_id)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self._on_worker_progress)
        worker.finished.connect(self._on_worker_finished)
        worker.errored.connect(self._on_worker_errored)
        worker.raised.connect(self._on_worker_raised)
        worker.cancelled.connect(self._on_worker_cancelled)
        worker.done.connect(self._on_worker_done)
        self._thread, self._worker, self._terminal = thread, worker, False
        self.name = name
        _LIVE_THREADS.add(thread)
        thread.start()

    def cancel(self) -> None:
        """Ask the running job to stop at its next yield (no-op when idle)."""
        if self._worker is not None:
            self._worker.cancel()

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel, quit and wait for the thread. Returns False if it did not end within the timeout."""
        thread = self._thread
        if thread is None:
            return True
        self.cancel()
        thread.quit()
        if not thread.wait(timeout_ms):
            log.warning("background job %s did not stop within %d ms", thread.objectName(), timeout_ms)
            return False
        self._collect()
        return True

    # -- worker signals (queued to the GUI thread) -------------------------------------------
    @Slot(int, object)
    def _on_worker_progress(self, job_id: int, progress: object) -> None:
        if job_id == self._job_id:
            self.progress.emit(progress)

    @Slot(int, object)
    def _on_worker_finished(self, job_id: int, value: object) -> None:
        if job_id == self._job_id:
            self._terminal = True
            self.finished.emit(value)

    @Slot(int, object)
    def _on_worker_raised(self, job_id: int, exc: object) -> None:
        if job_id == self._job_id:
            self._terminal = True
            self.raised.emit(exc)

    @Slot(int, str)
    def _on_worker_errored(self, job_id: int, text: str) -> None:
        if job_id == self._job_id:
            self._terminal = True
            self.errored.emit(text)

    @Slot(int)
    def _on_worker_cancelled(self, job_id: int) -> None:
        if job_id == self._job_id:
            self._terminal = True
            self.cancelled.emit()

    @Slot(int)
    def _on_worker_done(self, job_id: int) -> None:
        if job_id == self._job_id and self._thread is not None:
            self._collect()

    def _collect(self) -> None:
        """Join the job's thread (its run() has returned or is returning) and release it."""
        thread, worker = self._thread, self._worker
        if thread is None:
            return
        thread.quit()
        thread.wait()
        _LIVE_THREADS.discard(thread)
        self._thread, self._worker = None, None
        del worker, thread        # Python owns both: deleted here, after the thread has ended
        self.stopped.emit()


def call_as_job(function: Callable[[], object], message: str) -> JobFactory:
    """Wrap a plain call (no progress of its own) as a one-step job for `JobRunner`.

    It can be cancelled only before it starts: a function with no yields cannot be stopped midway.
    """

    def job() -> Generator[Progress, None, object]:
        yield Progress(done=0, total=1, message=message)
        return function()

    return job


class QueryRunner(QObject):
    """Runs short reads (store queries, thumbnails, a CSV export) off the GUI thread; the newest wins.

    ``submit(fn)`` runs ``fn()`` on a short-lived Python thread and returns a request id; ``ready`` (or
    ``failed``) comes back on the GUI thread with that id. A view keeps only the answer to its latest
    request (`is_latest`), so a slow query finishing after a newer one never overwrites it. The thread
    only returns plain data (rows, numpy thumbnails); widgets are filled on the GUI thread.
    """

    ready = Signal(int, object)       # request id, fn()'s return value
    failed = Signal(int, object)      # request id, the exception

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._latest = 0
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._delivering = threading.Lock()    # an answer is emitted whole or not at all once closed
        closed, delivering = self._closed, self._delivering

        def owner_gone() -> None:            # not a method: it runs while the object is being deleted
            with delivering:
                closed.set()

        self.destroyed.connect(owner_gone, Qt.ConnectionType.DirectConnection)

    def submit(self, fn: Callable[[], object], *, name: str = "query") -> int:
        """Run ``fn()`` on a new thread; returns the request id that ``ready``/``failed`` will carry."""
        self._latest += 1
        request = self._latest

        def run() -> None:
            try:
                value = fn()
            except Exception as exc:       # delivered, not swallowed
                log.warning("%s failed: %s: %s", name, type(exc).__name__, exc)
                self._deliver(self.failed, request, exc)
                return
            self._deliver(self.ready, request, value)

        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=run, name=f"inspector-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return request

    def is_latest(self, request: int) -> bool:
        return request == self._latest

    @property
    def busy(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout: float = 30.0) -> bool:
        """Join the running requests (tests, shutdown); False if one is still running after ``timeout``."""
        for thread in list(self._threads):
            thread.join(timeout)
        return not self.busy

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop delivering and join the running requests (the view is closing)."""
        self._close()
        self.wait(timeout)

    def _close(self) -> None:
        with self._delivering:            # an emit under way ends first; none starts after
            self._closed.set()

    def _deliver(self, signal: SignalInstance, request: int, value: object) -> None:
        """Emit an answer from the reading thread unless the runner was shut down or its owner deleted
        (a view closed while a slow read ran: nobody is left to take the answer)."""
        with self._delivering:
            if self._closed.is_set():
                return
            try:
                signal.emit(request, value)
            except RuntimeError:          # the Qt object went away without shutdown (its parent deleted)
                self._closed.set()
