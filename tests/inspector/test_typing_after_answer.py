"""Defect typing after the verdict: a journal entry held for its types, the recorder's amend, `PendingTyping`,
and the app's continuous station showing the verdict before the types."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import inspector.journal as journal_module
from inspector.capture import ArraySource
from inspector.controller import ResultArrived, ResultTyped, StationController
from inspector.defect_typing import PendingTyping, finish_typing
from inspector.journal import ResultJournal
from inspector.recording import ResultRecorder
from inspector.results import DefectRegion, InspectionResult, Verdict
from inspector.store import Store
from tests.helpers.images import textured_part, with_defect
from tests.helpers.typing import TYPED, labelled_station, watch_typing

REGION = DefectRegion(x=4, y=4, width=6, height=6, area_px=36, area_mm2=None, max_score=1.0, mean_score=0.8)


def _typed(region: DefectRegion, name: str) -> DefectRegion:
    return dataclasses.replace(region, predicted_class=name, type_confidence=0.9,
                               embedding=np.ones(8, np.float32) / np.sqrt(8))


def _result(frame_id: int, typing: PendingTyping | None = None) -> InspectionResult:
    return InspectionResult(
        frame_id=frame_id, timestamp=1_795_400_000.0 + frame_id, source="camera 0", recipe="tiny_part",
        model_version="v1", verdict=Verdict.FAIL, score=0.9, regions=(REGION,), typing=typing,
    )


def _predicted(db: Path) -> list[tuple[int, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT i.frame_id, r.predicted_class FROM inspections i JOIN regions r "
                            "ON r.inspection_id = i.id ORDER BY i.id").fetchall()


def test_a_held_entry_waits_for_its_types_and_holds_back_the_later_ones(tmp_path: Path) -> None:
    journal = ResultJournal(tmp_path / "j.db")
    journal.append("a", {"n": 1})
    held = journal.append("b", {"n": 2}, hold=True)
    journal.append("c", {"n": 3})
    assert [e.result_id for e in journal.peek(10)] == ["a"]          # in order: c waits behind b
    assert journal.held == 1 and journal.count == 3
    assert journal.amend(held, {"n": 2, "typed": True})
    assert [e.payload for e in journal.peek(10)] == [{"n": 1}, {"n": 2, "typed": True}, {"n": 3}]
    assert journal.held == 0
    journal.remove([e.seq for e in journal.peek(10)])
    assert not journal.amend(held, {"n": 2})       # gone (forwarded): the caller is told, nothing is written
    journal.close()


def test_a_hold_is_not_kept_by_a_crash_nor_for_ever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.db"
    journal = ResultJournal(path)
    journal.append("a", {"n": 1}, hold=True)
    journal.close()                                 # the process dies before the types: the next one forwards it
    again = ResultJournal(path)
    assert [e.result_id for e in again.peek(10)] == ["a"]
    again.append("b", {"n": 2}, hold=True)
    monkeypatch.setattr(journal_module, "HOLD_MAX_S", 0.0)
    time.sleep(0.01)
    assert [e.result_id for e in again.peek(10)] == ["a", "b"]     # typing that never ends lets it go
    assert again.held == 0
    again.close()


def test_pending_typing_runs_once_and_tells_every_listener(tmp_path: Path) -> None:
    calls: list[int] = []

    def work() -> tuple[DefectRegion, ...]:
        calls.append(1)
        time.sleep(0.05)
        return (_typed(REGION, "scratch"),)

    pending = PendingTyping(work, (REGION,))
    heard: list[tuple[DefectRegion, ...]] = []
    pending.add_done_callback(heard.append)
    result = _result(1, pending)
    threads = [threading.Thread(target=lambda: finish_typing(result)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = finish_typing(result)
    assert calls == [1] and pending.done
    assert finished.typing is None and finished.regions[0].predicted_class == "scratch"
    assert finished.times.postprocess_ms >= 50 > result.times.postprocess_ms      # the typing's time counts
    pending.add_done_callback(heard.append)        # after the fact: told at once
    assert [r[0].predicted_class for r in heard] == ["scratch", "scratch"]
    assert finish_typing(finished) is finished


def test_typing_that_fails_keeps_the_result_untyped() -> None:
    def work() -> tuple[DefectRegion, ...]:
        msg = "the typer's store is gone"
        raise RuntimeError(msg)

    pending = PendingTyping(work, (REGION,))
    finished = finish_typing(_result(1, pending))
    assert finished.regions == (REGION,) and finished.typing is None and pending.done


def test_the_recorder_holds_a_result_from_the_store_until_it_is_typed(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    store = Store(db)
    recorder = ResultRecorder(store)
    def work() -> tuple[DefectRegion, ...]:
        time.sleep(0.05)
        return (_typed(REGION, "scratch"),)

    pending = PendingTyping(work, (REGION,))
    recorder.record(_result(1))
    receipt = recorder.record(_result(2, pending))          # durable now: the verdict can be reported
    recorder.record(_result(3))
    assert receipt is not None and receipt.seq > 0
    time.sleep(0.5)                                         # the forwarder runs: frame 1 goes, 2 and 3 wait
    assert _predicted(db) == [(1, None)]
    assert recorder.pending == 2
    finish_typing(_result(2, pending))
    assert recorder.wait_stored(10)
    assert _predicted(db) == [(1, None), (2, "scratch"), (3, None)]
    with sqlite3.connect(db) as conn:                       # its time as stored includes the typing's
        latency = dict(conn.execute("SELECT frame_id, latency_ms FROM inspections").fetchall())
    assert latency[2] >= 50 > latency[1]
    recorder.close()
    store.close()


def test_a_continuous_station_shows_the_verdict_first_then_its_types_and_publishes_them_typed(
    taught_recipe: Path, tmp_path: Path
) -> None:
    """The app without a PLC: the screen gets a FAIL before the typer runs, then its types (`ResultTyped`);
    MQTT's place (``after_record``) and the store get the typed result only."""
    rng = np.random.default_rng(5)
    store = Store(tmp_path / "stats.db")
    station = labelled_station(taught_recipe, store, rng)
    seen: list[object] = []                 # events and typer calls, in the order they happened
    watch_typing(station, lambda: seen.append("typer"))
    recorder = ResultRecorder(store)
    defect = with_defect(textured_part(rng), rng)[0]
    controller = StationController(
        load_inspector=lambda path: station, open_source=lambda text: ArraySource([defect]),
        recipe_source=lambda inspector: None, recorder=recorder,
        on_event=lambda e: seen.append(e) if isinstance(e, ResultArrived | ResultTyped) else None)
    published: list[InspectionResult] = []
    controller.after_record.append(published.append)
    try:
        controller.start(taught_recipe, source_text="memory")
        end = time.monotonic() + 60
        while not any(isinstance(e, ResultTyped) for e in seen) and time.monotonic() < end:
            time.sleep(0.02)
        arrived, typer_ran, typed = seen
        assert isinstance(arrived, ResultArrived) and typer_ran == "typer" and isinstance(typed, ResultTyped)
        assert arrived.result.verdict in (Verdict.REVIEW, Verdict.FAIL) and arrived.result.regions
        assert {r.predicted_class for r in arrived.result.regions} == {None}       # shown before typing
        assert typed.result.frame_id == arrived.result.frame_id and typed.current
        types = {r.predicted_class for r in typed.result.regions}
        assert len(types) == 1 and types <= TYPED
        # its inspection time, on screen and stored, includes the typing's, as when typed inline
        assert typed.result.times.total_ms > arrived.result.times.total_ms
        assert controller.metrics().inspect_ms == typed.result.times.total_ms
        assert [r.frame_id for r in published] == [arrived.result.frame_id]         # published once, typed
        assert {r.predicted_class for r in published[0].regions} == types
        assert recorder.wait_stored(10)
        newest = max(store.inspections(recipe=station.name), key=lambda r: r.id)
        assert {r.predicted_class for r in newest.regions} == types
    finally:
        controller.shutdown()
        recorder.close()
        store.close()
