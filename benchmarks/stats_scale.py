"""Statistics queries on a big store: 1,000,000 inspections and 3,000,000 regions, from the roll-ups and not.

Builds the store once (the schema of ``inspector.store``, filled with plain ``executemany`` in one transaction
per 50,000 rows: a generator, not the station's write path; then the roll-ups are built from those rows with
`inspector.store.rollup.build`, the migration's code, and that time is kept), then times each query that the
Statistics screen and ``inspector stats`` run, on the whole store, on the last 7 days and on the last 24 hours
of one recipe: ``--repeats`` times from the roll-ups (``Store()``), and ``--detail-repeats`` times from the
detail rows (``Store(rollups=False)``: what every query did before the roll-ups), interleaved per query.

``--postgres`` builds and times the same on a throwaway PostgreSQL server (``tests.helpers.postgres``) instead.

The station's Statistics screen runs these queries on a worker thread, never on the GUI thread; this
benchmark gives the time the screen waits for a refresh.

Run from the repository root:

    .venv/bin/python -m benchmarks.stats_scale --db out/stats_scale.db --json benchmarks/results/stats_scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy

from inspector import statistics as st
from inspector.store import Store, inspections, regions, rollup

N_INSPECTIONS = 1_000_000
N_REGIONS = 3_000_000
RECIPES = ("bracket", "fryum", "tile")
TYPES = ("scratch", "dent", "stain", "crack", "chip", "unknown")
DAYS = 30
T_END = 1_790_000_000.0
CHUNK = 50_000


def build(url: str, n_inspections: int = N_INSPECTIONS, n_regions: int = N_REGIONS) -> float:
    """Fill a new store with seeded synthetic inspections (12 regions per REVIEW/FAIL part), then its roll-ups.

    Returns:
        Seconds the roll-ups took to build.
    """
    Store(url).close()                                   # the schema, exactly as the app makes it
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        _fill(conn, n_inspections, n_regions)
    start = time.perf_counter()
    with engine.begin() as conn:
        for progress in rollup.build(conn):
            print(progress.message, f"({time.perf_counter() - start:.0f} s)", flush=True)
    rollup_s = time.perf_counter() - start
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return rollup_s


def _fill(conn: sqlalchemy.Connection, n_inspections: int, n_regions: int) -> None:
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(T_END - DAYS * 86400, T_END, n_inspections))
    recipe = rng.integers(0, len(RECIPES), n_inspections)
    verdict = rng.choice(["PASS", "REVIEW", "FAIL"], size=n_inspections, p=[0.75, 0.10, 0.15])
    score = np.where(verdict == "PASS", rng.normal(0.2, 0.02, n_inspections), rng.uniform(0.3, 0.9, n_inspections))
    defective = np.flatnonzero(verdict != "PASS")
    per_part = n_regions // len(defective) + 1
    for start in range(0, n_inspections, CHUNK):
        rows = [{"id": i + 1, "time": float(t[i]), "recipe": RECIPES[recipe[i]], "model_version": "v1",
                 "line": f"L{i % 2 + 1}", "station": "s1", "lot": f"lot{i // 1000:05d}", "source": "cam",
                 "frame_id": i, "verdict": str(verdict[i]), "score": float(score[i]), "latency_ms": 40.0}
                for i in range(start, min(start + CHUNK, n_inspections))]
        conn.execute(sqlalchemy.insert(inspections), rows)
    owners = np.repeat(defective, per_part)[:n_regions] + 1
    kinds = rng.choice(len(TYPES), size=n_regions, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
    xs, ys = rng.integers(0, 600, n_regions), rng.integers(0, 400, n_regions)
    for start in range(0, n_regions, CHUNK):
        stop = min(start + CHUNK, n_regions)
        rows2 = [{"inspection_id": int(owners[j]), "x": int(xs[j]), "y": int(ys[j]), "w": 20, "h": 12,
                  "area_px": 150, "max_score": 0.8, "mean_score": 0.6,
                  "defect_class": "scratch" if j % 50 == 0 else None, "predicted_class": TYPES[kinds[j]],
                  "predicted_confidence": 0.8}
                 for j in range(start, stop)]
        conn.execute(sqlalchemy.insert(regions), rows2)
    if conn.dialect.name == "postgresql":      # explicit ids: move the sequence past them
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('inspections', 'id'), "
                             "(SELECT max(id) FROM inspections))")


def _queries(store: Store) -> dict[str, Callable[[], Any]]:
    """The Statistics screen's and ``inspector stats``' queries, by name (the benchmark's table rows)."""
    day = st.Filters(recipe="fryum", since=T_END - 86400)
    week = st.Filters(recipe="fryum", since=T_END - 7 * 86400)
    everything = st.Filters()
    taught = np.random.default_rng(1).normal(0.2, 0.02, 64)
    roi = (0, 0, 640, 480)
    queries: dict[str, Callable[[], Any]] = {}
    for label, flt in (("24 h of one recipe", day), ("7 days of one recipe", week), ("whole store", everything)):
        recipe, since = flt.recipe, flt.since      # None: any (the store's filters)
        these: dict[str, Callable[[], Any]] = {
            f"yield by recipe, {label}": partial(store.yield_summary, group_by="recipe", recipe=recipe, since=since),
            f"yield by line x lot, {label}": partial(store.yield_summary, group_by=("line", "lot"), recipe=recipe,
                                                     since=since),
            f"yield by hour, {label}": partial(store.yield_summary, group_by="hour", recipe=recipe, since=since),
            f"yield by shift, {label}": partial(store.yield_summary, group_by="shift", recipe=recipe, since=since),
            f"defects by class, {label}": partial(store.defects_by_class, recipe=recipe, since=since),
            f"pareto (best type), {label}": partial(st.defect_pareto, store, flt),
            f"pareto (confirmed), {label}": partial(st.defect_pareto, store, flt, source="confirmed"),
            f"location map 48x48, {label}": partial(st.defect_locations, store, roi, flt),
            f"p-chart by lot, {label}": partial(st.fail_rate_chart, store, flt, by="lot"),
            f"p-chart by hour, {label}": partial(st.fail_rate_chart, store, flt, by="hour"),
            f"p-chart by shift, {label}": partial(st.fail_rate_chart, store, flt, by="shift"),
            f"score chart (2000 newest), {label}": partial(st.score_chart, store, flt, mean=0.2, sigma=0.02),
            f"good-score drift (500 newest PASS), {label}":
                partial(st.good_score_drift, store, flt, taught, review_threshold=0.3),
        }
        queries |= these
    return queries


def _timed(query: Callable[[], Any]) -> float:
    start = time.perf_counter()
    query()
    return time.perf_counter() - start


def upkeep(store: Store, n: int) -> dict[str, list[float]]:
    """The roll-ups' cost per written result: ``n`` copies of stored FAIL results (12 regions each) inserted in a
    transaction that is rolled back, without and with `rollup.add_inspections`, interleaved (no fsync in either)."""
    with store.engine.connect() as conn:
        ids = list(conn.execute(sqlalchemy.select(inspections.c.id).where(inspections.c.verdict == "FAIL")
                                .order_by(inspections.c.id).limit(n * 50)).scalars())[::50][:n]
    out: dict[str, list[float]] = {"insert_ms": [], "insert_and_rollups_ms": []}
    for k, source_id in enumerate(ids):
        with store.engine.connect() as conn:
            one = sqlalchemy.select(inspections).where(inspections.c.id == source_id)
            row = dict(conn.execute(one).mappings().one())
            region_rows = [dict(r) for r in conn.execute(sqlalchemy.select(regions)
                                                         .where(regions.c.inspection_id == source_id)).mappings()]
        for with_rollups in (k % 2 == 0, k % 2 == 1):       # alternate which goes first
            start = time.perf_counter()
            with store.engine.connect() as conn, conn.begin() as tx:
                new_row = {k: v for k, v in row.items() if k != "id"}
                new_id = conn.execute(sqlalchemy.insert(inspections).returning(inspections.c.id), new_row).scalar_one()
                conn.execute(sqlalchemy.insert(regions), [{**{c: r[c] for c in r if c != "id"}, "inspection_id": new_id}
                                                          for r in region_rows])
                if with_rollups:
                    rollup.add_inspections(conn, [new_id])
                tx.rollback()
            out["insert_and_rollups_ms" if with_rollups else "insert_ms"].append(1000 * (time.perf_counter() - start))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("out/stats_scale.db"))
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL server instead of --db")
    parser.add_argument("--inspections", type=int, default=N_INSPECTIONS, help="store size (regions: 3x)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="times per query from the roll-ups")
    parser.add_argument("--detail-repeats", type=int, default=1, help="times per query from the detail rows (0: not)")
    parser.add_argument("--only", default="", help="only the queries whose name contains this text")
    parser.add_argument("--upkeep", type=int, default=0, help="also time the roll-ups' upkeep on this many results")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.postgres:
            from tests.helpers.postgres import PostgresCluster

            cluster = stack.enter_context(PostgresCluster.start())
            url, fresh = cluster.create_database("stats_scale"), True
        else:
            args.db.parent.mkdir(parents=True, exist_ok=True)
            url, fresh = f"sqlite:///{args.db}", not args.db.exists()
        built_s = rollup_s = None
        if fresh:
            start = time.perf_counter()
            rollup_s = build(url, args.inspections, 3 * args.inspections)
            built_s = time.perf_counter() - start
            print(f"built in {built_s:.0f} s (roll-ups {rollup_s:.0f} s)")
        fast, slow = Store(url), Store(url, rollups=False)
        stack.callback(fast.close)
        stack.callback(slow.close)
        with fast.engine.connect() as conn:
            n_insp = conn.exec_driver_sql("SELECT count(*) FROM inspections").scalar()
            n_reg = conn.exec_driver_sql("SELECT count(*) FROM regions").scalar()
            sizes = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()   # noqa: S608 (our names)
                     for t in ("inspection_counts", "region_counts", "location_counts", "part_counts")}
        print(f"{n_insp:,} inspections, {n_reg:,} regions; roll-up rows {sizes}")
        results: dict[str, dict[str, list[float]]] = {}
        detail_queries = _queries(slow)
        for name, query in _queries(fast).items():
            if args.only not in name:
                continue
            times = {"rollup": [_timed(query) for _ in range(args.repeats)],
                     "detail": [_timed(detail_queries[name]) for _ in range(args.detail_repeats)]}
            results[name] = times
            before = f"  detail {statistics.median(times['detail']):8.3f} s" if times["detail"] else ""
            print(f"{name:<52} roll-up median {statistics.median(times['rollup']):7.3f} s "
                  f"(max {max(times['rollup']):.3f} s){before}", flush=True)
        cost = upkeep(fast, args.upkeep) if args.upkeep else {}
        for key, values in cost.items():
            print(f"{key}: p50 {np.percentile(values, 50):.2f} ms, p99 {np.percentile(values, 99):.2f} ms")
        dialect = fast.engine.dialect
        version = ".".join(str(v) for v in dialect.server_version_info or ())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python -m benchmarks.stats_scale " + " ".join(sys.argv[1:]),
            "device": f"CPU ({platform.processor() or platform.machine()}), 2 cores shared with other jobs",
            "load_average": os.getloadavg(),
            "python": platform.python_version(), "database": f"{dialect.name} {version}",
            "sqlalchemy": sqlalchemy.__version__, "inspections": n_insp, "regions": n_reg,
            "rollup_rows": sizes, "build_s": built_s, "upkeep": cost, "rollup_build_s": rollup_s, "seconds": results,
        }, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
