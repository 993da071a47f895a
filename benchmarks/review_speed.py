"""Batch review: images scored in batches with a decode thread vs one image at a time (issue 17).

Teaches a recipe with the product's defaults (448 px, block 8, the default detector options) on
``--shots`` good frames of an MVTec-layout category, then reviews ``--images`` test images split
into folders of ``--chunk`` images. Each folder is reviewed twice, once with
``review(..., batch_size=1)`` (one model call per image: the path before batching) and once with
``batch_size=--batch`` (``Station.inspect_images``; files decoded on a separate thread), and with
``--onnx`` a third time, batched, scored by onnxruntime from the version's exported ``model.onnx``
(``runtime="onnx"``; exported once after teaching, its export time reported apart), the order
rotating from folder to folder so that load drift on a shared machine hits both alike. Every
call is a whole ``inspector.review.review`` run: loading the model, decoding, scoring, thumbnails,
overlays, the journal and the HTML report. Verdicts and scores of every run are compared with the
one-at-a-time torch run (ONNX: within the export self-check tolerance ``models.export.SCORE_ATOL``, identical verdicts).

Usage (repository root):
    python -m benchmarks.review_speed --data-root ../shared/data/visa_fryum --images 24 \\
        --json benchmarks/results/review_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.speed import cpu_model, image_files, versions
from inspector.recipe import load_recipe
from inspector.review import REVIEW_BATCH, review
from inspector.station import Station
from inspector.teach import run_to_end, teach
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
    import cv2

    t0 = time.perf_counter()
    station = Station.load(load_recipe(recipe), device="cpu")
    frame = cv2.cvtColor(cv2.imread(str(sample)), cv2.COLOR_BGR2RGB)
    detector = station.detector
    hw = input_size(*frame.shape[:2], shorter_side=detector.config.shorter_side,
                    patch_size=detector.backbone.patch_size)
    assert station.version is not None
    report = export_onnx(detector, station.version.path / "model.onnx", input_hw=hw, verify_images=[frame],
                         weights=station.weights)
    for line in report.summary_lines():
        logger.info("%s", line)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--chunk", type=int, default=8, help="images per reviewed folder (one pair of runs each)")
    p.add_argument("--batch", type=int, default=REVIEW_BATCH)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--onnx", action="store_true", help="add a batched row scored by onnxruntime (model.onnx)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("models", "inspector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="review-speed-"))
    try:
        teach_dir = work / "teach"
        teach_dir.mkdir()
        for path in image_files(args.data_root, "train")[: args.shots]:
            shutil.copy(path, teach_dir / path.name)
        recipe = write_recipe(work, device=args.device)
        t0 = time.perf_counter()
        run_to_end(teach(load_recipe(recipe), teach_dir))
        logger.info("taught on %d shots in %.0f s", args.shots, time.perf_counter() - t0)
        files = image_files(args.data_root, "test")[: args.images]
        export_s = export_model(recipe, files[0]) if args.onnx else None
        rows = [("torch", 1), ("torch", args.batch)] + ([("onnx", args.batch)] if args.onnx else [])
        timings: dict[tuple[str, int], list[float]] = {row: [] for row in rows}
        mismatches: list[str] = []
        for c, start in enumerate(range(0, len(files), args.chunk)):
            folder = work / f"images_{c:02d}"
            folder.mkdir()
            for path in files[start : start + args.chunk]:
                shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
            order = rows[c % len(rows):] + rows[: c % len(rows)]
            outs = {}
            for runtime, b in order:
                out = work / f"review_{c:02d}_{runtime}_b{b}"
                t0 = time.perf_counter()
                run_to_end(review(folder, out, recipe=recipe, device=args.device, batch_size=b, runtime=runtime))
                timings[runtime, b].append(time.perf_counter() - t0)
                outs[runtime, b] = scores(out)
                logger.info("folder %d (%d images) %s batch %d: %.1f s", c, len(outs[runtime, b]), runtime, b,
                            timings[runtime, b][-1])
            for row in rows[1:]:
                tolerance = SCORE_ATOL if row[0] == "onnx" else 1e-4
                for name, (verdict, score) in outs["torch", 1].items():
                    v2, s2 = outs[row][name]
                    if verdict != v2 or abs(score - s2) > tolerance:
                        mismatches.append(f"{name} {row}: {verdict} {score:.5f} vs {v2} {s2:.5f}")
        one, many = sum(timings["torch", 1]), sum(timings["torch", args.batch])
        n = len(files)
        result = {"env": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "device": args.device,
                          "versions": versions(), "command": "python -m benchmarks.review_speed "
                          + " ".join(argv if argv is not None else __import__("sys").argv[1:])},
                  "images": n, "chunk": args.chunk, "batch": args.batch,
                  "one_at_a_time_s": timings["torch", 1], "batched_s": timings["torch", args.batch],
                  "one_at_a_time_images_per_s": n / one, "batched_images_per_s": n / many,
                  "speedup": one / many, "mismatches": mismatches}
        if args.onnx:
            onnx = sum(timings["onnx", args.batch])
            result.update(onnx_batched_s=timings["onnx", args.batch], onnx_images_per_s=n / onnx,
                          onnx_speedup=one / onnx, onnx_export_s=export_s, onnx_score_atol=SCORE_ATOL)
        print(f"\nreview of {n} images ({args.chunk} per folder, whole review() runs, interleaved): one at a time "
              f"{one:.1f} s ({n / one:.3f} img/s), batch {args.batch} + decode thread {many:.1f} s "
              f"({n / many:.3f} img/s): {one / many:.2f}x; verdict/score mismatches: {len(mismatches)}")
        if args.onnx:
            print(f"onnxruntime batch {args.batch}: {onnx:.1f} s ({n / onnx:.3f} img/s): {one / onnx:.2f}x the "
                  f"one-at-a-time torch path (export once: {export_s:.0f} s, not counted)")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
            print(f"wrote {args.json}")
        return 1 if mismatches else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
