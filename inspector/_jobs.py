"""Run a blocking call with a progress callback as a `Progress` generator, cancellable by closing it.

Teaching (``detector.fit``) and zero-shot review (``scorer.score``) are single calls that take
minutes on a CPU and report ``(done, total)`` through a callback. The engine's long jobs are
generators of `Progress` (the CLI drives them with a bar, the app on a worker thread with a
cancel button), so the call runs on a helper thread and its ticks are relayed; once the generator
is closed, the callback raises on the next tick and the call ends there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

from inspector.results import Progress

__all__ = ["ProgressCallback", "relay_progress"]

T = TypeVar("T")
ProgressCallback = Callable[[int, int], None]


def relay_progress(
    call: Callable[[ProgressCallback], T],
    *,
    message: str,
    cancelled: Callable[[], BaseException],
    name: str = "inspector-job",
    unit: str = "img",
) -> Generator[Progress, None, T]:
    """Run ``call(progress)`` on a helper thread, yielding a `Progress` per tick; returns its value.

    Args:
        call: the blocking work; it must call ``progress(done, total)`` now and then.
        message: the `Progress.message` of every tick.
        cancelled: makes the exception the callback raises once the generator is closed.
        name: the helper thread's name (shows in debuggers and thread dumps).
        unit: what ``call`` counts (`Progress.unit`).

    Raises:
        Whatever ``call`` raised, re-raised on the caller's thread.
    """
    ticks: queue.Queue[tuple[int, int]] = queue.Queue()
    cancel = threading.Event()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def progress(done: int, total: int) -> None:
        if cancel.is_set():
            raise cancelled()
        ticks.put((done, total))

    def work() -> None:
        try:
            outcome.append(call(progress))
        except BaseException as exc:  # delivered to the generator's caller below
            failure.append(exc)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not ticks.empty():
            try:
                done, total = ticks.get(timeout=0.1)
            except queue.Empty:
                continue
            yield Progress(done=done, total=total, message=message, unit=unit)
    finally:
        cancel.set()
        thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
