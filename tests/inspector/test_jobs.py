"""relay_progress: ticks relayed in order, the value returned, failures re-raised, closing cancels the call."""

from __future__ import annotations

import threading

import pytest

from inspector._jobs import ProgressCallback, relay_progress
from inspector.results import Progress


class Cancelled(Exception):
    pass


def _relay(call: object) -> object:
    return relay_progress(call, message="working", cancelled=lambda: Cancelled("stop"))  # type: ignore[arg-type]


def test_ticks_arrive_in_order_and_the_value_is_returned() -> None:
    def call(progress: ProgressCallback) -> str:
        for i in range(1, 6):
            progress(i, 5)
        return "done"

    job = _relay(call)
    ticks: list[Progress] = []
    with pytest.raises(StopIteration) as stop:
        while True:
            ticks.append(next(job))  # type: ignore[call-overload]
    assert [(t.done, t.total, t.message) for t in ticks] == [(i, 5, "working") for i in range(1, 6)]
    assert stop.value.value == "done"


def test_a_failure_is_raised_on_the_callers_thread() -> None:
    def call(progress: ProgressCallback) -> None:
        progress(1, 2)
        msg = "the detector refused the images"
        raise ValueError(msg)

    with pytest.raises(ValueError, match="refused"):
        list(_relay(call))  # type: ignore[call-overload]


def test_closing_the_generator_cancels_the_call_at_its_next_tick() -> None:
    seen_cancel = threading.Event()
    release = threading.Event()

    def call(progress: ProgressCallback) -> None:
        progress(1, 100)
        release.wait(5)
        try:
            progress(2, 100)
        except Cancelled:
            seen_cancel.set()
            raise

    job = _relay(call)
    assert next(job).done == 1  # type: ignore[call-overload]
    closer = threading.Thread(target=job.close)  # type: ignore[attr-defined]
    closer.start()
    release.set()
    closer.join(5)
    assert not closer.is_alive(), "close() returned: the helper thread ended"
    assert seen_cancel.is_set()
    assert not any(t.name == "inspector-job" for t in threading.enumerate())
