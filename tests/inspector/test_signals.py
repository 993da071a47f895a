"""Ctrl-C and SIGTERM as requests to stop: a long job closes cleanly, and a second signal while it closes only
says so (raised there, it left the job's threads running into the interpreter's exit, which aborts).

The signals are real (``os.kill`` of this process, on pytest's main thread); ``inspector run``'s are tested as a
subprocess in test_journal.py.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Generator

import pytest

from inspector._commands import drive
from inspector.cli import StopRequest
from inspector.results import Progress


def test_a_signal_stops_a_job_at_its_next_tick_and_a_second_one_does_not_cut_its_closing_short(
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker_stop = threading.Event()
    worker = threading.Thread(target=worker_stop.wait, daemon=True)     # a thread the job must end when closed
    closed: list[str] = []

    def job() -> Generator[Progress, None, str]:
        worker.start()
        try:
            for i in range(1000):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGTERM)     # a service stop, mid-job
                yield Progress(done=i, total=1000, message=f"image {i}")
            return "finished"
        finally:
            os.kill(os.getpid(), signal.SIGINT)              # an impatient Ctrl-C while it closes
            worker_stop.set()
            worker.join(5)
            closed.append("closed")

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        drive(job(), desc="reviewing")
    assert closed == ["closed"] and not worker.is_alive()
    err = capsys.readouterr().err
    assert "interrupted: stopping (reviewing)" in err and "still stopping (reviewing)" in err
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before, "handlers given back"


def test_stop_request_counts_signals_and_installs_nothing_off_the_main_thread() -> None:
    request = StopRequest("first", "again")
    with request:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    assert request.stopping.is_set() and request.count == 2
    elsewhere: list[bool] = []

    def off_main() -> None:
        with StopRequest("first", "again") as other:
            elsewhere.append(other.stopping.is_set())

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join(5)
    assert elsewhere == [False]
