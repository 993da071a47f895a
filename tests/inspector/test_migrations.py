"""Versioned schema migrations of the statistics store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from inspector import migrations
from inspector.errors import StoreError
from inspector.results import InspectionResult, Verdict
from inspector.store import SCHEMA_VERSION, STORE_URL_ENV, Store, metadata

REPO = Path(__file__).resolve().parents[2]


def _result(i: int, recipe: str = "part") -> InspectionResult:
    return InspectionResult(frame_id=i, timestamp=1.8e9 + i, source="test", recipe=recipe, model_version="v1",
                            verdict=Verdict.PASS, score=0.1, line="L1", station="S1")


def _schema_diff(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def test_head_is_the_newest_revision() -> None:
    assert ScriptDirectory(str(migrations.HERE)).get_current_head() == migrations.HEAD


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_new_store_gets_the_schema_in_code(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'stats.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    with Store(url) as store:
        store.record(_result(1))
        store.flush()
    assert _schema_diff(url) == []                     # the migrations build exactly the tables in code
    engine = sa.create_engine(url)
    assert migrations.current_revision(engine) == migrations.HEAD
    engine.dispose()


def test_a_store_made_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)                         # how inspector made stores before migrations
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO store_meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(sa.text("INSERT INTO inspections (time, recipe, model_version, line, station, lot, source, "
                             "frame_id, verdict, score) VALUES (1.8e9, 'old', 'v1', '', '', '', 'x', 7, 'FAIL', 0.9)"))
    engine.dispose()
    with Store(path) as store:
        rows = store.inspections()
        assert [(r.recipe, r.frame_id) for r in rows] == [("old", 7)]
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrations.HEAD,)]
    con.close()


def test_a_store_of_a_newer_program_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"revision 9999, made by a newer inspector.*upgrade inspector"):
        Store(path)
    assert path.read_bytes() == before


# The store exactly as inspector wrote it before migrations existed (schema version 1, SQLite): the
# statements read back from sqlite_master of a store made by that program.
_SCHEMA_1_SQLITE = """
CREATE TABLE inspections (
    id INTEGER NOT NULL, time FLOAT NOT NULL, recipe TEXT NOT NULL, model_version TEXT NOT NULL,
    line TEXT NOT NULL, station TEXT NOT NULL, lot TEXT NOT NULL, source TEXT NOT NULL, frame_id BIGINT NOT NULL,
    path TEXT, verdict VARCHAR(8) NOT NULL, score FLOAT, latency_ms FLOAT, image_path TEXT, overlay_path TEXT,
    error TEXT, PRIMARY KEY (id));
CREATE INDEX ix_inspections_time ON inspections (time);
CREATE INDEX ix_inspections_recipe_time ON inspections (recipe, time);
CREATE INDEX ix_inspections_verdict ON inspections (verdict);
CREATE TABLE store_meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE regions (
    id INTEGER NOT NULL, inspection_id INTEGER NOT NULL, x INTEGER NOT NULL, y INTEGER NOT NULL,
    w INTEGER NOT NULL, h INTEGER NOT NULL, area_px INTEGER NOT NULL, area_mm2 FLOAT, max_score FLOAT,
    mean_score FLOAT, defect_class TEXT, classified_by TEXT, classified_at FLOAT, PRIMARY KEY (id),
    FOREIGN KEY(inspection_id) REFERENCES inspections (id) ON DELETE CASCADE);
CREATE INDEX ix_regions_inspection ON regions (inspection_id);
CREATE TABLE feedback (
    id INTEGER NOT NULL, inspection_id INTEGER NOT NULL, label TEXT NOT NULL, user TEXT NOT NULL,
    time FLOAT NOT NULL, note TEXT NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(inspection_id) REFERENCES inspections (id) ON DELETE CASCADE);
CREATE INDEX ix_feedback_inspection ON feedback (inspection_id);
INSERT INTO store_meta (key, value) VALUES ('schema_version', '1');
INSERT INTO inspections (id, time, recipe, model_version, line, station, lot, source, frame_id, path, verdict,
                         score) VALUES (1, 1.8e9, 'bracket', 'v1', 'L1', 'S1', 'A', 'cam', 7, 'p7.png', 'FAIL', 0.9);
INSERT INTO regions (inspection_id, x, y, w, h, area_px, max_score, mean_score, defect_class, classified_by,
                     classified_at) VALUES (1, 3, 4, 5, 6, 20, 0.9, 0.5, 'scratch', 'qe', 1.8e9);
INSERT INTO feedback (inspection_id, label, user, time, note) VALUES (1, 'scratch', 'qe', 1.8e9, 'seen');
"""


def _first_rows(url: str) -> tuple[object, ...]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return (
                conn.execute(sa.text("SELECT recipe, station, frame_id, verdict FROM inspections WHERE id = 1")).one(),
                conn.execute(sa.text("SELECT x, y, w, h, defect_class FROM regions WHERE inspection_id = 1")).one(),
                conn.execute(sa.text("SELECT label, note FROM feedback WHERE inspection_id = 1")).one(),
                conn.execute(sa.text("SELECT value FROM store_meta WHERE key = 'schema_version'")).scalar(),
            )
    finally:
        engine.dispose()


def test_a_schema_1_sqlite_store_is_upgraded_in_place_with_its_rows(tmp_path: Path) -> None:
    """The SQLite store stations wrote before this version: every later column and table added, rows kept."""
    path = tmp_path / "station.db"
    con = sqlite3.connect(path)
    con.executescript(_SCHEMA_1_SQLITE)
    con.close()
    url = f"sqlite:///{path}"
    assert _schema_diff(url) != []                      # the old schema really lacks what came later
    with Store(path) as store:
        store.record(_result(2))
        store.flush()
        assert [(r.recipe, r.frame_id) for r in store.inspections()] == [("part", 2), ("bracket", 7)]
    assert _schema_diff(url) == []
    assert _first_rows(url) == (("bracket", "S1", 7, "FAIL"), (3, 4, 5, 6, "scratch"), ("scratch", "seen"),
                                str(SCHEMA_VERSION))
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrations.HEAD,)]
    con.close()


def _stamp_at(url: str, revision: str) -> None:
    """Build a store at an older revision with Alembic itself, as an older inspector left it."""
    from alembic import command

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations._config(conn), revision)  # type: ignore[arg-type]
            conn.execute(sa.text(
                "INSERT INTO inspections (id, time, recipe, model_version, line, station, lot, source, frame_id, "
                "path, verdict, score) VALUES (1, 1.8e9, 'bracket', 'v1', 'L1', 'S1', 'A', 'cam', 7, 'p7.png', "
                "'FAIL', 0.9)"))
            conn.execute(sa.text(
                "INSERT INTO regions (inspection_id, x, y, w, h, area_px, max_score, mean_score, defect_class) "
                "VALUES (1, 3, 4, 5, 6, 20, 0.9, 0.5, 'scratch')"))
            conn.execute(sa.text("INSERT INTO feedback (inspection_id, label, \"user\", time, note) "
                                 "VALUES (1, 'scratch', 'qe', 1.8e9, 'seen')"))
            if conn.dialect.name == "postgresql":        # explicit ids: move the sequences past them
                for table in ("inspections", "regions", "feedback"):
                    conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", ["0001", "0002", "0003"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_store_at_an_older_revision_is_upgraded_in_place(backend: str, revision: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    _stamp_at(url, revision)
    engine = sa.create_engine(url)
    assert migrations.current_revision(engine) == revision
    engine.dispose()
    with Store(url) as store:
        store.record(_result(2))
        store.flush()
        assert sorted((r.recipe, r.frame_id) for r in store.inspections()) == [("bracket", 7), ("part", 2)]
    assert _schema_diff(url) == []
    assert _first_rows(url) == (("bracket", "S1", 7, "FAIL"), (3, 4, 5, 6, "scratch"), ("scratch", "seen"),
                                str(SCHEMA_VERSION))
    engine = sa.create_engine(url)
    assert migrations.current_revision(engine) == migrations.HEAD
    engine.dispose()


def test_a_postgresql_store_of_a_newer_program_is_refused_untouched(postgres_url: str) -> None:
    with Store(postgres_url) as store:
        store.record(_result(1))
        store.flush()
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        conn.execute(sa.text("UPDATE store_meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(StoreError, match=r"revision 9999, made by a newer inspector.*upgrade inspector") as info:
        Store(postgres_url)
    assert "/" in str(info.value) and "postgresql" in str(info.value)        # the store is named
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM inspections")).scalar() == 1
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "9999"
    engine.dispose()


def test_schema_version_is_written_for_older_programs(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    con.close()


_OPEN_AND_WRITE = textwrap.dedent("""
    import sys, time
    from inspector.results import InspectionResult, Verdict
    from inspector.store import Store
    url, station, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    while time.time() < start:      # all writers open the new store at the same moment
        time.sleep(0.005)
    with Store(url, batch_size=256) as store:
        for i in range(n):
            store.record(InspectionResult(frame_id=i, timestamp=1.8e9 + i, source="cam", recipe="part",
                                          model_version="v1", verdict=Verdict.PASS if i % 10 else Verdict.FAIL,
                                          score=i / n, line="L1", station=station))
        store.flush(120)
    print("done", station, flush=True)
""")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_stations_create_and_fill_one_store_at_once(backend: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    """4 station processes open a brand-new store at the same instant and write 5,000 results each."""
    import time

    url = f"sqlite:///{tmp_path / 'plant.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    n = 5000
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_WRITE, url, f"S{k}", str(n), str(start)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(4)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM inspections")).scalar()
        distinct = conn.execute(sa.text(
            "SELECT count(*) FROM (SELECT DISTINCT station, frame_id FROM inspections) AS d")).scalar()
        per_station = dict(conn.execute(sa.text(
            "SELECT station, count(*) FROM inspections GROUP BY station")).all())
        revisions = conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar()
    engine.dispose()
    assert total == distinct == 4 * n
    assert per_station == {f"S{k}": n for k in range(4)}
    assert revisions == 1
    # the quality engineer's view across the four stations, the store URL configured as a plant does
    stats = subprocess.run([sys.executable, "-m", "inspector", "stats", "--by", "line,station,recipe"], cwd=REPO,
                           env={**os.environ, STORE_URL_ENV: url}, capture_output=True, text=True, timeout=240)
    assert stats.returncode == 0, stats.stderr[-2000:]
    rows = [line.split() for line in stats.stdout.splitlines() if line.startswith("L1 / S")]
    assert rows == [["L1", "/", f"S{k}", "/", "part", "5000", "4500", "0", "500", "0", "90.0"] for k in range(4)]


def test_a_store_opens_while_another_station_holds_its_write_lock(tmp_path: Path) -> None:
    """SQLite refuses the switch to WAL at once, without its busy handler, while another connection holds the
    write lock of a store still in rollback-journal mode (a station creating it at the same instant)."""
    import threading
    import time

    path = tmp_path / "plant.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other_station (x INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO other_station VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):     # the race, as SQLite answers it
        sqlite3.connect(path, timeout=5.0).execute("PRAGMA journal_mode = WAL")
    released = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    released.start()
    t0 = time.monotonic()
    with Store(path, busy_timeout_s=10.0) as store:
        store.record(InspectionResult(frame_id=1, timestamp=1.8e9, source="cam", recipe="part", model_version="v1",
                                      verdict=Verdict.PASS, score=0.1))
        store.flush()
    released.join()
    other.close()
    assert time.monotonic() - t0 >= 0.4                                # it waited for the lock, then opened
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert con.execute("SELECT count(*) FROM inspections").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM other_station").fetchone() == (1,)
    con.close()
