"""Statistics queries on a big store: 1,000,000 inspections and 3,000,000 regions.

Builds the store once (SQLite, the schema of ``inspector.store``, filled with plain ``executemany``
in one transaction per 50,000 rows: a generator, not the station's write path), then times each
query that the Statistics screen and ``inspector stats`` run, on the whole store and on the last
24 hours of one recipe. Each query runs ``--repeats`` times; the JSON holds every time.

The station's Statistics screen runs these queries on a worker thread, never on the GUI thread; this
benchmark gives the time the screen waits for a refresh.

Run from the repository root:

    .venv/bin/python -m benchmarks.stats_scale --db out/stats_scale.db --json benchmarks/results/stats_scale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy

from inspector import statistics as st
from inspector.store import Store

N_INSPECTIONS = 1_000_000
N_REGIONS = 3_000_000
RECIPES = ("bracket", "fryum", "tile")
TYPES = ("scratch", "dent", "stain", "crack", "chip", "unknown")
DAYS = 30
T_END = 1_790_000_000.0
CHUNK = 50_000


def build(path: Path) -> None:
    """Fill a new store with seeded synthetic inspections (12 regions per REVIEW/FAIL part)."""
    Store(path).close()                                  # the schema, exactly as the app makes it
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(T_END - DAYS * 86400, T_END, N_INSPECTIONS))
    recipe = rng.integers(0, len(RECIPES), N_INSPECTIONS)
    verdict = rng.choice(["PASS", "REVIEW", "FAIL"], size=N_INSPECTIONS, p=[0.75, 0.10, 0.15])
    score = np.where(verdict == "PASS", rng.normal(0.2, 0.02, N_INSPECTIONS), rng.uniform(0.3, 0.9, N_INSPECTIONS))
    defective = np.flatnonzero(verdict != "PASS")
    per_part = N_REGIONS // len(defective) + 1
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        for start in range(0, N_INSPECTIONS, CHUNK):
            rows = [(i + 1, float(t[i]), RECIPES[recipe[i]], "v1", f"L{i % 2 + 1}", "s1", f"lot{i // 1000:05d}",
                     "cam", i, None, str(verdict[i]), float(score[i]), 40.0, None, None, None)
                    for i in range(start, min(start + CHUNK, N_INSPECTIONS))]
            conn.executemany("INSERT INTO inspections (id, time, recipe, model_version, line, station, lot, "
                             "source, frame_id, path, verdict, score, latency_ms, image_path, overlay_path, "
                             "error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            conn.commit()
        owners = np.repeat(defective, per_part)[:N_REGIONS] + 1
        kinds = rng.choice(len(TYPES), size=N_REGIONS, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
        xs, ys = rng.integers(0, 600, N_REGIONS), rng.integers(0, 400, N_REGIONS)
        for start in range(0, N_REGIONS, CHUNK):
            stop = min(start + CHUNK, N_REGIONS)
            rows2 = [(int(owners[j]), int(xs[j]), int(ys[j]), 20, 12, 150, 0.8, 0.6,
                      "scratch" if j % 50 == 0 else None, TYPES[kinds[j]], 0.8)
                     for j in range(start, stop)]
            conn.executemany("INSERT INTO regions (inspection_id, x, y, w, h, area_px, max_score, mean_score, "
                             "defect_class, predicted_class, predicted_confidence) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             rows2)
            conn.commit()
        conn.execute("ANALYZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("out/stats_scale.db"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    built_s = None
    if not args.db.exists():
        start = time.perf_counter()
        build(args.db)
        built_s = time.perf_counter() - start
        print(f"built {args.db} in {built_s:.0f} s")
    store = Store(args.db)
    with store.engine.connect() as conn:
        n_insp = conn.exec_driver_sql("SELECT count(*) FROM inspections").scalar()
        n_reg = conn.exec_driver_sql("SELECT count(*) FROM regions").scalar()
    print(f"{n_insp:,} inspections, {n_reg:,} regions")
    day = st.Filters(recipe="fryum", since=T_END - 86400)
    everything = st.Filters()
    taught = np.random.default_rng(1).normal(0.2, 0.02, 64)
    queries: dict[str, Callable[[], Any]] = {
        "yield by lot, 24 h of one recipe": lambda: store.yield_summary(group_by="lot", recipe="fryum",
                                                                        since=day.since),
        "yield by hour, 24 h of one recipe": lambda: store.yield_summary(group_by="hour", recipe="fryum",
                                                                         since=day.since),
        "pareto, 24 h of one recipe": lambda: st.defect_pareto(store, day),
        "location map, 24 h of one recipe": lambda: st.defect_locations(store, (0, 0, 640, 480), day),
        "p-chart by lot, 24 h of one recipe": lambda: st.fail_rate_chart(store, day, by="lot"),
        "p-chart by hour, 24 h of one recipe": lambda: st.fail_rate_chart(store, day, by="hour"),
        "score chart (2000 newest), one recipe": lambda: st.score_chart(store, day, mean=0.2, sigma=0.02),
        "good-score drift (500 newest PASS)": lambda: st.good_score_drift(store, day, taught, review_threshold=0.3),
        "pareto, whole store": lambda: st.defect_pareto(store, everything),
        "location map, whole store": lambda: st.defect_locations(store, (0, 0, 640, 480), everything),
        "p-chart by lot, whole store": lambda: st.fail_rate_chart(store, everything, by="lot"),
        "yield by recipe, whole store": lambda: store.yield_summary(group_by="recipe"),
    }
    results: dict[str, list[float]] = {}
    for name, query in queries.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            query()
            times.append(time.perf_counter() - start)
        results[name] = times
        print(f"{name:<42} median {statistics.median(times):7.3f} s  (max {max(times):.3f} s)")
    store.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python -m benchmarks.stats_scale --db out/stats_scale.db --json " + str(args.json),
            "device": f"CPU ({platform.processor() or platform.machine()}), 2 cores shared with other jobs",
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": sqlalchemy.__version__, "inspections": n_insp, "regions": n_reg,
            "build_s": built_s, "seconds": results,
        }, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
