"""The Qt bridge to the engine's threads, and a worker thread for long jobs.

Two patterns, both from STYLE.md section 5:

- `PipelineBridge` lives on the GUI thread. The pipeline calls `PipelineBridge.on_result` and
  `PipelineBridge.on_event` on its own threads; they only emit signals, and because the bridge
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
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from inspector.errors import InspectorError
from inspector.results import Progress

__all__ = ["JobRunner", "JobWorker", "PipelineBridge", "call_as_job", "running_job_threads"]

log = logging.getLogger(__name__)

_LIVE_THREADS: set[QThread] = set()     # started by a JobRunner and not yet collected (GUI thread only)


def running_job_threads() -> list[str]:
    """Names of `JobRunner` threads still running: for tests and for a clean shutdown check."""
    return sorted(t.objectName() for t in _LIVE_THREADS if t.isRunning())

JobFactory = Callable[[], Generator[Progress, None, Any]]


class PipelineBridge(QObject):
    """Turns the pipeline's callbacks (engine threads) into queued Qt signals (GUI thread).

    Pass `on_result` as a pipeline consumer and `on_event` as its ``on_event`` callback. Every
    result is emitted; the views keep only the newest one per paint tick (see
    `ui.live_view.HeatmapView`), so a fast camera never floods the screen.
    """

    result_ready = Signal(object)     # inspector.results.InspectionResult
    event = Signal(object)            # inspector.pipeline.PipelineEvent
    warning = Signal(str)             # one sentence (e.g. the archive paused: disk full)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._closed = threading.Event()

    def on_result(self, result: object) -> None:
        """Pipeline consumer: called on the inference thread with each `InspectionResult`."""
        if not self._closed.is_set():
            self.result_ready.emit(result)

    def on_event(self, event: object) -> None:
        """Pipeline ``on_event`` callback: called on engine threads with each `PipelineEvent`."""
        if not self._closed.is_set():
            self.event.emit(event)

    def on_warning(self, text: str) -> None:
        """Warning callback of engine helpers (archive, store); any thread."""
        if not self._closed.is_set():
            self.warning.emit(text)

    def close(self) -> None:
        """Stop forwarding (the window is closing); callbacks still in flight become no-ops."""
        self._closed.set()


class JobWorker(QObject):
    """Iterates a job generator on a worker thread; lives on that thread after ``moveToThread``.

    Signals carry plain data: a `Progress`, the generator's return value, or one sentence.
    """

    progress = Signal(object)     # Progress
    finished = Signal(object)     # the generator's return value
    errored = Signal(str)         # "TypeName: message"
    raised = Signal(object)       # the exception itself, for callers that react by type
    cancelled = Signal()
    done = Signal()               # after any of the three above; the controller quits the thread

    def __init__(self, job: JobFactory) -> None:
        super().__init__()        # parentless, so it can move to the worker thread
        self._job = job
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next yield; safe from any thread."""
        self._cancel.set()

    @Slot()
    def run(self) -> None:
        """Build and iterate the generator; checks the cancel flag at every yield."""
        try:
            generator = self._job()
            try:
                while True:
                    if self._cancel.is_set():
                        generator.close()
                        self.cancelled.emit()
                        return
                    self.progress.emit(next(generator))
            except StopIteration as stop:
                self.finished.emit(stop.value)
        except Exception as exc:  # delivered to the GUI, not swallowed
            if isinstance(exc, InspectorError):     # an expected failure with its own sentence
                log.warning("background job failed: %s: %s", type(exc).__name__, exc)
            else:
                log.exception("background job failed")
            self.raised.emit(exc)
            self.errored.emit(f"{type(exc).__name__}: {exc}")
        finally:
            self.done.emit()


class JobRunner(QObject):
    """Controller of one background job at a time: owns the ``QThread`` and forwards the worker's signals.

    ``shutdown()`` (called when the owning window closes) cancels the job, quits the thread and
    waits for it, so no thread outlives its window.
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
            self._thread.quit()
            self._thread.wait()
            self._collect()
        if self._thread is not None:
            msg = f"cannot start {name!r}: another background job is still running; cancel it first"
            raise RuntimeError(msg)
        thread = QThread()
        thread.setObjectName(f"inspector-{name}")
        worker = JobWorker(job)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self._on_worker_progress)
        worker.finished.connect(self._on_worker_finished)
        worker.errored.connect(self._on_worker_errored)
        worker.raised.connect(self._on_worker_raised)
        worker.cancelled.connect(self._on_worker_cancelled)
        worker.done.connect(thread.quit)
        thread.finished.connect(worker.deleteLater)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker, self._terminal = thread, worker, False
        self.name = name
        _LIVE_THREADS.add(thread)
        thread.start()

    @Slot(object)
    def _on_worker_progress(self, progress: object) -> None:
        self.progress.emit(progress)

    @Slot(object)
    def _on_worker_finished(self, value: object) -> None:
        self._terminal = True
        self.finished.emit(value)

    @Slot(object)
    def _on_worker_raised(self, exc: object) -> None:
        self._terminal = True
        self.raised.emit(exc)

    @Slot(str)
    def _on_worker_errored(self, text: str) -> None:
        self._terminal = True
        self.errored.emit(text)

    @Slot()
    def _on_worker_cancelled(self) -> None:
        self._terminal = True
        self.cancelled.emit()

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
        ended = thread.wait(timeout_ms)
        if ended:
            self._collect()
        else:
            log.warning("background job %s did not stop within %d ms", thread.objectName(), timeout_ms)
        return bool(ended)

    @Slot()
    def _on_thread_finished(self) -> None:
        sender = self.sender()
        if sender is not None and sender != self._thread:
            return                # a late signal from a thread already collected
        self._collect()

    def _collect(self) -> None:
        thread, self._thread, self._worker = self._thread, None, None
        if thread is not None:
            thread.wait()         # finished was emitted; this returns at once
            _LIVE_THREADS.discard(thread)
            thread.deleteLater()
            self.stopped.emit()


def call_as_job(function: Callable[[], Any], message: str) -> JobFactory:
    """Wrap a plain call (no progress of its own) as a one-step job for `JobRunner`.

    It can be cancelled only before it starts: a function with no yields cannot be stopped midway.
    """

    def job() -> Generator[Progress, None, Any]:
        yield Progress(done=0, total=1, message=message)
        return function()

    return job
