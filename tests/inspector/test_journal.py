"""Durable before reported: the result journal, its forwarding to the store, and what survives SIGKILL.

Real SQLite files throughout; the store is made unavailable the way a second program does it, by
holding its write lock.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from inspector.errors import StoreError
from inspector.journal import JournalFull, ResultJournal, journal_path_for
from inspector.recording import Receipt, ResultRecorder
from inspector.results import InspectionResult, Verdict
from inspector.store import Store, result_rows
from tests.helpers.images import textured_part, write_images

REPO = Path(__file__).resolve().parents[2]


def _result(frame_id: int, verdict: Verdict = Verdict.PASS) -> InspectionResult:
    return InspectionResult(
        frame_id=frame_id, timestamp=1_795_400_000.0 + frame_id, source="camera 0", recipe="tiny_part",
        model_version="v1", verdict=verdict, score=0.1 * frame_id, image_bgr=None,
    )


def _stored(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT frame_id, result_id FROM inspections ORDER BY id").fetchall()


@contextmanager
def _write_locked(db: Path) -> Iterator[None]:
    """Hold the database's write lock, as another program in a long transaction does."""
    conn = sqlite3.connect(db, timeout=1.0, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_record_returns_once_durable_and_the_forwarder_stores_in_order(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    store = Store(db)
    recorder = ResultRecorder(store)
    heard: list[tuple[int, Receipt]] = []
    recorder.add_durable_listener(lambda result, receipt: heard.append((result.frame_id, receipt)))
    receipts = [recorder.record(_result(i)) for i in range(5)]
    assert recorder.journal_path == journal_path_for(db) == tmp_path / "station.pending.db"
    assert all(isinstance(r, Receipt) for r in receipts)
    assert [frame for frame, _ in heard] == list(range(5))
    assert recorder.wait_stored(10)
    assert recorder.close() == 0
    store.close()
    rows = _stored(db)
    assert [frame for frame, _ in rows] == list(range(5))
    assert [rid for _, rid in rows] == [r.result_id for r in receipts if r is not None]


def test_a_journal_left_by_a_crash_is_forwarded_once_on_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    Store(db).close()
    journal = ResultJournal(journal_path_for(db))
    for i in range(4):
        journal.append(f"id-{i}", result_rows(_result(i)))
    journal.close()
    # the crash came after the store committed id-0 but before the journal forgot it
    store = Store(db)
    assert store.insert_results([("id-0", result_rows(_result(0)))]) == 1
    recorder = ResultRecorder(store)
    assert recorder.wait_stored(10)
    assert recorder.close() == 0
    store.close()
    assert _stored(db) == [(0, "id-0"), (1, "id-1"), (2, "id-2"), (3, "id-3")]


def test_an_old_store_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:            # make it look like a schema-1 store with one row
        conn.execute("DROP INDEX ux_inspections_result_id")
        conn.execute("ALTER TABLE inspections DROP COLUMN result_id")
        conn.execute("INSERT INTO inspections (time, recipe, model_version, line, station, lot, source, frame_id,"
                     " verdict) VALUES (1, 'r', '', '', '', '', '', 7, 'PASS')")
        conn.execute("UPDATE store_meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("UPDATE alembic_version SET version_num = '0001'")     # the revision of schema 1
    store = Store(db)
    assert store.insert_results([("new", result_rows(_result(8)))]) == 1
    assert store.insert_results([("new", result_rows(_result(8)))]) == 0
    store.close()
    assert _stored(db) == [(7, None), (8, "new")]


@pytest.mark.parametrize("lock_s", [
    3.0,
    # the probe: same code path, ten times longer
    pytest.param(30.0, marks=pytest.mark.slow),
])
def test_a_locked_store_loses_nothing_and_recording_does_not_wait(tmp_path: Path, lock_s: float) -> None:
    db = tmp_path / "station.db"
    busy_s = 0.2
    store = Store(db, busy_timeout_s=busy_s)
    warnings: list[str] = []
    recorder = ResultRecorder(store, on_warning=warnings.append)
    try:
        with _write_locked(db):
            started = time.monotonic()
            took: list[float] = []
            while time.monotonic() - started < lock_s:
                t0 = time.perf_counter()
                assert recorder.record(_result(len(took))) is not None
                took.append(time.perf_counter() - t0)
                time.sleep(0.1)
            n = len(took)
            assert recorder.pending == n and _stored(db) == []
            assert recorder.last_error is not None and "locked" in str(recorder.last_error)
        # A record() that waited on the store would take the store's busy timeout every time; the median
        # says whether it does, robust to the odd slow fsync of the journal on a loaded machine.
        typical = float(np.median(took))
        assert typical < busy_s / 2, f"record() typically took {typical:.3f} s while the store was locked"
        assert max(took) < 5.0, f"record() once waited {max(took):.2f} s"
        assert any("wait in" in w and "station.pending.db" in w for w in warnings), warnings
        assert recorder.wait_stored(30)
    finally:
        left = recorder.close()
        store.close()
    assert left == 0
    assert [frame for frame, _ in _stored(db)] == list(range(n))


def test_a_full_journal_refuses_instead_of_dropping(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    store = Store(db, busy_timeout_s=0.1)
    recorder = ResultRecorder(store, max_journal=3)
    with _write_locked(db):
        for i in range(3):
            recorder.record(_result(i))
        with pytest.raises(JournalFull, match=r"station\.pending\.db is full: 3 results wait"):
            recorder.record(_result(3))
    assert recorder.wait_stored(30) and recorder.close() == 0
    store.close()
    assert [frame for frame, _ in _stored(db)] == [0, 1, 2]


# ---- inspector run ----


@pytest.fixture
def many_frames(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    return write_images(tmp_path / "frames", [textured_part(rng) for _ in range(40)])[0].parent


def _few_frames_and_a_store(tmp_path: Path, n: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(n)
    frames = write_images(tmp_path / "few", [textured_part(rng) for _ in range(n)])[0].parent
    db = tmp_path / "station.db"
    Store(db).close()
    return frames, db


def _forward_what_is_left(db: Path) -> None:
    """Start a recorder on the store, as the next run does: it forwards what its journal holds."""
    store = Store(db)
    recorder = ResultRecorder(store)
    assert recorder.wait_stored(30)
    assert recorder.close() == 0
    store.close()


def _run_command(recipe: Path, frames: Path, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inspector", "run", str(recipe), "--source", str(frames), "--store", str(db),
            "--no-archive", *extra]


@pytest.mark.parametrize("kill_after", [1, 4, 9])
def test_sigkill_after_the_nth_printed_result_loses_none_that_was_printed(
    taught_recipe: Path, many_frames: Path, tmp_path: Path, kill_after: int
) -> None:
    db = tmp_path / "station.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_run_command(taught_recipe, many_frames, db), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    printed: list[str] = []

    def frame_name(line: str) -> list[str]:   # a flagged frame's line ends with "N region(s)" after its name
        return [word for word in line.split() if word.endswith(".png")][:1]

    try:
        for line in proc.stdout:
            printed += frame_name(line)
            if len(printed) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        printed += [name for line in proc.stdout for name in frame_name(line)]   # already in the pipe
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and len(printed) >= kill_after
    assert len(printed) < 40, "the run ended before it was killed; the test proves nothing"
    _forward_what_is_left(db)            # the next start forwards what the killed run left in its journal
    with sqlite3.connect(db) as conn:
        stored = {Path(p).name for (p,) in conn.execute("SELECT path FROM inspections")}
        duplicates = conn.execute("SELECT count(*) - count(DISTINCT path) FROM inspections").fetchone()[0]
    missing = [name for name in printed if name not in stored]
    assert missing == [], f"printed but not stored after SIGKILL: {missing}"
    assert duplicates == 0


def _run_stopped_by_sigterm(recipe: Path, frames: Path, db: Path, *, again: bool) -> tuple[int, list[str], str, str]:
    """`inspector run` sent SIGTERM after its second printed result (with ``again``, once more as it says that it
    stops); returns its exit code, the frames it printed, its stdout and its stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_run_command(recipe, frames, db), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    printed: list[str] = []
    err: list[str] = []
    try:
        for line in proc.stdout:
            printed += [w for w in line.split() if w.endswith(".png")][:1]
            if len(printed) >= 2:
                proc.send_signal(signal.SIGTERM)
                break
        for line in proc.stderr if again else ():
            err.append(line)
            if line.startswith("interrupted: stopping"):
                proc.send_signal(signal.SIGTERM)          # the second, while it stops
                break
        out, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    printed += [w for line in out.splitlines() for w in line.split() if w.endswith(".png")][:1]
    return proc.returncode, printed, out, "".join(err) + rest


def test_sigterm_stops_a_run_as_ctrl_c_does_with_every_result_stored_and_a_summary(
    taught_recipe: Path, many_frames: Path, tmp_path: Path
) -> None:
    """A service stop sends SIGTERM: the run died at once (no summary; the PLC links and the journal left to the
    next start). It now stops as at the source's end: pipeline stopped, journal forwarded, summary printed."""
    db = tmp_path / "station.db"
    code, _, out, err = _run_stopped_by_sigterm(taught_recipe, many_frames, db, again=False)
    assert code == 130, err
    assert "interrupted: stopping; every result printed is recorded" in err
    summary = [line for line in out.splitlines() if line.startswith("inspected ")]
    assert len(summary) == 1, out
    inspected = int(summary[0].split()[1])
    assert 2 <= inspected < 40 and f"recorded {inspected}" in summary[0]
    assert len(_stored(db)) == inspected, "every result was in the store when the run ended"
    if journal_path_for(db).exists():
        journal = ResultJournal(journal_path_for(db))
        assert journal.count == 0
        journal.close()


def test_a_second_sigterm_while_the_run_stops_does_not_abort_it(
    taught_recipe: Path, many_frames: Path, tmp_path: Path
) -> None:
    """An impatient second Ctrl-C, or a service manager's second SIGTERM, raised inside the shutdown and left the
    pipeline's threads running into the interpreter's exit: "terminate called without an active exception", exit
    134. While the pipeline and the links close, a second signal now only says so."""
    db = tmp_path / "station.db"
    code, printed, _, err = _run_stopped_by_sigterm(taught_recipe, many_frames, db, again=True)
    assert code == 130 and "terminate called" not in err, err
    with sqlite3.connect(db) as conn:
        stored = {Path(p).name for (p,) in conn.execute("SELECT path FROM inspections")}
    assert [name for name in printed if name not in stored] == []


def test_run_with_the_store_locked_leaves_results_in_the_journal_and_says_where(
    taught_recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspector.cli import EXIT_ERROR, main

    frames, db = _few_frames_and_a_store(tmp_path, 3)
    with _write_locked(db):
        code = main(["run", str(taught_recipe), "--source", str(frames), "--store", str(db), "--no-archive",
                     "--leave-pending"])
        captured = capsys.readouterr()
        assert code == EXIT_ERROR
        assert captured.out.count(".png") == 3        # each line printed once durable in the journal
        assert f"3 result(s) are not yet in the statistics store {db}; they wait in {tmp_path / 'station.pending.db'}" \
            in captured.err, captured.err
        assert _stored(db) == []
    _forward_what_is_left(db)
    assert len(_stored(db)) == 3


def test_run_waits_for_a_store_that_comes_back(
    taught_recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspector.cli import EXIT_OK, main

    frames, db = _few_frames_and_a_store(tmp_path, 2)
    release = threading.Event()

    def hold_lock() -> None:
        with _write_locked(db):
            release.wait(20)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    timer = threading.Timer(4.0, release.set)        # the store comes back after 4 s
    timer.start()
    try:
        code = main(["run", str(taught_recipe), "--source", str(frames), "--store", str(db), "--no-archive"])
    finally:
        release.set()
        timer.cancel()
        holder.join()
    assert code == EXIT_OK, capsys.readouterr().err
    assert len(_stored(db)) == 2


def test_a_result_another_forwarder_stores_meanwhile_is_skipped_not_refused(tmp_path: Path) -> None:
    """Two processes forwarding one journal: the other commits an id between our check and our insert."""
    import sqlalchemy as sa

    db = tmp_path / "station.db"
    store, other = Store(db), Store(db)
    raced: list[int] = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _other_commits_first(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("INSERT INTO inspections") and not raced:
            raced.append(other.insert_results([("id-0", result_rows(_result(0)))]))

    entries = [(f"id-{i}", result_rows(_result(i))) for i in range(3)]
    assert store.insert_results(entries) == 2          # id-0 was the other's; no constraint error
    assert raced == [1]
    other.close()
    store.close()
    assert sorted(rid for _, rid in _stored(db)) == ["id-0", "id-1", "id-2"]


def test_stats_after_a_crash_counts_what_the_run_left_in_its_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspector.cli import EXIT_OK, main

    db = tmp_path / "station.db"
    Store(db).close()
    journal = ResultJournal(journal_path_for(db))      # what a run killed after printing three results leaves
    for i in range(3):
        journal.append(f"id-{i}", result_rows(_result(i)))
    journal.close()
    assert main(["stats", "--store", str(db)]) == EXIT_OK
    captured = capsys.readouterr()
    assert f"forwarded 3 result(s) that a run had left in {journal_path_for(db)}" in captured.err
    assert [line.split()[:2] for line in captured.out.splitlines() if line.startswith("tiny_part")] == \
        [["tiny_part", "3"]]
    assert len(_stored(db)) == 3


def test_a_full_store_loses_nothing_and_takes_the_results_when_it_has_room(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (its page limit reached), then room again."""
    import sqlalchemy as sa

    db = tmp_path / "station.db"
    store = Store(db, busy_timeout_s=0.2)
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]

    def no_room(dbapi_connection: sqlite3.Connection, record: object) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    sa.event.listen(store.engine, "connect", no_room)
    store.engine.dispose()                               # every connection from now on is limited
    filled = 0
    with pytest.raises(StoreError, match="full"):        # fill the pages there are
        for filled in range(1, 10_000):
            store.insert_results([(f"fill-{filled}", result_rows(_result(100)))])
    warnings: list[str] = []
    recorder = ResultRecorder(store, on_warning=warnings.append)
    receipts = [recorder.record(_result(i)) for i in range(5)]
    assert all(r is not None for r in receipts)
    assert not recorder.wait_stored(2.0)
    assert recorder.pending == 5 and len(_stored(db)) == filled - 1
    assert recorder.last_error is not None and "full" in str(recorder.last_error)
    assert any("full" in w and "wait in" in w and "station.pending.db" in w for w in warnings), warnings
    sa.event.remove(store.engine, "connect", no_room)
    store.engine.dispose()                               # room again
    assert recorder.wait_stored(30)
    assert recorder.close() == 0
    store.close()
    assert [frame for frame, _ in _stored(db)] == [100] * (filled - 1) + list(range(5))


def test_the_lot_counts_are_durable_with_each_result_and_a_new_lot_starts_them_afresh(tmp_path: Path) -> None:
    path = tmp_path / "station.pending.db"
    journal = ResultJournal(path)
    assert journal.tally() == (0, {}, None)
    for i, verdict in enumerate(["PASS", "FAIL", "PASS"]):
        journal.append(f"r{i}", {"i": i}, tally=(0, verdict))
    journal.append("untallied", {"i": 9})                      # a command-line run's result: not counted
    # read by another connection while this one is still open: what a process killed now leaves
    other = ResultJournal(path)
    assert other.tally() == (0, {"PASS": 2, "FAIL": 1}, None)
    other.close()
    journal.remove([e.seq for e in journal.peek(10)])          # stored: the counts stay
    journal.append("r3", {"i": 3}, tally=(1, "REVIEW"))        # a New lot's first result, before its mark
    journal.begin_tally(1, "2412-07")
    journal.begin_tally(1, "2412-07b")                          # renamed: nothing counted is lost
    assert journal.tally() == (1, {"REVIEW": 1}, "2412-07b")
    journal.begin_tally(2, "")
    assert journal.tally() == (2, {}, "")
    journal.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT DISTINCT epoch FROM tally").fetchall() == [(2,)]   # older lots forgotten
        assert conn.execute("SELECT epoch FROM tally_lot").fetchall() == [(2,)]


def test_a_station_recorder_counts_its_lot_across_a_restart_and_a_command_line_run_leaves_it(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    store = Store(db)
    station = ResultRecorder(store, count_lot=True)
    assert station.counted_lot is None
    station.set_lot(" L-7 ")
    for i, verdict in enumerate([Verdict.PASS, Verdict.FAIL, Verdict.ERROR]):
        station.record(_result(i, verdict))
    assert (station.lot_counts.passed, station.lot_counts.failed, station.lot_counts.errors) == (1, 1, 1)
    station.close()
    cli = ResultRecorder(store)                                 # `inspector run` on the same store
    cli.set_lot("OTHER")
    cli.record(_result(3, Verdict.FAIL))
    assert cli.lot_counts.inspected == 0
    cli.close()
    again = ResultRecorder(store, count_lot=True)
    assert (again.lot_counts.inspected, again.lot_counts.failed) == (3, 1) and again.counted_lot == "L-7"
    again.new_lot()                                             # returns at once; the forwarder writes it
    again.record(_result(4, Verdict.REVIEW))
    assert (again.lot_counts.inspected, again.lot_counts.review) == (1, 1)
    again.close()
    last = ResultRecorder(store, count_lot=True)
    assert (last.lot_counts.inspected, last.lot_counts.review) == (1, 1)
    last.new_lot()
    last.close()                                                # a New lot just before closing is kept too
    fresh = ResultRecorder(store, count_lot=True)
    assert fresh.lot_counts.inspected == 0
    fresh.close()
    store.close()
    assert len(_stored(db)) == 5


def test_sigkill_mid_lot_loses_no_count_of_a_result_reported(tmp_path: Path) -> None:
    """A station process records and reports results until it is killed; the next one counts every reported one."""
    db = tmp_path / "station.db"
    script = (
        "import sys, time\n"
        "from inspector.recording import ResultRecorder\n"
        "from inspector.results import InspectionResult, Verdict\n"
        "from inspector.store import Store\n"
        f"recorder = ResultRecorder(Store({str(db)!r}), count_lot=True)\n"
        "for i in range(100000):\n"
        "    verdict = Verdict.FAIL if i % 3 == 0 else Verdict.PASS\n"
        "    recorder.record(InspectionResult(frame_id=i, timestamp=time.time(), source='s', recipe='r',\n"
        "                                     model_version='v1', verdict=verdict, score=0.1, image_bgr=None))\n"
        "    print(verdict.value, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    reported: list[str] = []
    try:
        for line in proc.stdout:
            reported.append(line.strip())
            if len(reported) >= 25:
                proc.send_signal(signal.SIGKILL)
                break
        reported += [line.strip() for line in proc.stdout]
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and 25 <= len(reported) < 100000
    store = Store(db)
    next_run = ResultRecorder(store, count_lot=True)
    counts = next_run.lot_counts
    next_run.close()
    # each report came after its commit; a commit whose line the kill cut off may be counted too (one at most)
    assert counts.failed >= reported.count("FAIL") and counts.passed >= reported.count("PASS")
    assert counts.inspected - len(reported) in (0, 1)
    store.close()
