"""Versioned schema migrations of the statistics store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

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
from inspector.store import SCHEMA_VERSION, Store, metadata

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
