"""Scale benchmarks of issue 15: PostgreSQL writers (`store_rows`) and batch review on Ray (`review_rows`).

Store rows (`store_rows`): a throwaway PostgreSQL server on loopback (Debian's ``postgresql``, the
tests' `tests.helpers.postgres.PostgresCluster`, fsync on), and 1, 2 and 4 station processes writing
at once, each through the station's own path (`inspector.recording.ResultRecorder`: every result is
made durable in the station's local journal, then forwarded in batches to the server). Per run: results
per second into PostgreSQL (all writers' results / time until the last is committed), and per result
the record -> durable (journal) and record -> committed in PostgreSQL latencies, p50/p99, over all
writers. Each writer records as fast as it can: the commit latency includes the queueing behind a
batch, the worst case of a line.

Review rows (`review_rows`), all on one machine:

1. **Throughput.** One synthetic folder (``--images`` parts of ``--size`` px, a tenth with a drawn
   defect) reviewed with a recipe taught on 8 good parts (random-init ViT-S/14 weights: the speed is
   the model's, the accuracy is not the point): single-process `inspector.review.review`, then
   `inspector.ray_review.ray_review` with 1 and 2 workers on one local Ray cluster (started once,
   its start-up not counted). The single-process baseline runs torch on 1 thread, as each Ray
   worker does; a second single-process row uses torch's default threads (a plain review). Per run:
   wall time (actor start-up and model loading included), the steady rate (images/s from the first
   finished image to the last), and the ratio of each to the baseline. The journals of the runs are
   compared with the baseline's (same verdicts and scores to 1e-5).
2. **Driver memory.** A synthetic folder of ``--files`` small files (default 200,000, one flat
   folder: the worst case, as the walk holds one folder's names at a time) is streamed through the
   real driver code (`iter_image_files` -> batches -> `WorkerPool` with ``ray.wait``) to 2 trivial
   actors that return a tiny record per file: scoring 200,000 images is out of reach on 2 cores. Peak
   Python memory of the driver (tracemalloc) and its RSS growth are measured, against building the
   full list of paths (`image_files`, what a single-process review holds).
3. **Journal records.** What a single-process review holds per finished image (`journal_row`): its
   journal keeps every record in memory for the report. The Ray driver keeps them in an SQLite index
   beside the journal instead (`report_row`): its peak memory while reading back the journal of
   ``--files`` finished images and while writing their report, streamed.

Usage (from the repository root):
    python -m benchmarks.scale --store-only --results 2000 --json benchmarks/results/scale-store.json
    python -m benchmarks.scale --review-only
    python -m benchmarks.scale --review-only --images 48 --files 200000 --json benchmarks/results/scale-review.json
    python -m benchmarks.scale --report-only --files 200000     # the Ray driver's streamed report, into that JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.soak import rss_mb
from inspector.results import Progress
from inspector.review import JOURNAL_NAME, ReviewSummary

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------ helpers


def _timed(job: Generator[Progress, None, ReviewSummary]) -> dict[str, Any]:
    """Drive a review; wall time, and the steady rate from the first finished image to the last."""
    start = time.perf_counter()
    first: tuple[float, int] | None = None
    while True:
        try:
            tick = next(job)
        except StopIteration as stop:
            summary: ReviewSummary = stop.value
            break
        if first is None and tick.done > 0:
            first = (time.perf_counter(), tick.done)
    end = time.perf_counter()
    n = sum(summary.counts.values())
    steady = (n - first[1]) / (end - first[0]) if first and end > first[0] and n > first[1] else None
    return {"images": n, "wall_s": round(end - start, 2), "images_per_s_wall": round(n / (end - start), 3),
            "images_per_s_steady": None if steady is None else round(steady, 3), "model": summary.model,
            "counts": summary.counts}


def _records(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()[1:]
    return {r["file"]: r for r in map(json.loads, lines)}


def _same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k]["status"] == b[k]["status"] and a[k].get("verdict") == b[k].get("verdict")
               and abs(a[k].get("score", 0.0) - b[k].get("score", 0.0)) <= 1e-5 for k in a)


def _teach(root: Path, size: int) -> Path:
    """A recipe taught on 8 synthetic good parts with random-init ViT-S/14 weights (no download)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from inspector.recipe import load_recipe
    from inspector.teach import run_to_end, teach
    from tests.conftest import write_recipe
    from tests.helpers.images import textured_part, write_images

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    weights = root / "vit_small_random.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    rng = np.random.default_rng(0)
    good = write_images(root / "good", [textured_part(rng, size) for _ in range(8)])[0].parent
    recipe = write_recipe(root / "recipe", weights)
    text = recipe.read_text(encoding="utf-8").replace("shorter_side: 84", f"shorter_side: {size}")
    recipe.write_text(text, encoding="utf-8")
    run_to_end(teach(load_recipe(recipe), good))
    return recipe


# ------------------------------------------------------------------------------------ rows


def throughput_rows(root: Path, *, images: int, size: int, workers: tuple[int, ...]) -> list[dict[str, Any]]:
    """Single-process review vs Ray with each number of ``workers``, same folder, same recipe."""
    import ray

    from inspector.ray_review import ray_review
    from inspector.review import review
    from tests.helpers.images import textured_part, with_defect, write_images

    recipe = _teach(root, size)
    rng = np.random.default_rng(1)
    parts = [with_defect(textured_part(rng, size), rng)[0] if i % 10 == 9 else textured_part(rng, size)
             for i in range(images)]
    folder = write_images(root / "lot", parts)[0].parent
    import torch

    rows = []
    default_threads = torch.get_num_threads()
    # Baseline: one torch thread, as each Ray worker has (Ray sets OMP_NUM_THREADS to its 1 CPU).
    torch.set_num_threads(1)
    base = _timed(review(folder, root / "out-single", recipe=recipe))
    rows.append({"run": "single process, 1 thread", "workers": 1, **base, "ratio_wall": 1.0, "ratio_steady": 1.0,
                 "same_records": True})
    print(_line(rows[-1]), flush=True)
    reference = _records(root / "out-single")
    # What a plain `inspector review` does: torch's default threads (one per core).
    torch.set_num_threads(default_threads)
    row = _timed(review(folder, root / "out-single-threads", recipe=recipe))
    rows.append({"run": f"single process, {default_threads} threads", "workers": 1, **row, **_ratios(row, base),
                 "same_records": _same(_records(root / "out-single-threads"), reference)})
    print(_line(rows[-1]), flush=True)
    t = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray_start_s = round(time.perf_counter() - t, 1)
    try:
        for n in workers:
            out = root / f"out-ray-{n}"
            row = _timed(ray_review(folder, out, recipe=recipe, workers=n))
            rows.append({"run": f"Ray, {n} worker(s)", "workers": n, **row, **_ratios(row, base),
                         "same_records": _same(_records(out), reference), "ray_start_s": ray_start_s})
            print(_line(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    return rows


def _ratios(row: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    steady, base_steady = row["images_per_s_steady"], base["images_per_s_steady"]
    return {"ratio_wall": round(row["images_per_s_wall"] / base["images_per_s_wall"], 2),
            "ratio_steady": round(steady / base_steady, 2) if steady and base_steady else None}


class CountingWorker:
    """A trivial review actor: one tiny record per file, no image read (measures the driver, not scoring)."""

    def score(self, rels: list[str]) -> list[dict[str, Any]]:
        return [{"file": rel, "status": "ok"} for rel in rels]


def memory_rows(root: Path, *, files: int, workers: int = 2) -> list[dict[str, Any]]:
    """Driver memory while streaming ``files`` small files, vs the full list of their paths."""
    import gc

    import ray

    from inspector.capture import image_files, iter_image_files
    from inspector.ray_review import BATCH_SIZE, WorkerPool, batched
    from inspector.review import relative_name

    folder = root / "many"
    folder.mkdir()
    t = time.perf_counter()
    for i in range(files):
        (folder / f"img_{i:07d}.png").touch()
    make_s = time.perf_counter() - t
    tree = root / "tree"                   # the same number of files, 1,000 per folder (an archive by day/line)
    for i in range(files):
        sub = tree / f"day_{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"img_{i:07d}.png").touch()
    rows = []

    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    listed = image_files(folder)
    list_s = time.perf_counter() - t
    peak_list = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    count = len(listed)
    del listed
    gc.collect()
    rows.append({"run": "full path list (image_files, single-process review)", "files": count,
                 "peak_python_mb": round(peak_list / 2**20, 1), "seconds": round(list_s, 1)})
    print(rows[-1], flush=True)

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(CountingWorker)
        for layout, where in (("one flat folder", folder), ("1,000 files per folder", tree)):
            pool = WorkerPool(lambda name: remote.options(name=name).remote(), workers=workers)
            ray.get([a.score.remote([]) for a in pool.actors])       # actors up before measuring
            gc.collect()
            rss0 = rss_mb()
            rss_peak = rss0
            tracemalloc.start()
            t = time.perf_counter()
            done = 0
            peak_in_flight = 0
            todo = (relative_name(p, where) for p in iter_image_files(where))
            for _rels, records in pool.results(batched(todo, BATCH_SIZE)):
                done += len(records)
                peak_in_flight = max(peak_in_flight, pool.in_flight)
                if done % 20_000 < BATCH_SIZE:
                    rss_peak = max(rss_peak, rss_mb())
            seconds = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            pool.close()
            rows.append({"run": f"{layout}, streamed to {workers} trivial Ray actors (iter_image_files + "
                                f"WorkerPool)", "files": done, "peak_python_mb": round(peak / 2**20, 1),
                         "rss_growth_mb": round(rss_peak - rss0, 1), "seconds": round(seconds, 1),
                         "files_per_s": round(done / seconds), "batch_size": BATCH_SIZE,
                         "peak_batches_in_flight": peak_in_flight})
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    rows[0]["make_folder_s"] = round(make_s, 1)
    return rows


def journal_row(root: Path, *, records: int = 20_000) -> dict[str, Any]:
    """Memory per finished image of a journal held in memory (a single-process review; read back as a resumed
    run does). The Ray driver keeps them on disk instead (`report_row`).

    Records are those of PASS images without regions (the smallest kind), on 1280x960 parts.
    """
    import gc

    from inspector.review import Journal

    header = {"journal": 1, "mode": "recipe", "folder": "/archive", "recipe": "part", "model_version": "v1",
              "thresholds": [0.1, 0.2, 0.15]}
    path = root / JOURNAL_NAME
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        for i in range(records):
            rel = f"2026-11/line2/img_{i:07d}.png"
            fh.write(json.dumps({"file": rel, "status": "ok", "verdict": "PASS", "score": 0.123456789,
                                 "regions": [], "width": 1280, "height": 960,
                                 "thumb": f"thumbs/{rel.replace('/', '_')}.jpg", "overlay": None}) + "\n")
    gc.collect()
    tracemalloc.start()
    journal = Journal(path, header)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    row = {"run": "journal records held in memory (single-process review; Journal read back)",
           "records": len(journal.records),
           "bytes_per_record": round(held / records), "mb_per_million_images": round(held / records * 1e6 / 2**20)}
    print(row, flush=True)
    return row


def report_row(root: Path, *, records: int = 200_000) -> dict[str, Any]:
    """The Ray driver at the end of a ``records``-image review: peak Python memory (tracemalloc) while it
    reads the journal back into its on-disk index (a resumed run) and while it writes the final report,
    streamed from that index in the folder's order (`inspector.review.finish_review`).

    Records as `journal_row`'s, one in ten with a defect region; the folder's walk is given (no image files).
    """
    import gc

    from inspector._report import ReportMeta
    from inspector.review import Journal, finish_review

    header = {"journal": 1, "mode": "recipe", "folder": "/archive", "recipe": "part", "model_version": "v1",
              "thresholds": [0.1, 0.2, 0.15]}
    out = root / "report"
    out.mkdir()
    path = out / JOURNAL_NAME
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        for i in range(records):
            rel = f"2026-11/day_{i // 1000:03d}/img_{i:07d}.png"
            regions = [] if i % 10 else [{"x": 10, "y": 20, "width": 8, "height": 6, "area_px": 40, "area_mm2": None,
                                          "max_score": 0.3, "mean_score": 0.25, "defect_class": None,
                                          "predicted_class": None, "type_confidence": None}]
            fh.write(json.dumps({"file": rel, "status": "ok", "verdict": "FAIL" if regions else "PASS",
                                 "score": 0.3 if regions else 0.123456789, "regions": regions, "width": 1280,
                                 "height": 960, "thumb": f"thumbs/{rel.replace('/', '_')}.jpg",
                                 "overlay": f"overlays/{rel.replace('/', '_')}.jpg" if regions else None}) + "\n")
    folder = Path("/archive")
    meta = ReportMeta(title="Review of archive", mode="recipe", source=str(folder), model="recipe part, model v1",
                      thresholds=(0.1, 0.2, 0.15), rule="the recipe's thresholds", total_files=records,
                      complete=True, generated="2026-12-02T00:00:00+00:00")

    def walk() -> Any:
        return (folder / f"2026-11/day_{i // 1000:03d}/img_{i:07d}.png" for i in range(records))

    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    journal = Journal(path, header, on_disk=True)
    read_s = time.perf_counter() - t
    read_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    t = time.perf_counter()
    summary = finish_review(folder, out, walk, journal, meta, resumed=records, scored=0, mode="recipe")
    report_s = time.perf_counter() - t
    report_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    journal.close()
    pages = list((out / "pages").glob("images-*.html"))
    row = {"run": "Ray driver: journal read back into its on-disk index, then the report streamed from it",
           "records": summary["files"], "read_peak_python_mb": round(read_peak / 2**20, 2),
           "read_s": round(read_s, 1), "report_peak_python_mb": round(report_peak / 2**20, 2),
           "report_s": round(report_s, 1), "index_html_mb": round((out / "index.html").stat().st_size / 2**20, 1),
           "pages": len(pages), "largest_page_mb": round(max((p.stat().st_size for p in pages), default=0) / 2**20, 2),
           "counts": summary["counts"]}
    print(row, flush=True)
    return row


def review_rows(*, images: int = 48, size: int = 112, files: int = 200_000,
                workers: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """The review part of the scale benchmark: throughput rows and driver-memory rows."""
    root = Path(tempfile.mkdtemp(prefix="scale-review-"))
    try:
        return {"throughput": throughput_rows(root, images=images, size=size, workers=workers),
                "memory": [*memory_rows(root, files=files), journal_row(root), report_row(root, records=files)]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


_WRITER = """
import json, sys, time
from inspector.recording import ResultRecorder
from inspector.results import InspectionResult, Verdict
from inspector.store import Store

url, station, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
recorded_at: list[float] = []
stored_at: list[float] = []

def on_recorded(count: int) -> None:           # the forwarder's commit moved the store's count
    now = time.perf_counter()
    stored_at.extend([now] * (count - len(stored_at)))

store = Store(url, on_recorded=on_recorded)
recorder = ResultRecorder(store)
durable: list[float] = []
while time.time() < start:                     # all writers begin together
    time.sleep(0.002)
began = time.perf_counter()
for i in range(n):
    t = time.perf_counter()
    recorded_at.append(t)
    recorder.record(InspectionResult(frame_id=i, timestamp=time.time(), source="bench", recipe="part",
                                     model_version="v1", verdict=Verdict.PASS if i % 10 else Verdict.FAIL,
                                     score=i / n, line="L1", station=station))
    durable.append(time.perf_counter() - t)
assert recorder.wait_stored(600)
ended = time.perf_counter()
recorder.close()
store.close()
print(json.dumps({"began": began, "ended": ended, "durable_ms": [d * 1000 for d in durable],
                  "stored_ms": [(s - r) * 1000 for r, s in zip(recorded_at, stored_at)]}))
"""


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def store_rows(*, results: int = 2000, writers: tuple[int, ...] = (1, 2, 4)) -> list[dict[str, Any]]:
    """Results per second into a real PostgreSQL from 1, 2, 4 station processes, with commit latencies."""
    import subprocess

    from tests.helpers.postgres import PostgresCluster

    rows = []
    repo = Path(__file__).resolve().parents[1]
    with PostgresCluster.start(extra=("-c", "fsync=on")) as cluster:
        for n_writers in writers:
            url = cluster.create_database(f"scale_{n_writers}")
            data_dir = Path(tempfile.mkdtemp(prefix="scale-store-"))
            start = time.time() + 5.0
            # one data folder (so one result journal) per station, as on separate station PCs
            procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url, f"S{k}", str(results), str(start)],
                                      cwd=repo, env={**os.environ, "INSPECTOR_DATA_DIR": str(data_dir / f"S{k}")},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for k in range(n_writers)]
            outs = []
            for proc in procs:
                out, err = proc.communicate(timeout=1800)
                if proc.returncode != 0:
                    msg = f"writer failed: {err[-2000:]}"
                    raise RuntimeError(msg)
                outs.append(json.loads(out.strip().splitlines()[-1]))
            shutil.rmtree(data_dir, ignore_errors=True)
            wall = max(o["ended"] for o in outs) - min(o["began"] for o in outs)
            durable = [d for o in outs for d in o["durable_ms"]]
            stored = [d for o in outs for d in o["stored_ms"]]
            row = {"writers": n_writers, "results": n_writers * results, "wall_s": round(wall, 2),
                   "results_per_s": round(n_writers * results / wall, 1),
                   "durable_ms_p50": _pct(durable, 50), "durable_ms_p99": _pct(durable, 99),
                   "committed_ms_p50": _pct(stored, 50), "committed_ms_p99": _pct(stored, 99)}
            print(row, flush=True)
            rows.append(row)
    return rows


def _line(row: dict[str, Any]) -> str:
    steady = row["images_per_s_steady"]
    return (f"{row['run']:<26} {row['images']:>4} img  wall {row['wall_s']:>7.1f} s  "
            f"{row['images_per_s_wall']:>6.2f} img/s (x{row['ratio_wall']})  steady "
            f"{'-' if steady is None else f'{steady:.2f}'} img/s (x{row['ratio_steady']})  "
            f"same records: {row['same_records']}")


def _conditions(command: str) -> dict[str, Any]:
    import ray
    import torch

    return {"command": command, "device": f"CPU only: {os.cpu_count()} cores ({platform.processor() or 'unknown'})",
            "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "torch_threads_driver": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--review-only", action="store_true", help="only the Ray review rows (no PostgreSQL rows)")
    p.add_argument("--store-only", action="store_true", help="only the PostgreSQL rows (no Ray review rows)")
    p.add_argument("--results", type=int, default=2000, help="results each PostgreSQL writer records (default 2000)")
    p.add_argument("--images", type=int, default=48, help="images of the throughput folder (default 48)")
    p.add_argument("--size", type=int, default=112, help="side of the synthetic parts, px (default 112)")
    p.add_argument("--files", type=int, default=200_000, help="files of the driver-memory folder (default 200000)")
    p.add_argument("--report-only", action="store_true",
                   help="only the Ray driver's streamed-report row (--files records), merged into --json")
    p.add_argument("--json", type=Path, default=RESULTS / "scale-review.json", help="where the results go")
    args = p.parse_args(argv)
    conditions = _conditions("python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.report_only:
        return _merge_report_row(args.json, conditions, args.files)
    data: dict[str, Any] = {"conditions": conditions}
    if not args.review_only:
        data["store"] = store_rows(results=args.results)
    if not args.store_only:
        data["review"] = review_rows(images=args.images, size=args.size, files=args.files)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


def _merge_report_row(path: Path, conditions: dict[str, Any], records: int) -> int:
    """Measure `report_row` and put it into the review JSON beside the rows measured before (its own conditions)."""
    root = Path(tempfile.mkdtemp(prefix="scale-report-"))
    try:
        row = {**report_row(root, records=records), "conditions": conditions}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"review": {"memory": []}}
    memory = [r for r in data.setdefault("review", {}).setdefault("memory", []) if r.get("run") != row["run"]]
    data["review"]["memory"] = [*memory, row]
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
