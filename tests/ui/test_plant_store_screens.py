"""The app on a plant's PostgreSQL store (a real throwaway server on loopback, tests/helpers/postgres.py).

- The Statistics screen groups by line / station / recipe across the stations writing to one store.
- The station's screen while its store is away: the server is stopped before the window opens; the
  station inspects a folder, its results wait in the local journal and the status bar says
  "Store offline: N waiting"; once the server is back they are forwarded, in order, once each, and the
  label goes away.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from inspector.results import InspectionResult, Verdict
from inspector.store import Store
from tests.helpers.postgres import PostgresCluster, postgres_bin_dir
from tests.ui.conftest import DarkSpotInspector, open_window, stub_recipes
from ui.main_window import RunState
from ui.stats_view import StatisticsView

WAIT_MS = 60_000       # upper bound on a loaded 2-core machine (the forwarder backs off up to a few seconds)
PASSWORD = "s3cret-pw"  # the test server trusts loopback, so any password connects; it must never be shown


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    with PostgresCluster.start() as pg:
        yield pg


def _stored_paths(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [Path(p).name for (p,) in conn.execute(sa.text("SELECT path FROM inspections ORDER BY id"))]
    finally:
        engine.dispose()


def test_statistics_screen_groups_by_line_station_recipe_across_stations(
    qtbot, tmp_path: Path, cluster: PostgresCluster
) -> None:
    url = cluster.create_database("plant")
    plan = {("L1", "S1"): [("bracket", Verdict.PASS), ("bracket", Verdict.FAIL)],
            ("L1", "S2"): [("bracket", Verdict.PASS), ("cap", Verdict.PASS)],
            ("L2", "S3"): [("cap", Verdict.REVIEW), ("cap", Verdict.PASS), ("cap", Verdict.PASS)]}
    now = 1.8e9
    for (line, station), results in plan.items():               # each station writes with its own ids
        with Store(url) as station_store:
            for i, (recipe, verdict) in enumerate(results):
                station_store.record(InspectionResult(
                    frame_id=i, timestamp=now + i, source="cam", recipe=recipe, model_version="v1", verdict=verdict,
                    score=0.9 if verdict is Verdict.FAIL else 0.1, line=line, station=station))
    with Store(url) as store:                                   # the quality engineer's app
        view = StatisticsView(store)
        qtbot.addWidget(view)
        view.set_range(now - 3600, now + 3600)
        index = view.group_box.findText("Line / Station / Recipe")
        assert index >= 0
        with qtbot.waitSignal(view.refreshed, timeout=20_000):
            view.group_box.setCurrentIndex(index)
        table = view.yield_table
        rows = {table.item(r, 0).text(): [table.item(r, c).text() for c in range(1, 7)]
                for r in range(table.rowCount())}
        assert rows == {"L1 / S1 / bracket": ["2", "1", "0", "1", "0", "50.0"],
                        "L1 / S2 / bracket": ["1", "1", "0", "0", "0", "100.0"],
                        "L1 / S2 / cap": ["1", "1", "0", "0", "0", "100.0"],
                        "L2 / S3 / cap": ["3", "2", "1", "0", "0", "66.7"]}
        with qtbot.waitSignal(view.refreshed, timeout=20_000):
            view.group_box.setCurrentIndex(view.group_box.findData("station"))
        assert [table.item(r, 0).text() for r in range(table.rowCount())] == ["S1", "S2", "S3"]
        view.shutdown()


def test_store_offline_shows_the_waiting_count_and_forwards_all_when_back(
    qtbot, tmp_path: Path, settings, part_folder: Path, cluster: PostgresCluster
) -> None:
    url = cluster.create_database("plant").replace("postgres@", f"postgres:{PASSWORD}@")
    cluster.pause()                                             # the plant's server is away from the start
    store = Store(url, allow_offline=True)                      # what the app opens (ui.app.open_store)
    assert not store.online
    window = open_window(qtbot, settings, stub_recipes(tmp_path, "demo"), {"demo": DarkSpotInspector("demo")},
                         source=str(part_folder), store=store)
    label = window.store_status
    assert not label.isVisible()                                # nothing waits yet: no label
    try:
        window.start()
        qtbot.waitUntil(lambda: window.counts.inspected == 6 and window.state == RunState.SOURCE_ENDED,
                        timeout=WAIT_MS)                        # the station kept inspecting
        qtbot.waitUntil(lambda: label.isVisible() and label.text() == "Store offline: 6 waiting", timeout=WAIT_MS)
        assert window.recorder.pending == 6
        shown = f"{label.text()} {label.toolTip()}"
        assert str(window.recorder.journal_path) in shown        # where the results wait
        assert PASSWORD not in shown

        cluster.resume()                                        # the server is back
        qtbot.waitUntil(lambda: not label.isVisible(), timeout=WAIT_MS)
        assert window.recorder.pending == 0
        assert store.online
        assert _stored_paths(url) == sorted(p.name for p in part_folder.iterdir())   # once each, in order
    finally:
        window.close()
        store.close()
