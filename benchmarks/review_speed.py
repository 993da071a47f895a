"""Batch review: scoring threads, batches and one image at a time, whole reviews interleaved (issue 17).

Teaches a recipe with the product's defaults (448 px, block 8, the default detector options, no
self-tuning: the recipe as written, as `inspector train --fixed-config`) on
``--shots`` good frames of an MVTec-layout category, then reviews ``--images`` test images split
into folders of ``--chunk`` images. Each folder is reviewed once per row, the order rotating from
folder to folder so that load drift on a shared machine hits every row alike:

- ``one at a time``: ``review(..., batch_size=1, workers=1)``, one model call per image on the
  process's torch threads: the path before batching, the baseline of every ratio;
- ``one at a time, 1 torch thread``: the same with ``torch.set_num_threads(1)`` (faster than two on
  the loaded 2-core development machine);
- ``default (scoring threads)``: ``review()`` as the CLI runs it: on the CPU several images at once,
  one scoring thread each (`inspector._review_workers.plan_workers`; ``--workers N`` to force N);
- ``batch N, 1 scoring thread``: ``batch_size=--batch`` (``Station.inspect_images``), unless ``--batch 1``;
- with ``--onnx``, batched and scored by onnxruntime from the version's exported ``model.onnx``
  (exported once after teaching, its export time reported apart).

Every row first reviews two images untimed (a warm-up). Every call is a whole
``inspector.review.review`` run: loading the model, decoding, scoring,
thumbnails, overlays, the journal and the HTML report. Verdicts and scores of every row are
compared with the baseline's (ONNX: within the export self-check tolerance
``models.export.SCORE_ATOL``, identical verdicts). The JSON records the load average
(``os.getloadavg()``) at the start and after every run.

Usage (repository root):
    python -m benchmarks.review_speed --data-root ../shared/data/visa_fryum --shots 16 --images 16 \\
        --chunk 8 --json benchmarks/results/review_cpu_threads.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.speed import cpu_model, image_files, versions
from inspector.recipe import load_recipe
from inspector.review import REVIEW_BATCH, review
from inspector.station import Station
from inspector.teach import run_to_end, teach
from models.evaluation import load_image_rgb
from models.export import SCORE_ATOL, export_onnx
from models.preprocess import input_size

logger = logging.getLogger("benchmarks.review_speed")


def write_recipe(folder: Path, *, device: str) -> Path:
    """A recipe with every default but the name and where its models go."""
    path = folder / "bench.yaml"
    path.write_text("schema_version: 1\nname: bench\nsource: {type: folder, path: images}\n"
                    f"detector: {{device: {device}}}\nmodel: {{directory: models, version: latest}}\n",
                    encoding="utf-8")
    return path


def scores(out: Path) -> dict[str, tuple[str, float]]:
    with (out / "results.csv").open(encoding="utf-8", newline="") as fh:
        return {r["file"]: (r["verdict"], float(r["score"] or "nan")) for r in csv.DictReader(fh)}


def export_model(recipe: Path, sample: Path) -> float:
    """Export the newest version of ``recipe`` to its ``model.onnx`` for frames like ``sample``; seconds taken."""
    t0 = time.perf_counter()
    station = Station.load(load_recipe(recipe), device="cpu")
    frame = load_image_rgb(sample)          # a file it cannot decode: ValueError naming it
    detector = station.detector
    hw = input_size(*frame.shape[:2], shorter_side=detector.config.shorter_side,
                    patch_size=detector.backbone.patch_size)
    assert station.version is not None
    report = export_onnx(detector, station.version.path / "model.onnx", input_hw=hw, verify_images=[frame],
                         weights=station.weights)
    for line in report.summary_lines():
        logger.info("%s", line)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Row:
    """One way of reviewing a folder."""

    label: str
    runtime: str = "torch"
    batch: int | None = None       # review(batch_size=)
    workers: int | None = None     # review(workers=); None with batch None: the default rule
    threads: int | None = None     # torch threads of the calling thread for this row (None: the process's)


def review_rows(args: argparse.Namespace) -> list[Row]:
    """The baseline first (one image per model call on the process's torch threads: the path before
    batching), then the same on one torch thread, the default (scoring threads), and the options."""
    rows = [Row("one at a time", batch=1, workers=1), Row("one at a time, 1 torch thread", batch=1, workers=1,
                                                          threads=1),
            Row("default (scoring threads)" if args.workers is None else f"{args.workers} scoring threads",
                workers=args.workers)]
    if args.batch > 1:
        rows.append(Row(f"batch {args.batch}, 1 scoring thread", batch=args.batch, workers=1))
    if args.onnx:
        rows.append(Row(f"onnxruntime batch {args.batch}", runtime="onnx", batch=args.batch, workers=1))
    return rows


def run_row(row: Row, folder: Path, out: Path, recipe: Path, device: str) -> tuple[float, str]:
    """Seconds of one whole ``review()`` run of ``folder`` the row's way, and what scored (the report's model)."""
    caller = torch.get_num_threads()
    if row.threads:
        torch.set_num_threads(row.threads)
    try:
        t0 = time.perf_counter()
        summary = run_to_end(review(folder, out, recipe=recipe, device=device, batch_size=row.batch,
                                    workers=row.workers, runtime=row.runtime))
        return time.perf_counter() - t0, summary.model
    finally:
        torch.set_num_threads(caller)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--chunk", type=int, default=8, help="images per reviewed folder (one run of every row each)")
    p.add_argument("--batch", type=int, default=REVIEW_BATCH, help="the batched row's batch size (1: no such row)")
    p.add_argument("--workers", type=int, default=None, help="scoring threads of the threads row (default: the rule)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the process (default: torch's)")
    p.add_argument("--onnx", action="store_true", help="add a batched row scored by onnxruntime (model.onnx)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("models", "inspector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="review-speed-"))
    load: list[tuple[float, float, float]] = [os.getloadavg()]
    try:
        teach_dir = work / "teach"
        teach_dir.mkdir()
        for path in image_files(args.data_root, "train")[: args.shots]:
            shutil.copy(path, teach_dir / path.name)
        recipe = write_recipe(work, device=args.device)
        t0 = time.perf_counter()
        run_to_end(teach(load_recipe(recipe), teach_dir, self_tune=False))   # the recipe as written
        logger.info("taught on %d shots in %.0f s", args.shots, time.perf_counter() - t0)
        files = image_files(args.data_root, "test")[: args.images]
        export_s = export_model(recipe, files[0]) if args.onnx else None
        rows = review_rows(args)
        base = rows[0]
        # Untimed: one small review per row first, so that no row pays the process's first model load,
        # allocator growth or thread-pool start (the first timed run was 3-4x slower than the others).
        warm = work / "warm-up"
        warm.mkdir()
        for path in files[:2]:
            shutil.copy(path, warm / path.name)
        for k, row in enumerate(rows):
            run_row(row, warm, work / f"warm-up_{k}", recipe, args.device)
        timings: dict[str, list[float]] = {row.label: [] for row in rows}
        models: dict[str, str] = {}
        mismatches: list[str] = []
        for c, start in enumerate(range(0, len(files), args.chunk)):
            folder = work / f"images_{c:02d}"
            folder.mkdir()
            for path in files[start : start + args.chunk]:
                shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
            order = rows[c % len(rows):] + rows[: c % len(rows)]
            outs = {}
            for k, row in enumerate(order):
                out = work / f"review_{c:02d}_{k}"
                seconds, models[row.label] = run_row(row, folder, out, recipe, args.device)
                timings[row.label].append(seconds)
                load.append(os.getloadavg())
                outs[row.label] = scores(out)
                logger.info("folder %d (%d images) %s: %.1f s (load %.1f)", c, len(outs[row.label]), row.label,
                            seconds, load[-1][0])
            for row in rows[1:]:
                tolerance = SCORE_ATOL if row.runtime == "onnx" else 1e-4
                for name, (verdict, score) in outs[base.label].items():
                    v2, s2 = outs[row.label][name]
                    if verdict != v2 or abs(score - s2) > tolerance:
                        mismatches.append(f"{name} {row.label}: {verdict} {score:.5f} vs {v2} {s2:.5f}")
        n = len(files)
        total = {row.label: sum(timings[row.label]) for row in rows}
        result = {"env": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "device": args.device,
                          "versions": versions(), "command": "python -m benchmarks.review_speed "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
                          "load_average_1_5_15": load},
                  "images": n, "chunk": args.chunk, "shots": args.shots, "baseline": base.label,
                  "rows": {row.label: {"runtime": row.runtime, "batch": row.batch, "workers": row.workers,
                                       "threads": row.threads or torch.get_num_threads(),
                                       "scored_by": models[row.label],
                                       "seconds": timings[row.label], "images_per_s": n / total[row.label],
                                       "speedup": total[base.label] / total[row.label]} for row in rows},
                  "mismatches": mismatches}
        if args.onnx:
            result.update(onnx_export_s=export_s, onnx_score_atol=SCORE_ATOL)
        print(f"\nreview of {n} images ({args.chunk} per folder, whole review() runs, interleaved, "
              f"{torch.get_num_threads()} torch threads, load average {load[0][0]:.1f} at the start, "
              f"{max(x[0] for x in load):.1f} at most):")
        for row in rows:
            print(f"  {row.label}: {total[row.label]:.1f} s ({n / total[row.label]:.3f} img/s), "
                  f"{total[base.label] / total[row.label]:.2f}x")
        print(f"verdict/score mismatches vs {base.label}: {len(mismatches)}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
            print(f"wrote {args.json}")
        return 1 if mismatches else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
