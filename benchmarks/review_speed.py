"""Batch review: images scored in batches with a decode thread vs one image at a time (issue 17).

Teaches a recipe with the product's defaults (448 px, block 8, the default detector options) on
``--shots`` good frames of an MVTec-layout category, then reviews ``--images`` test images split
into folders of ``--chunk`` images. Each folder is reviewed twice, once with
``review(..., batch_size=1)`` (one model call per image: the path before batching) and once with
``batch_size=--batch`` (``Station.inspect_images``; files decoded on a separate thread), the order
alternating from folder to folder so that load drift on a shared machine hits both alike. Every
call is a whole ``inspector.review.review`` run: loading the model, decoding, scoring, thumbnails,
overlays, the journal and the HTML report. Verdicts and scores of both runs are compared.

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
from inspector.teach import run_to_end, teach

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--chunk", type=int, default=8, help="images per reviewed folder (one pair of runs each)")
    p.add_argument("--batch", type=int, default=REVIEW_BATCH)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
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
        timings: dict[int, list[float]] = {1: [], args.batch: []}
        mismatches: list[str] = []
        for c, start in enumerate(range(0, len(files), args.chunk)):
            folder = work / f"images_{c:02d}"
            folder.mkdir()
            for path in files[start : start + args.chunk]:
                shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
            order = (1, args.batch) if c % 2 == 0 else (args.batch, 1)
            outs = {}
            for b in order:
                out = work / f"review_{c:02d}_b{b}"
                t0 = time.perf_counter()
                run_to_end(review(folder, out, recipe=recipe, device=args.device, batch_size=b))
                timings[b].append(time.perf_counter() - t0)
                outs[b] = scores(out)
                logger.info("folder %d (%d images) batch %d: %.1f s", c, len(outs[b]), b, timings[b][-1])
            for name, (verdict, score) in outs[1].items():
                v2, s2 = outs[args.batch][name]
                if verdict != v2 or abs(score - s2) > 1e-4:
                    mismatches.append(f"{name}: {verdict} {score:.5f} vs {v2} {s2:.5f}")
        one, many = sum(timings[1]), sum(timings[args.batch])
        n = len(files)
        result = {"env": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "device": args.device,
                          "versions": versions(), "command": "python -m benchmarks.review_speed "
                          + " ".join(argv if argv is not None else __import__("sys").argv[1:])},
                  "images": n, "chunk": args.chunk, "batch": args.batch,
                  "one_at_a_time_s": timings[1], "batched_s": timings[args.batch],
                  "one_at_a_time_images_per_s": n / one, "batched_images_per_s": n / many,
                  "speedup": one / many, "mismatches": mismatches}
        print(f"\nreview of {n} images ({args.chunk} per folder, whole review() runs, interleaved): one at a time "
              f"{one:.1f} s ({n / one:.3f} img/s), batch {args.batch} + decode thread {many:.1f} s "
              f"({n / many:.3f} img/s): {one / many:.2f}x; verdict/score mismatches: {len(mismatches)}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
            print(f"wrote {args.json}")
        return 1 if mismatches else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
