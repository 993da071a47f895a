"""The store's roll-ups never disagree with its detail rows (issue 16), on SQLite and on a real PostgreSQL.

Random results go in by both write paths (the writer thread and the journal's `insert_results`), reviewers
relabel regions (confirmed types change), and every statistic is asked twice: from the roll-ups and from the
detail rows (``Store(rollups=False)``), for many filters, windows on and off the 15-minute buckets included.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from inspector import statistics as st
from inspector.results import DefectRegion, InspectionResult, Verdict
from inspector.store import Store, inspections, result_rows
from inspector.store.rollup import build
from inspector.store.schema import (
    BUCKET_S,
    LOCATION_CELL_PX,
    inspection_counts,
    location_counts,
    part_counts,
    region_counts,
)

T0 = 1_790_000_000.0 - 1_790_000_000.0 % BUCKET_S       # on a bucket boundary
TYPES = ("scratch", "dent", "unknown", None)
VERDICTS = (Verdict.PASS, Verdict.REVIEW, Verdict.FAIL, Verdict.ERROR)


def _results(rng: np.random.Generator, n: int, start: int) -> list[InspectionResult]:
    out = []
    for i in range(start, start + n):
        verdict = VERDICTS[int(rng.choice(4, p=[0.6, 0.15, 0.2, 0.05]))]
        regions = tuple(
            DefectRegion(x=int(rng.integers(0, 300)), y=int(rng.integers(0, 200)), width=int(rng.integers(1, 30)),
                         height=int(rng.integers(1, 30)), area_px=50, area_mm2=None, max_score=0.9, mean_score=0.6,
                         predicted_class=TYPES[int(rng.integers(0, 4))], type_confidence=0.8,
                         defect_class="crack" if rng.random() < 0.1 else None)
            for _ in range(int(rng.integers(1, 4)) if verdict in (Verdict.REVIEW, Verdict.FAIL) else 0))
        # 6 hours, some parts exactly on a bucket boundary
        t = T0 + (float(rng.integers(0, 24)) * BUCKET_S if rng.random() < 0.05 else float(rng.uniform(0, 6 * 3600)))
        out.append(InspectionResult(
            frame_id=i, timestamp=t, source="cam", recipe=("bracket", "tile")[int(rng.integers(0, 2))],
            model_version="v1", verdict=verdict, score=None if verdict == Verdict.ERROR else float(rng.random()),
            regions=regions, line=("L1", "L2")[int(rng.integers(0, 2))], station=("S1", "S2")[int(rng.integers(0, 2))],
            lot=f"lot{int(rng.integers(0, 5))}"))
    return out


def _fill(url: str) -> None:
    rng = np.random.default_rng(0)
    with Store(url, tz=dt.UTC) as store:
        for r in _results(rng, 300, 0):
            store.record(r)
        store.flush()
        store.insert_results([(f"j{r.frame_id}", result_rows(r)) for r in _results(rng, 200, 300)])
        pages = store.inspections(limit=1000, verdict="FAIL") + store.inspections(limit=1000, verdict="REVIEW")
        region_ids = [g.id for p in pages for g in p.regions]
        for k, region_id in enumerate(rng.choice(region_ids, 40, replace=False)):
            store.set_defect_class(("dent", "chip", "scratch")[k % 3], user="qa", region_id=int(region_id))
        for k, page in enumerate(p for p in pages[:20] if p.regions):
            store.set_defect_class(("chip", "crack")[k % 2], user="qa", inspection_id=page.id)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stats.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def stores(url: str) -> Iterator[tuple[Store, Store]]:
    """(from the roll-ups, from the detail rows) over one filled store."""
    _fill(url)
    fast, slow = Store(url, tz=dt.UTC), Store(url, tz=dt.UTC, rollups=False)
    yield fast, slow
    fast.close()
    slow.close()


FILTERS: list[dict[str, Any]] = [
    {},
    {"recipe": "bracket"},
    {"recipe": "tile", "line": "L2"},
    {"lot": "lot3"},
    {"station": "S1", "line": "L1"},
    {"since": T0 + 1234.5},                                     # off the buckets
    {"until": T0 + 4 * 3600 + 17.25},
    {"since": T0 + 100.0, "until": T0 + 5 * 3600 - 3.0, "recipe": "tile"},
    {"since": T0 + BUCKET_S, "until": T0 + 3 * BUCKET_S},       # on the buckets
    {"since": T0 + 2 * BUCKET_S, "until": T0 + 2 * BUCKET_S},   # empty
    {"since": T0 + 910.0, "until": T0 + 1700.0},                # inside one bucket
    {"since": T0 + 850.0, "until": T0 + 1000.0},                # across one boundary
    {"since": T0 + 2 * BUCKET_S - 1e-6, "until": T0 + 4 * BUCKET_S + 1e-6},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_every_statistic_from_the_rollups_equals_the_detail_rows(stores: tuple[Store, Store],
                                                                 flt: dict[str, Any]) -> None:
    fast, slow = stores
    for group_by in ("recipe", "lot", "hour", "shift", "day", ("line", "station", "recipe"), ("lot", "hour")):
        assert sorted(fast.yield_summary(group_by=group_by, **flt), key=lambda r: r.key) == \
            sorted(slow.yield_summary(group_by=group_by, **flt), key=lambda r: r.key), group_by
    for verdict in (None, "FAIL"):
        assert fast.defects_by_class(verdict=verdict, **flt) == slow.defects_by_class(verdict=verdict, **flt)
    f = st.Filters(**flt)
    for source in ("best", "confirmed", "predicted"):
        assert st.defect_pareto(fast, f, source=source) == st.defect_pareto(slow, f, source=source)
    for by in ("lot", "hour", "shift"):
        assert st.fail_rate_groups(fast, f, by=by) == st.fail_rate_groups(slow, f, by=by)
    # a grid whose cells are whole multiples of the roll-up's cells, on its boundaries: exactly equal
    area, grid = (2 * LOCATION_CELL_PX, LOCATION_CELL_PX, 48 * LOCATION_CELL_PX, 24 * LOCATION_CELL_PX), (12, 24)
    quick, exact = st.defect_locations(fast, area, f, grid=grid), st.defect_locations(slow, area, f, grid=grid)
    assert quick.outside == exact.outside
    assert quick.counts.keys() == exact.counts.keys()
    for kind, counts in exact.counts.items():
        np.testing.assert_array_equal(quick.counts[kind], counts, err_msg=kind)


def test_a_fine_grid_reads_the_detail_rows_and_a_coarse_one_places_centres_within_the_cell(
        stores: tuple[Store, Store]) -> None:
    fast, slow = stores
    fine = st.defect_locations(fast, (0, 0, 300, 200), grid=(48, 48))       # 6 px cells < LOCATION_CELL_PX
    assert fine.cell_px == 1
    np.testing.assert_array_equal(fine.total(), st.defect_locations(slow, (0, 0, 300, 200), grid=(48, 48)).total())
    coarse = st.defect_locations(fast, (3, 5, 300, 200), grid=(10, 10))     # off the roll-up's cells
    exact = st.defect_locations(slow, (3, 5, 300, 200), grid=(10, 10))
    assert coarse.cell_px == LOCATION_CELL_PX and exact.cell_px == 1
    assert coarse.total().sum() + coarse.outside == exact.total().sum() + exact.outside
    # a centre moves by at most half a roll-up cell (4 px < a 20 px cell): into a neighbouring cell at most
    padded = np.pad(exact.total(), 1)
    near = sum(padded[1 + dy: 11 + dy, 1 + dx: 11 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert np.all(coarse.total() <= near)


def _rollup_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: sorted(tuple(r) for r in conn.execute(sa.select(t))) for t in
                    (inspection_counts, region_counts, location_counts, part_counts)}
    finally:
        engine.dispose()


def test_rollups_built_from_scratch_equal_the_ones_kept_on_every_write(url: str) -> None:
    _fill(url)
    kept = _rollup_rows(url)
    assert all(kept.values())
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in (inspection_counts, region_counts, location_counts, part_counts):
            conn.execute(sa.delete(table))
        n = conn.execute(sa.select(sa.func.max(inspections.c.id))).scalar_one()
        steps = list(build(conn, chunk=97))                     # chunks cut groups apart: the upserts join them
    engine.dispose()
    assert steps[-1].done == steps[-1].total == n and len(steps) == -(-n // 97)
    assert _rollup_rows(url) == kept
    assert all(r[-1] > 0 for rows in kept.values() for r in rows)        # relabelling left no empty groups


def _old_store(tmp_path: Path, revision: str) -> tuple[Path, str]:
    """A SQLite store at an older schema revision (the tables that revision had), and its URL."""
    from alembic import command

    from inspector import migrations

    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), revision)  # type: ignore[arg-type]
    engine.dispose()
    return path, url


def test_a_schema_3_store_gets_its_rollups_built_on_upgrade(tmp_path: Path) -> None:
    path, url = _old_store(tmp_path, "0003")
    con = sqlite3.connect(path)
    rows = [(i, T0 + 60.0 * i, "part", "v1", "L1", "S1", f"lot{i % 3}", "cam", i,
             ("PASS", "FAIL", "ERROR")[i % 3], 0.5) for i in range(1, 200)]
    con.executemany("INSERT INTO inspections (id, time, recipe, model_version, line, station, lot, source, "
                    "frame_id, verdict, score) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.executemany("INSERT INTO regions (inspection_id, x, y, w, h, area_px, predicted_class) "
                    "VALUES (?, ?, ?, 9, 9, 50, ?)", [(i, i % 90, i % 70, "dent" if i % 2 else None)
                                                      for i in range(1, 200, 3)])
    con.commit()
    con.close()
    with Store(url, tz=dt.UTC) as fast, Store(url, tz=dt.UTC, rollups=False) as slow:
        assert fast.yield_summary(group_by=("lot", "hour")) == slow.yield_summary(group_by=("lot", "hour"))
        assert fast.yield_summary()[0].inspected == 199
        assert st.defect_pareto(fast) == st.defect_pareto(slow)
        assert all(r.parts == r.regions for r in st.defect_pareto(fast))       # one region per inspection
        assert st.fail_rate_groups(fast) == st.fail_rate_groups(slow)


def test_a_schema_4_store_gets_its_part_counts_built_on_upgrade(tmp_path: Path) -> None:
    """Revision 0005 counts the defective parts per type of a store that has the other roll-ups already."""
    path, url = _old_store(tmp_path, "0004")
    con = sqlite3.connect(path)
    con.executemany("INSERT INTO inspections (id, time, recipe, model_version, line, station, lot, source, "
                    "frame_id, verdict, score) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [(i, T0 + 60.0 * i, "part", "v1", "L1", "S1", "lot1", "cam", i, "FAIL", 0.9) for i in range(1, 31)])
    # part i has i % 4 fragments of one type: scratch on even parts, dent on odd ones
    con.executemany("INSERT INTO regions (inspection_id, x, y, w, h, area_px, predicted_class) "
                    "VALUES (?, ?, 5, 9, 9, 50, ?)",
                    [(i, 10 * k, "scratch" if i % 2 == 0 else "dent") for i in range(1, 31) for k in range(i % 4)])
    con.commit()
    con.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:          # what a schema-4 program kept on every write
        list(build(conn, tables=("inspection_counts", "region_counts", "location_counts")))
    engine.dispose()
    with Store(url, tz=dt.UTC) as fast, Store(url, tz=dt.UTC, rollups=False) as slow:
        rows = st.defect_pareto(fast)
        assert rows == st.defect_pareto(slow)
        # parts with fragments: i % 4 == 1 or 3 (dent: 8 x 1 + 7 x 3 fragments), i % 4 == 2 (scratch: 8 x 2)
        assert [(r.defect_type, r.parts, r.regions) for r in rows] == [("dent", 15, 29), ("scratch", 8, 16)]
