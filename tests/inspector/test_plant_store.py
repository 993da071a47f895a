"""A plant's stations on one store: grouping across stations, the configured URL, TLS to PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from inspector.errors import StoreError
from inspector.results import InspectionResult, Verdict
from inspector.store import STORE_URL_ENV, STORE_URL_FILE_ENV, Store, configured_url, result_rows
from tests.helpers.images import textured_part, write_images
from tests.helpers.postgres import PostgresCluster, postgres_bin_dir

REPO = Path(__file__).resolve().parents[2]


def _result(i: int, *, line: str, station: str, recipe: str, verdict: Verdict) -> InspectionResult:
    return InspectionResult(frame_id=i, timestamp=1.8e9 + 60 * i, source="cam", recipe=recipe, model_version="v1",
                            verdict=verdict, score=0.9 if verdict is Verdict.FAIL else 0.1, line=line,
                            station=station)


def _fill(store: Store) -> None:
    plan = [("L1", "S1", "bracket", Verdict.PASS), ("L1", "S1", "bracket", Verdict.FAIL),
            ("L1", "S2", "bracket", Verdict.PASS), ("L2", "S3", "cap", Verdict.REVIEW),
            ("L2", "S3", "cap", Verdict.PASS), ("L2", "S3", "bracket", Verdict.PASS)]
    for i, (line, station, recipe, verdict) in enumerate(plan):
        store.record(_result(i, line=line, station=station, recipe=recipe, verdict=verdict))
    store.flush()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_yield_by_line_station_recipe(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    with Store(url) as store:
        _fill(store)
        rows = store.yield_summary(group_by=("line", "station", "recipe"))
        assert [(r.keys, r.inspected, r.passed, r.review, r.failed) for r in rows] == [
            (("L1", "S1", "bracket"), 2, 1, 0, 1),
            (("L1", "S2", "bracket"), 1, 1, 0, 0),
            (("L2", "S3", "bracket"), 1, 1, 0, 0),
            (("L2", "S3", "cap"), 2, 1, 1, 0),
        ]
        assert rows[0].key == "L1 / S1 / bracket"
        by_station_day = store.yield_summary(group_by=("station", "day"), line="L2")
        assert [(r.keys[0], r.inspected) for r in by_station_day] == [("S3", 3)]
        assert [r.key for r in store.yield_summary(group_by="station")] == ["S1", "S2", "S3"]
        with pytest.raises(ValueError, match="at most one of hour, shift, day"):
            store.yield_summary(group_by=("hour", "day"))


def test_cli_stats_by_several_keys(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store(db) as store:
        _fill(store)
    out = subprocess.run([sys.executable, "-m", "inspector", "stats", "--by", "line,station,recipe", "--store",
                          str(db)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "line / station / recipe" in out.stdout
    assert "L2 / S3 / cap" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "inspector", "stats", "--by", "line,colour", "--store", str(db)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid --by 'line,colour'" in bad.stderr


def test_store_url_from_the_environment_and_a_private_file(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "plant.db"
    monkeypatch.setenv(STORE_URL_ENV, f"sqlite:///{db}")
    with Store() as store:
        assert store.display_name == str(db)
    monkeypatch.delenv(STORE_URL_ENV)
    secret = tmp_path / "store-url"
    secret.write_text("postgresql+psycopg://station:s3cret@127.0.0.1:1/plant\n", encoding="utf-8")
    secret.chmod(0o644)
    monkeypatch.setenv(STORE_URL_FILE_ENV, str(secret))
    with pytest.raises(StoreError, match=r"readable by other users \(mode 0644\).*chmod 600") as info:
        configured_url()
    assert "s3cret" not in str(info.value)
    secret.chmod(0o600)
    assert configured_url() == "postgresql+psycopg://station:s3cret@127.0.0.1:1/plant"
    with pytest.raises(StoreError) as unreachable:      # nothing listens on port 1
        Store()
    assert "s3cret" not in str(unreachable.value) and "***" in str(unreachable.value)
    secret.unlink()
    with pytest.raises(StoreError, match="cannot read the store URL file"):
        configured_url()


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[PostgresCluster, Path]]:
    """A PostgreSQL server that offers TLS with a self-signed certificate (openssl, made here)."""
    if postgres_bin_dir() is None or shutil.which("openssl") is None:
        pytest.skip("PostgreSQL or openssl is not installed here")
    certs = Path(tempfile.mkdtemp(prefix="inspector-pg-certs-"))     # readable by the server's user
    subprocess.run(["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(certs / "server.key"),
                    "-out", str(certs / "server.crt")], check=True, capture_output=True)
    if os.geteuid() == 0:
        for name in ("server.key", "server.crt"):
            shutil.chown(certs / name, "postgres", "postgres")
        os.chmod(certs, 0o755)
    os.chmod(certs / "server.key", 0o600)
    cluster = PostgresCluster.start(extra=("-c", "ssl=on", "-c", f"ssl_cert_file={certs / 'server.crt'}",
                                                 "-c", f"ssl_key_file={certs / 'server.key'}"))
    yield cluster, certs / "server.crt"
    cluster.stop()
    shutil.rmtree(certs, ignore_errors=True)


def test_tls_to_postgresql_when_the_url_asks_for_it(tls_cluster: tuple[PostgresCluster, Path]) -> None:
    cluster, ca = tls_cluster
    url = cluster.create_database("tls")
    with Store(f"{url}?sslmode=verify-full&sslrootcert={ca}") as store:
        store.record(_result(1, line="L1", station="S1", recipe="r", verdict=Verdict.PASS))
        store.flush()
        with store._engine.connect() as conn:    # what the server says of this very connection
            ssl = conn.execute(sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
        assert ssl is True
    with pytest.raises(StoreError, match="cannot open the statistics store"):
        Store(f"{url}?sslmode=verify-full&sslrootcert={ca.parent / 'missing.crt'}")


def test_a_result_forwarded_twice_is_stored_once_on_postgresql(postgres_url: str) -> None:
    """A lost acknowledgement: the journal sends a batch the server had committed; each result id lands once."""
    batch = [(f"S1-{i}", result_rows(_result(i, line="L1", station="S1", recipe="r", verdict=Verdict.PASS)))
             for i in range(3)]
    with Store(postgres_url) as store:
        assert store.insert_results(batch[:2]) == 2
        assert store.insert_results(batch) == 1              # the replay: only the new one is inserted
        assert store.insert_results(batch) == 0
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT result_id, frame_id FROM inspections ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("S1-0", 0), ("S1-1", 1), ("S1-2", 2)]


# ---- a station's PostgreSQL goes away: nothing printed is lost, nothing is stored twice, order kept ----


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A server of this test's own, so that stopping it harms no other test."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    with PostgresCluster.start() as cluster:
        yield cluster


@pytest.fixture
def forty_frames(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    return write_images(tmp_path / "frames", [textured_part(rng) for _ in range(40)])[0].parent


def _run(recipe: Path, frames: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", STORE_URL_ENV: url}       # the URL as a plant configures it
    return subprocess.Popen([sys.executable, "-m", "inspector", "run", str(recipe), "--source", str(frames),
                             "--no-archive"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _frame_name(line: str) -> str:
    return next(word for word in line.split() if word.endswith(".png"))


def _stored_paths(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [Path(p).name for (p,) in conn.execute(sa.text("SELECT path FROM inspections ORDER BY id"))]
    finally:
        engine.dispose()


def test_postgres_stopped_for_20_s_mid_run_loses_nothing(
    taught_recipe: Path, forty_frames: Path, own_cluster: PostgresCluster
) -> None:
    url = own_cluster.create_database("plant")
    proc = _run(taught_recipe, forty_frames, url)
    assert proc.stdout is not None
    printed: list[str] = []
    for line in proc.stdout:
        if ".png" in line:
            printed.append(_frame_name(line))
        if len(printed) == 3:
            own_cluster.pause()                   # the server goes away mid-run ...
            break
    time.sleep(20.0)
    own_cluster.resume()                          # ... and comes back 20 s later
    out, err = proc.communicate(timeout=300)
    printed += [_frame_name(line) for line in out.splitlines() if ".png" in line]
    assert proc.returncode == 0, err[-3000:]
    assert len(printed) == 40
    assert _stored_paths(url) == printed          # every printed result, once, in the order inspected


def test_a_station_started_while_postgres_is_away_keeps_inspecting(
    taught_recipe: Path, forty_frames: Path, own_cluster: PostgresCluster
) -> None:
    url = own_cluster.create_database("plant")
    own_cluster.pause()
    proc = _run(taught_recipe, forty_frames, url)
    assert proc.stdout is not None
    printed = []
    for line in proc.stdout:                      # results are printed (durable in the journal) meanwhile
        if ".png" in line:
            printed.append(_frame_name(line))
        if len(printed) == 5:
            break
    own_cluster.resume()
    out, err = proc.communicate(timeout=300)
    printed += [_frame_name(line) for line in out.splitlines() if ".png" in line]
    assert proc.returncode == 0, err[-3000:]
    assert "offline" in err or "wait in" in err, err[-3000:]
    assert _stored_paths(url) == printed and len(printed) == 40


def test_sigkill_of_a_station_writing_to_postgres_loses_nothing_printed(
    taught_recipe: Path, forty_frames: Path, postgres_url: str
) -> None:
    from inspector.recording import ResultRecorder

    proc = _run(taught_recipe, forty_frames, postgres_url)
    assert proc.stdout is not None
    printed = []
    for line in proc.stdout:
        if ".png" in line:
            printed.append(_frame_name(line))
        if len(printed) == 6:
            proc.send_signal(signal.SIGKILL)
            break
    rest, _ = proc.communicate(timeout=30)
    printed += [_frame_name(line) for line in rest.splitlines() if ".png" in line]     # already in the pipe
    assert proc.returncode == -signal.SIGKILL and len(printed) < 40
    store = Store(postgres_url)                   # the next start forwards what the killed run left
    recorder = ResultRecorder(store)
    assert recorder.wait_stored(60)
    recorder.close()
    store.close()
    stored = _stored_paths(postgres_url)
    assert stored[:len(printed)] == printed and len(stored) == len(set(stored))


def test_a_station_started_offline_keeps_its_results_when_the_server_has_a_newer_store(
    own_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """The server comes back holding a store of a newer inspector: refused with the reason, nothing set aside."""
    from inspector.recording import ResultRecorder

    url = own_cluster.create_database("plant")
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    own_cluster.pause()
    store = Store(url, allow_offline=True)
    recorder = ResultRecorder(store, journal_path=tmp_path / "station.pending.db")
    try:
        for i in range(3):
            recorder.record(_result(i, line="L1", station="S1", recipe="r", verdict=Verdict.PASS))
        own_cluster.resume()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:     # until the forwarder has met the newer store (no timing assert)
            error = recorder.last_error
            if error is not None and "newer inspector" in str(error):
                break
            time.sleep(0.1)
        assert error is not None and "made by a newer inspector" in str(error) and "upgrade inspector" in str(error)
        assert recorder.pending == 3                          # still waiting, in order, for an upgraded station
    finally:
        recorder.close(timeout=1.0)
        store.close()
    with sqlite3.connect(tmp_path / "station.pending.db") as conn:
        assert conn.execute("SELECT count(*) FROM set_aside").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pending").fetchone() == (3,)
