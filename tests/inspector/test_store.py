"""The statistics store (`inspector.store`), on real SQLite files in tmp_path.

Includes a second process writing the same file at the same time, and a writer killed with SIGKILL
in the middle of a run.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inspector.errors import StoreError
from inspector.results import DefectRegion, InspectionResult, StageTimes, Verdict
from inspector.store import ScorePoint, Store, YieldRow

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 23, tzinfo=UTC).timestamp()   # a Monday, 00:00 UTC
HOUR = 3600.0


def result(i: int = 0, *, t: float | None = None, recipe: str = "bracket_a", verdict: Verdict = Verdict.PASS,
           score: float | None = 0.1, regions: int = 0, line: str = "L1", lot: str = "lot-1",
           station: str = "S1", error: str | None = None) -> InspectionResult:
    return InspectionResult(
        frame_id=i, timestamp=T0 + i if t is None else t, source="folder:test", recipe=recipe,
        model_version="v2", verdict=verdict, score=score, line=line, lot=lot, station=station, error=error,
        path=f"images/{i:04d}.png", times=StageTimes(capture_ms=1.0, model_ms=20.5),
        regions=tuple(DefectRegion(x=10 * k, y=5, width=8, height=6, area_px=30 + k, area_mm2=0.3,
                                   max_score=0.9, mean_score=0.6) for k in range(regions)),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "stats.db", flush_interval=0.01, tz=UTC)
    yield s
    s.close()
    assert not s._thread.is_alive(), "the writer thread must stop on close"


def test_record_flush_and_regions(tmp_path: Path) -> None:
    seen: list[int] = []
    with Store(tmp_path / "stats.db", batch_size=4, flush_interval=0.01, on_recorded=seen.append) as s:
        for i in range(10):
            s.record(result(i, regions=i % 3, verdict=Verdict.FAIL if i % 3 else Verdict.PASS),
                     image_path=f"archive/{i}.jpg", overlay_path=f"archive/{i}_overlay.jpg")
        s.flush()
        assert s.recorded_count == 10 and s.pending == 0
        assert seen == sorted(seen) and seen[-1] == 10, "on_recorded gets the running committed count"
        record = s.inspections(limit=1, offset=8)[0]        # newest first: offset 8 is frame 1
        assert record.frame_id == 1 and record.verdict is Verdict.FAIL
        assert record.image_path == "archive/1.jpg" and record.overlay_path == "archive/1_overlay.jpg"
        assert record.latency_ms == pytest.approx(21.5) and record.path == "images/0001.png"
        assert (record.recipe, record.line, record.lot, record.station, record.model_version) == (
            "bracket_a", "L1", "lot-1", "S1", "v2")
        full = s.get_inspection(s.inspections(limit=1, offset=7)[0].id)    # frame 2: two regions
        assert [(r.x, r.width, r.height, r.area_px, r.area_mm2) for r in full.regions] == [
            (0, 8, 6, 30, 0.3), (10, 8, 6, 31, 0.3)]
        assert all(r.defect_class is None for r in full.regions)
    assert not s._thread.is_alive()


def test_sqlite_file_is_wal_with_indexes(store: Store, tmp_path: Path) -> None:
    store.record(result())
    store.flush()
    con = sqlite3.connect(tmp_path / "stats.db")
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"ix_inspections_time", "ix_inspections_recipe_time", "ix_inspections_verdict"} <= indexes
    finally:
        con.close()


def test_default_location_is_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    with Store() as s:
        assert s.display_name == str(tmp_path / "data" / "inspector.db")
    assert (tmp_path / "data" / "inspector.db").is_file()


def test_yield_per_recipe_line_lot(store: Store) -> None:
    plan = [("bracket_a", "L1", "lot-1", Verdict.PASS)] * 6 + [("bracket_a", "L1", "lot-2", Verdict.FAIL)] * 2
    plan += [("bracket_a", "L2", "lot-2", Verdict.REVIEW), ("pcb", "L2", "lot-3", Verdict.ERROR),
             ("pcb", "L2", "lot-3", Verdict.PASS)]
    for i, (recipe, line, lot, verdict) in enumerate(plan):
        store.record(result(i, recipe=recipe, line=line, lot=lot, verdict=verdict,
                            score=None if verdict is Verdict.ERROR else 0.5))
    store.flush()
    assert store.yield_summary() == [
        YieldRow(key="bracket_a", inspected=9, passed=6, review=1, failed=2, errors=0,
                 yield_pct=pytest.approx(66.667, abs=1e-3)),
        # the ERROR frame is not a part judged: yield = PASS / (PASS + REVIEW + FAIL) = 1 / 1
        YieldRow(key="pcb", inspected=2, passed=1, review=0, failed=0, errors=1, yield_pct=100.0),
    ]
    by_line = {r.key: (r.inspected, r.passed) for r in store.yield_summary(group_by="line")}
    assert by_line == {"L1": (8, 6), "L2": (3, 1)}
    by_lot = {r.key: (r.inspected, r.failed, r.review)
              for r in store.yield_summary(group_by="lot", recipe="bracket_a")}
    assert by_lot == {"lot-1": (6, 0, 0), "lot-2": (3, 2, 1)}
    assert store.yield_summary(recipe="nothing") == []


def test_yield_per_hour_day_and_shift(tmp_path: Path) -> None:
    hours = [0.5, 5.99, 6.0, 13.5, 14.0, 21.99, 22.0, 23.5, 24 + 5.5, 24 + 6.5]
    with Store(tmp_path / "s.db", flush_interval=0.01, tz=UTC) as s:
        for i, h in enumerate(hours):
            s.record(result(i, t=T0 + h * HOUR, verdict=Verdict.FAIL if i == 3 else Verdict.PASS))
        s.flush()
        shifts = {r.key: r.inspected for r in s.yield_summary(group_by="shift")}
        assert shifts == {
            "2026-11-22 22:00-06:00": 2,         # 00:30 and 05:59: the night shift that began the day before
            "2026-11-23 06:00-14:00": 2,
            "2026-11-23 14:00-22:00": 2,
            "2026-11-23 22:00-06:00": 3,
            "2026-11-24 06:00-14:00": 1,
        }
        assert list(shifts) == sorted(shifts), "time groups come in time order"
        days = s.yield_summary(group_by="day")
        assert [(r.key, r.inspected, r.failed) for r in days] == [("2026-11-23", 8, 1), ("2026-11-24", 2, 0)]
        hourly = {r.key: r.inspected for r in s.yield_summary(group_by="hour")}
        assert hourly["2026-11-23 05:00"] == 1 and hourly["2026-11-23 06:00"] == 1 and len(hourly) == 10
        assert [r.key for r in s.yield_summary(group_by="day", since=T0 + 24 * HOUR)] == ["2026-11-24"]

    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))     # a half-hour zone, shifts from 07:00
    with Store(tmp_path / "s.db", tz=ist, shift_start="07:00") as s:
        shifts = {r.key: r.inspected for r in s.yield_summary(group_by="shift")}
        # 00:30 UTC = 06:00 IST, still the night shift of the 22nd (23:00-07:00)
        assert next(iter(shifts)) == "2026-11-22 23:00-07:00"
        assert sum(shifts.values()) == len(hours)


def test_bad_shift_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shift_start must be a local time HH:MM on a quarter hour"):
        Store(tmp_path / "s.db", shift_start="6:10")
    with pytest.raises(ValueError, match="shift_hours must divide 24"):
        Store(tmp_path / "s.db", shift_hours=7)


def test_unknown_group_by(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown or repeated group_by week; use one or more of recipe, line"):
        store.yield_summary(group_by="week")  # type: ignore[arg-type]


def test_inspections_filters_and_paging(store: Store) -> None:
    for i in range(12):
        verdict = Verdict.FAIL if i % 4 == 0 else Verdict.PASS
        store.record(result(i, recipe="a" if i % 2 else "b", verdict=verdict))
    store.flush()
    assert [r.frame_id for r in store.inspections(limit=3)] == [11, 10, 9]
    assert [r.frame_id for r in store.inspections(limit=3, offset=3)] == [8, 7, 6]
    assert [r.frame_id for r in store.inspections(recipe="b", verdict="FAIL")] == [8, 4, 0]
    assert [r.frame_id for r in store.inspections(since=T0 + 3, until=T0 + 6)] == [5, 4, 3]
    assert store.inspections(verdict=Verdict.REVIEW) == []


def test_feedback_and_defect_classes(store: Store) -> None:
    store.record(result(0, verdict=Verdict.FAIL, regions=2))
    store.record(result(1, verdict=Verdict.FAIL, regions=1))
    store.record(result(2, verdict=Verdict.PASS))
    store.flush()
    first, second = sorted(r.id for r in store.inspections(verdict="FAIL"))
    fid = store.add_feedback(first, "crack", user="anna", note="left edge", time_s=T0 + 100)
    store.add_feedback(first, "good", user="ben", time_s=T0 + 200)
    record = store.get_inspection(first)
    assert [(f.label, f.user, f.note) for f in record.feedback] == [
        ("crack", "anna", "left edge"), ("good", "ben", "")]
    assert record.feedback[0].id == fid and record.label == "good"

    assert store.defects_by_class() == [("unclassified", 3)]
    region = record.regions[0].id
    assert store.set_defect_class("crack", user="anna", region_id=region) == 1
    assert store.set_defect_class("burr", user="ben", inspection_id=second) == 1
    assert store.defects_by_class() == [("burr", 1), ("crack", 1), ("unclassified", 1)]
    updated = store.get_inspection(first).regions[0]
    assert (updated.defect_class, updated.classified_by) == ("crack", "anna") and updated.classified_at
    assert store.defects_by_class(recipe="other") == []


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda s: s.add_feedback(999, "good", user="anna"), r"no inspection with id 999 .*not recorded"),
        (lambda s: s.add_feedback(1, "", user="anna"), r"label must be non-empty text"),
        (lambda s: s.add_feedback(1, "good", user=" "), r"user must be non-empty text"),
        (lambda s: s.set_defect_class("crack", user="a"), r"exactly one of region_id= or inspection_id="),
        (lambda s: s.set_defect_class("crack", user="a", region_id=1, inspection_id=1), r"exactly one of"),
        (lambda s: s.set_defect_class("crack", user="a", region_id=999), r"no region 999 .*class not set"),
        (lambda s: s.get_inspection(999), r"no inspection with id 999 in .*stats\.db"),
    ],
)
def test_reviewer_errors(store: Store, call: object, pattern: str) -> None:
    store.record(result(0))
    store.flush()
    with pytest.raises(StoreError, match=pattern):
        call(store)  # type: ignore[operator]


def test_scores_series_and_histogram(store: Store) -> None:
    assert store.score_histogram() == ([], [])
    scores = [0.0, 0.1, 0.2, 0.25, 0.5, 0.9, 1.0]
    for i, s in enumerate(scores):
        store.record(result(i, score=s, verdict=Verdict.FAIL if s >= 0.5 else Verdict.PASS))
    store.record(result(len(scores), score=None, verdict=Verdict.ERROR, error="decode failed"))
    store.record(result(len(scores) + 1, score=float("nan")))      # stored as unknown, not NaN
    store.flush()
    series = store.score_series(limit=3)
    assert series == [ScorePoint(T0 + 4, 0.5, Verdict.FAIL), ScorePoint(T0 + 5, 0.9, Verdict.FAIL),
                      ScorePoint(T0 + 6, 1.0, Verdict.FAIL)]
    assert len(store.score_series()) == len(scores)
    edges, counts = store.score_histogram(bins=4)
    assert edges == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert counts == [3, 1, 1, 2], "the top score falls in the last bin"
    edges, counts = store.score_histogram(bins=2, verdict="PASS")
    assert sum(counts) == 4 and edges[0] == 0.0 and edges[-1] == pytest.approx(0.25)
    edges, counts = store.score_histogram(bins=3, since=T0 + 6)       # a single score
    assert counts == [1, 0, 0] and edges[0] == 1.0
    with pytest.raises(ValueError, match="bins must be >= 1"):
        store.score_histogram(bins=0)


def test_sql_injection_in_names_is_stored_verbatim(store: Store, tmp_path: Path) -> None:
    evil = "x'); DROP TABLE inspections; --"
    store.record(result(0, recipe=evil, lot="1 OR 1=1", line='"; DELETE FROM regions; --', regions=1))
    store.record(result(1))
    store.flush()
    [row] = store.inspections(recipe=evil)
    assert (row.recipe, row.lot, row.line) == (evil, "1 OR 1=1", '"; DELETE FROM regions; --')
    assert {r.key for r in store.yield_summary()} == {evil, "bracket_a"}
    assert store.inspections(lot="1 OR 1=1")[0].id == row.id
    assert store.inspections(lot="' OR '1'='1") == []
    store.add_feedback(row.id, "'; DROP TABLE feedback; --", user="Robert'); --")
    assert store.get_inspection(row.id).feedback[0].user == "Robert'); --"
    assert len(store.inspections()) == 2 and store.defects_by_class() == [("unclassified", 1)]


def test_export_csv(store: Store, tmp_path: Path) -> None:
    for i in range(5):
        store.record(result(i, verdict=Verdict.FAIL if i == 2 else Verdict.PASS, regions=1 if i == 2 else 0))
    store.record(result(5, recipe="=HYPERLINK(\"http://x\")"))
    store.flush()
    failed = store.inspections(verdict="FAIL")[0]
    store.set_defect_class("dent", user="anna", inspection_id=failed.id)
    store.add_feedback(failed.id, "dent", user="anna")
    out = tmp_path / "export.csv"
    assert store.export_csv(out, recipe="bracket_a") == 5
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame_id"]) for r in rows] == [0, 1, 2, 3, 4], "oldest first"
    assert rows[2]["verdict"] == "FAIL" and rows[2]["regions"] == "1"
    assert rows[2]["defect_classes"] == "dent" and rows[2]["label"] == "dent"
    assert rows[0]["local_time"] == "2026-11-23T00:00:00.000+00:00" and rows[0]["error"] == ""
    assert float(rows[0]["score"]) == 0.1
    assert store.export_csv(out, verdict="FAIL") == 1
    assert store.export_csv(out) == 6
    with out.open(encoding="utf-8", newline="") as f:
        assert list(csv.DictReader(f))[-1]["recipe"].startswith("'="), "formulas are defused"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []
    with pytest.raises(StoreError, match=r"cannot write the CSV export .*missing.*folder exists"):
        store.export_csv(tmp_path / "missing" / "x.csv")


def test_opening_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"folder .*nope does not exist"):
        Store(tmp_path / "nope" / "x.db")
    with pytest.raises(StoreError, match="in-memory database cannot be shared"):
        Store(":memory:")
    with pytest.raises(StoreError, match="install its database driver or check the URL"):
        Store("nosuchdb://user:secret@host/db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"cannot open the statistics store .*garbage\.db: file is not a"):
        Store(garbage)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    con = sqlite3.connect(tmp_path / "s.db")
    con.execute("UPDATE store_meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this inspector reads"):
        Store(tmp_path / "s.db")


def test_record_after_close(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db")
    s.close()
    s.close()                                              # twice is fine
    with pytest.raises(StoreError, match="is closed; cannot record frame 3"):
        s.record(result(3))


def _wait_for(condition: Callable[[], bool], guard_s: float = 60.0) -> None:
    """Poll until ``condition()`` holds; the guard only stops a hung test, it asserts no speed."""
    end = time.monotonic() + guard_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail("condition not reached")
        time.sleep(0.01)


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    return con


def test_locked_database_full_queue_drops_are_counted(tmp_path: Path) -> None:
    errors: list[StoreError] = []
    s = Store(tmp_path / "s.db", batch_size=1, max_pending=1, flush_interval=0.0, busy_timeout_s=0.05,
              on_error=errors.append)
    try:
        lock = _hold_write_lock(tmp_path / "s.db")
        for i in range(20):
            s.record(result(i))                            # returns at once although nothing can be written
        accepted = 20 - s.dropped_count
        assert 1 <= accepted <= 2, "one result in the writer's hands, one in the queue"
        with pytest.raises(StoreError, match=r"result\(s\) not yet written after 0\.2 s"):
            s.flush(timeout=0.2)
        _wait_for(lambda: s.last_error is not None and "database is locked" in str(s.last_error))
        assert s.recorded_count == 0
        lock.rollback()
        lock.close()
        s.flush(timeout=30)
        assert s.recorded_count == accepted and s.failed_count == 0
        messages = [str(e) for e in errors]
        assert any("dropped bracket_a frame" in m and "results are waiting for the database" in m
                   for m in messages)
        assert any("database is locked" in m and "retrying" in m for m in messages)
    finally:
        s.close()


def test_close_on_an_unwritable_database_reports_the_loss(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", busy_timeout_s=0.05)
    lock = _hold_write_lock(tmp_path / "s.db")
    try:
        s.record(result(0))
        s.record(result(1))
        with pytest.raises(StoreError, match=r"2 result\(s\) could not be written before closing"):
            s.close(timeout=0.3)
        assert s.lost_count == 2 and s.recorded_count == 0
        assert not s._thread.is_alive()
    finally:
        lock.close()


def test_a_refused_row_costs_only_itself(tmp_path: Path) -> None:
    errors: list[StoreError] = []
    with Store(tmp_path / "s.db", batch_size=10, flush_interval=0.5, on_error=errors.append) as s:
        con = sqlite3.connect(tmp_path / "s.db")
        con.execute("CREATE TRIGGER poison BEFORE INSERT ON inspections WHEN NEW.recipe = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'poison row'); END")
        con.commit()
        con.close()
        for i in range(6):
            s.record(result(i, recipe="poison" if i == 2 else "bracket_a", regions=1))
        s.flush()
        assert (s.recorded_count, s.failed_count) == (5, 1)
        assert [r.frame_id for r in s.inspections()] == [5, 4, 3, 1, 0]
        assert s.defects_by_class() == [("unclassified", 5)]
    assert any("refused the result of 'poison' frame 2: poison row" in str(e) for e in errors)


# ---- other processes -------------------------------------------------------------------------------

CHILD_WRITER = r"""
import sys
from inspector.results import InspectionResult, Verdict
from inspector.store import Store

path, n = sys.argv[1], int(sys.argv[2])
errors = []
store = Store(path, batch_size=5, flush_interval=0.001, on_error=errors.append)
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    store.record(InspectionResult(frame_id=i, timestamp=1.8e9 + i, source="child", recipe="child",
                                  model_version="v1", verdict=Verdict.PASS, score=0.1))
    if i % 25 == 0:
        store.yield_summary()
store.close(timeout=60)
print("done", store.recorded_count, len(errors), flush=True)
"""

CHILD_KILLED = r"""
import sys, time
from inspector.results import InspectionResult, Verdict
from inspector.store import Store

store = Store(sys.argv[1], batch_size=4, flush_interval=0.002, on_recorded=lambda n: print(n, flush=True))
i = 0
while True:
    store.record(InspectionResult(frame_id=i, timestamp=1.8e9 + i, source="child", recipe="killed",
                                  model_version="v1", verdict=Verdict.FAIL, score=0.9))
    i += 1
    time.sleep(0.0005)
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> None:
    """Kill the child if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _read_line(proc: subprocess.Popen[str], guard_s: float = 120.0) -> str:
    """One line of the child's stdout; a guard against a hung child, not a timing assertion."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(guard_s):
            proc.kill()
            pytest.fail(f"child printed nothing for {guard_s} s")
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate()
        pytest.fail(f"child ended early: {err[-2000:]}")
    return line.strip()


@pytest.mark.skipif(sys.platform == "win32", reason="selectors on pipes are POSIX-only")
def test_two_processes_write_one_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    n = 150
    errors: list[StoreError] = []
    parent = Store(db, batch_size=5, flush_interval=0.001, on_error=errors.append)
    child = _spawn(CHILD_WRITER, str(db), str(n))
    try:
        assert _read_line(child) == "ready"
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        for i in range(n):
            parent.record(result(i, recipe="parent"))
            if i % 25 == 0:
                parent.yield_summary()
        parent.flush(timeout=60)
        assert _read_line(child) == f"done {n} 0", "the child wrote everything without an error"
        child.communicate(timeout=60)
        assert child.returncode == 0
    finally:
        _finish(child)
        parent.close()
    assert errors == []
    with Store(db) as again:
        assert {r.key: r.inspected for r in again.yield_summary()} == {"child": n, "parent": n}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_loses_nothing_reported_as_recorded(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    child = _spawn(CHILD_KILLED, str(db))
    reported = 0
    try:
        while reported < 200:                    # ~50 commits in, kill it mid-run
            reported = max(reported, int(_read_line(child)))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        reported = max([reported, *(int(line) for line in out.split())])   # printed just before the kill
    finally:
        _finish(child)
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = con.execute("SELECT COUNT(*) FROM inspections WHERE recipe = 'killed'").fetchone()[0]
        frames = [row[0] for row in con.execute("SELECT frame_id FROM inspections ORDER BY id")]
    finally:
        con.close()
    assert stored >= reported, f"{reported} reported as recorded, only {stored} in the database"
    assert frames == list(range(len(frames))), "committed in order, no gaps"
    with Store(db) as again:                     # and the file still works
        again.record(result(0, recipe="after"))
        again.flush()
        assert again.recorded_count == 1
