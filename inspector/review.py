"""Offline batch review: score every image of a folder tree and write a browsable report.

Two modes:

- **recipe**: each image goes through a taught recipe's `Station` (ROI, detector, regions,
  verdict by the recipe's thresholds);
- **zero-shot**: no recipe and no training; the images are scored against each other
  (`models.detectors.zero_shot`: MuSc's mutual scoring at 448 px, three scales, re-scored by similar
  images), and flagged by a robust rule on the batch's own image scores (REVIEW above median + 3
  robust sigma, FAIL above median + 6), which the report states.

The report folder holds ``index.html`` (self-contained, opens from disk), ``results.csv``,
``defects.csv``, ``thumbs/`` (small heatmap overlays of every image) and ``overlays/`` (full-size
overlays of REVIEW and FAIL images). See `inspector._report`.

A review is resumable. Each finished image is appended to ``progress.jsonl`` (flushed and synced),
whose first line records what the review was made with; killed halfway, the same command skips the
images already in the journal and completes the report. In zero-shot mode the batch's scores are
also saved (``zero_shot_scores.npz``) once computed, so a restart does not score the batch again.
The report is rewritten atomically every `REPORT_EVERY_S` seconds and at the end.

Unreadable files never stop a review: each is listed in the report with its reason.

Example:
    >>> summary = run_to_end(review(Path("lot_0612"), Path("lot_0612-review"), recipe=Path("recipes/a.yaml")))
    >>> print("\\n".join(summary.summary_lines()))
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np

from inspector._report import ReportMeta, write_report
from inspector._review_records import (
    JOURNAL_NAME,
    JOURNAL_VERSION,
    REPORT_EVERY_S,
    Journal,
    ReviewRate,
    error_reason,
    finish_review,
    now_text,
    ordered_records,
    prepare_output,
    records_in_order,
    region_dict,
    relative_name,
    write_images,
)
from inspector._review_workers import WorkerPlan, plan_workers, score_concurrently
from inspector.capture import image_files, iter_image_files, load_image
from inspector.errors import FrameDecodeError, InspectorError, ModelError
from inspector.results import Progress

if TYPE_CHECKING:
    from inspector.recipe import Recipe
    from inspector.station import Station
    from models.detectors.zero_shot import ZeroShotConfig

__all__ = [
    "JOURNAL_NAME",
    "REPORT_EVERY_S",
    "ZERO_SHOT_K_FAIL",
    "ZERO_SHOT_K_REVIEW",
    "Journal",
    "ReviewRate",
    "ReviewSummary",
    "finish_review",
    "inspect_file",
    "ordered_records",
    "prepare_output",
    "recipe_journal_header",
    "recipe_report_meta",
    "records_in_order",
    "relative_name",
    "review",
]

logger = logging.getLogger(__name__)

SCORES_NAME: Final = "zero_shot_scores.npz"
REVIEW_BATCH: Final = 8            # images per model call in recipe mode (Station.inspect_images)
REVIEW_RUNTIMES: Final = ("torch", "onnx", "auto")  # what scores a recipe review (see `review`)
DECODE_AHEAD: Final = 16           # images decoded ahead of the model by the decode thread
ZERO_SHOT_K_REVIEW: Final = 3.0    # robust sigmas above the batch median for REVIEW (a 3-sigma outlier)
ZERO_SHOT_K_FAIL: Final = 6.0      # ... and for FAIL: far outside what the batch does
ZERO_SHOT_MIN_AREA_PX: Final = 25  # smallest zero-shot defect region, the recipe default `min_defect_area_px`
EXTRACT_BATCH: Final = 8           # images per backbone call in zero-shot mode


@dataclass(frozen=True, kw_only=True)
class ReviewSummary:
    """The outcome of a review, for the CLI and the GUI."""

    folder: Path                   # the reviewed folder
    out: Path                      # the report folder
    report: Path                   # its index.html
    mode: str                      # "recipe" or "zero-shot"
    model: str                     # what scored the images, in words
    files: int                     # image files found
    counts: dict[str, int]         # PASS / REVIEW / FAIL / ERROR over all files
    thresholds: tuple[float, float, float]   # (review, fail, pixel) used
    rule: str                      # how verdicts were decided
    resumed: int                   # files already done by an earlier, interrupted run
    seconds: float                 # wall time of this run
    images_per_second: float       # images scored in this run per second of it, all steps included
    errors: tuple[str, ...] = ()   # "file: reason" of the unreadable files
    skipped: tuple[str, ...] = ()  # "file: reason" of image files not reviewed (hidden, a link out of the folder)

    def summary_lines(self) -> list[str]:
        """A few lines for the CLI."""
        c = self.counts
        lines = [
            f"reviewed {self.files} file(s) of {self.folder} with {self.model}",
            f"PASS {c.get('PASS', 0)}, REVIEW {c.get('REVIEW', 0)}, FAIL {c.get('FAIL', 0)}, "
            f"unreadable {c.get('ERROR', 0)}",
            f"thresholds: review {self.thresholds[0]:.4f}, fail {self.thresholds[1]:.4f}, "
            f"pixel {self.thresholds[2]:.4f}",
            f"rule: {self.rule}",
        ]
        if self.resumed:
            lines.append(f"resumed: {self.resumed} file(s) were done by an earlier run")
        lines.append(f"{self.seconds:.1f} s, {self.images_per_second:.2f} images/s")
        lines.extend(f"unreadable: {e}" for e in self.errors)
        lines.extend(f"skipped: {e}" for e in self.skipped)
        lines.append(f"report: {self.report}")
        return lines


def _threshold_pair_ok(review_at: float, fail_at: float) -> bool:
    return math.isfinite(review_at) and math.isfinite(fail_at) and 0.0 <= review_at <= fail_at


def parse_thresholds(text: str) -> tuple[float, float]:
    """``"REVIEW,FAIL"`` -> the two scores of a reviewer's zero-shot thresholds.

    Raises:
        ValueError: not two finite numbers with 0 <= REVIEW <= FAIL (the message says what to give).
    """
    parts = text.split(",")
    try:
        review_at, fail_at = (float(v) for v in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        review_at = fail_at = math.nan
    if not _threshold_pair_ok(review_at, fail_at):
        msg = (f"invalid thresholds {text!r}: give two scores REVIEW,FAIL with 0 <= REVIEW <= FAIL, "
               "e.g. 0.085,0.12 (the scores of the report's histogram)")
        raise ValueError(msg)
    return review_at, fail_at


def review(
    folder: Path,
    out: Path,
    *,
    recipe: Path | None = None,
    zero_shot: bool = False,
    device: str | None = None,
    weights: str | Path | None = None,
    zero_shot_config: ZeroShotConfig | None = None,
    store: Any | None = None,
    batch_size: int | None = None,
    runtime: str | None = None,
    workers: int | None = None,
    zero_shot_thresholds: tuple[float, float] | None = None,
) -> Generator[Progress, None, ReviewSummary]:
    """Score every image under ``folder`` and write the report into ``out``.

    Args:
        folder: the folder of images (searched recursively, hidden files skipped).
        out: the report folder; created. A folder holding an interrupted review made with the same
            settings is continued; one made with other settings is refused.
        recipe: a taught recipe file (recipe mode); exactly one of ``recipe`` and ``zero_shot``.
        zero_shot: score the images against each other, without a recipe.
        device: ``auto | cpu | cuda``; default: the recipe's, ``auto`` in zero-shot mode.
        weights: DINOv2 weights file; default: the recipe's, else the resolution order of `models.weights`.
        zero_shot_config: options of zero-shot scoring (default ``ZeroShotConfig()``: MuSc at shorter side 448).
        store: an `inspector.store.Store` whose labelled regions type the defects (recipe mode);
            None leaves the report's types empty.
        batch_size: images per model call in recipe mode with one scoring thread (1 scores one image
            at a time); the files are decoded on a separate thread, ``DECODE_AHEAD`` images ahead of
            the model. None: ``REVIEW_BATCH`` when one thread scores. Given alone, it means one
            scoring thread (the batched path as asked).
        workers: scoring threads in recipe mode, each scoring whole images one at a time and writing
            their thumbnails and overlays (`inspector._review_workers`); records stay in the files'
            order. None: the rule of `plan_workers` (on the CPU one per torch thread of the
            process's budget, at most ``MAX_REVIEW_WORKERS``; on CUDA and with onnxruntime one, which
            batches). More than 1 cannot be combined with ``batch_size`` > 1.
        runtime: what scores in recipe mode: ``torch``, ``onnx`` (the version's ``model.onnx`` from
            `inspector export`, run by onnxruntime; an error when it is missing or stale), ``auto``
            (``onnx`` when that works, else torch, with the reason in the report's notes) or None:
            the recipe's ``detector.runtime``. The report names the runtime that scored.
        zero_shot_thresholds: ``(review, fail)`` set by the reviewer in zero-shot mode instead of the
            batch's own rule (``robust_thresholds``), e.g. after looking at the report's score
            histogram; the rule's thresholds are still named in the report. A folder reviewed before
            is written again with them from its kept scores, without scoring the batch again.

    Yields:
        Progress ticks, one per image (and per scored block in zero-shot mode), with rate and ETA in
        the message. Each is a place to cancel: closing the generator stops the review, and the
        same call later continues it.

    Returns:
        The `ReviewSummary`.

    Raises:
        InspectorError: no such folder, no images in it, both or neither mode, an ``out`` folder
            holding another review, or a recipe that cannot be loaded.
    """
    folder, out = Path(folder), Path(out)
    if (recipe is None) == (not zero_shot):
        msg = "review needs exactly one of a recipe (--recipe FILE) or --zero-shot"
        raise InspectorError(msg)
    if not folder.is_dir():
        msg = f"{folder}: not a folder of images to review"
        raise InspectorError(msg)
    if batch_size is not None and batch_size < 1:
        msg = f"review batch size must be >= 1, got {batch_size}"
        raise InspectorError(msg)
    if zero_shot and workers is not None:
        msg = "review workers (--workers) work with a recipe only: a zero-shot review scores the whole batch together"
        raise InspectorError(msg)
    if workers is not None and workers < 1:
        msg = f"review workers must be >= 1, got {workers}"
        raise InspectorError(msg)
    if workers is not None and workers > 1 and batch_size is not None and batch_size > 1:
        msg = (f"review with {workers} workers scores one image per thread; a batch size of {batch_size} "
               f"works with one worker only (leave one of them out)")
        raise InspectorError(msg)
    if zero_shot_thresholds is not None:
        if not zero_shot:
            msg = "review thresholds given by hand work in zero-shot mode only (a recipe has its calibrated ones)"
            raise InspectorError(msg)
        review_at, fail_at = (float(t) for t in zero_shot_thresholds)
        if not _threshold_pair_ok(review_at, fail_at):
            msg = (f"review thresholds must be finite numbers with 0 <= review <= fail, got review {review_at:g}, "
                   f"fail {fail_at:g}")
            raise InspectorError(msg)
    if runtime not in (None, *REVIEW_RUNTIMES):
        msg = f"review runtime must be one of {', '.join(REVIEW_RUNTIMES)}, got {runtime!r}"
        raise InspectorError(msg)
    out_abs = out.resolve()
    files, skipped = _reviewable(folder)
    files = [p for p in files if not p.resolve().is_relative_to(out_abs)]  # the report may sit inside
    for line in skipped:
        logger.warning("review of %s: skipped %s", folder, line)
    prepare_output(folder, out, len(files))
    start = time.perf_counter()
    if recipe is not None:
        summary = yield from _review_recipe(folder, out, files, Path(recipe), device=device, weights=weights,
                                              store=store, batch_size=batch_size, runtime=runtime,
                                              workers=workers)
    else:
        from inspector._review_zero_shot import review_zero_shot

        summary = yield from review_zero_shot(folder, out, files, device=device, weights=weights,
                                              config=zero_shot_config, thresholds=zero_shot_thresholds)
    seconds = time.perf_counter() - start
    scored = summary.pop("scored")
    return ReviewSummary(**summary, seconds=seconds, images_per_second=scored / seconds if seconds > 0 else 0.0,
                         skipped=tuple(skipped))


def _reviewable(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files to review, and "name: reason" for what is left out: hidden names (``.x.png``), hidden
    folders, links to folders, and links to files outside the folder (links are never followed)."""
    root = folder.resolve()
    files = [path for path in image_files(folder) if path.resolve().is_relative_to(root)]
    skipped: list[str] = []
    for _ in iter_image_files(folder, on_skipped=lambda path, why: skipped.append(f"{relative_name(path, folder)}: "
                                                                                   f"{why}")):
        pass                       # the walk that lists what it leaves out, as the review on Ray does
    return files, skipped


# ------------------------------------------------------------------------------------ recipe mode


def _review_recipe(
    folder: Path, out: Path, files: list[Path], recipe_path: Path, *, device: str | None,
    weights: str | Path | None, store: Any | None = None, batch_size: int | None = None,
    runtime: str | None = None, workers: int | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    from inspector.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    yield Progress(done=0, total=len(files), message=f"loading recipe {recipe.name}")
    station, scored_by = load_station(recipe, runtime=runtime, device=device, weights=weights)
    if store is not None:
        from inspector.defect_typing import DefectTyper, typer_config

        station.attach_typer(DefectTyper(store, recipe.name, config=typer_config(recipe)))
    thresholds = station.thresholds
    journal = Journal(out / JOURNAL_NAME, recipe_journal_header(
        folder, recipe, station.model_version, thresholds, runtime="onnx" if scored_by.startswith("onnx") else "torch",
        region_peak=station.region_peak))
    resumed = sum(1 for p in files if relative_name(p, folder) in journal.records)
    todo = [p for p in files if relative_name(p, folder) not in journal.records]
    if workers is None and batch_size is not None:
        plan = WorkerPlan(1, 0, f"one scoring thread: batch size {batch_size} was asked for")
    else:
        plan = plan_workers(workers, device=station.device, images=len(todo),
                            runtime="onnx" if scored_by.startswith("onnx") else "torch")
    logger.info("review of %s: %s", folder, plan.reason)
    model = f"recipe {recipe.name}, model {station.model_version} on {station.device}, scored by {scored_by}"
    if plan.workers > 1:
        model += f", {plan.workers} images at a time (one scoring thread each)"

    def meta(complete: bool, rate: ReviewRate) -> ReportMeta:
        return recipe_report_meta(folder, recipe, model=model, thresholds=thresholds, total_files=len(files),
                                  complete=complete, rate=rate, notes=tuple(station.warnings),
                                  region_peak=station.region_peak)

    rate = ReviewRate()
    last_report = time.perf_counter()
    decoded = _decode_ahead(todo, folder)
    if plan.workers > 1:
        records = score_concurrently(decoded, lambda d: (d.rel, _inspect_one(station, d, out, thresholds)),
                                     plan=plan)
    else:
        records = _batched(station, decoded, len(todo), out, thresholds, batch_size=batch_size or REVIEW_BATCH)
    try:
        for i, (rel, record) in enumerate(records, start=1):
            journal.append(record)    # in the files' order: the threads' results are put back in order
            rate.tick()
            yield Progress(done=resumed + i, total=len(files), message=f"{rel}  {rate.text(len(todo) - i)}".strip())
            if time.perf_counter() - last_report >= REPORT_EVERY_S:
                write_report(out, ordered_records(folder, files, journal), meta(False, rate))
                last_report = time.perf_counter()
    finally:
        records.close()   # a cancelled review: waits for the images being scored, drops the rest
        decoded.close()   # stops the decode thread
    return finish_review(folder, out, files, journal, meta(True, rate), resumed=resumed, scored=len(todo),
                         mode="recipe")


def _batched(
    station: Station, decoded: Iterator[_Decoded], count: int, out: Path, thresholds: tuple[float, float, float],
    *, batch_size: int,
) -> Generator[tuple[str, dict[str, Any]], None, None]:
    """(relative path, journal record) of each of the ``count`` decoded files, scored ``batch_size`` per call."""
    batch: list[_Decoded] = []
    for item in decoded:
        batch.append(item)
        if len(batch) < batch_size and item.position < count - 1:
            continue
        yield from _review_batch(station, batch, out, thresholds, batch_size=batch_size)
        batch = []


def load_station(
    recipe: Recipe, *, runtime: str | None, device: str | None, weights: str | Path | None,
) -> tuple[Station, str]:
    """The recipe's station scoring with ``runtime`` (see `review`), and that runtime in words.

    ``auto`` tries the exported ``model.onnx`` first; when onnxruntime is not installed, the file is
    missing, or it was exported from another model (bank size), it loads the torch model and the
    station's warnings (the report's notes) say why.
    """
    from inspector.station import Station

    def scoring_with(name: str) -> Recipe:
        return replace(recipe, detector=replace(recipe.detector, runtime=name))

    wanted = runtime or recipe.detector.runtime
    if wanted == "torch":
        return Station.load(scoring_with("torch"), device=device, weights=weights), "torch"
    try:
        station = Station.load(scoring_with("onnx"), device=device, weights=weights)
    except (ModelError, ImportError) as exc:
        if wanted == "onnx":
            raise
        station = Station.load(scoring_with("torch"), device=device, weights=weights)
        station.warnings.append(f"scored by torch: the ONNX model could not be used ({exc})")
        return station, "torch (ONNX fallback)"
    return station, "onnxruntime (model.onnx)"


def recipe_journal_header(
    folder: Path, recipe: Recipe, model_version: str, thresholds: tuple[float, float, float], *, runtime: str,
    region_peak: float | None,
) -> dict[str, Any]:
    """The first line of a recipe review's journal: a review continues only a journal with the same one.

    ``runtime`` (``torch`` or ``onnx``: what scores) is part of it: the two agree to about 1e-3 in score,
    so a report half from each could give one image two verdicts near a threshold. So is ``region_peak``
    (`Station.region_peak`): a recipe whose ``thresholds.region_peak`` changed draws other regions, and one
    report would hold two rules. A journal written before it was recorded is not continued either.
    """
    return {"journal": JOURNAL_VERSION, "mode": "recipe", "folder": str(folder.resolve()), "recipe": recipe.name,
            "model_version": model_version, "thresholds": list(thresholds), "runtime": runtime,
            "region_peak": region_peak}


def recipe_report_meta(
    folder: Path, recipe: Recipe, *, model: str, thresholds: tuple[float, float, float], total_files: int,
    complete: bool, rate: ReviewRate, notes: tuple[str, ...], region_peak: float | None = None,
) -> ReportMeta:
    """What a recipe review's report says about the run (``model``: what scored, in words; ``region_peak``: the
    station's `Station.region_peak`, the recipe's or else the model's; None for a model saved before it)."""
    rule = (f"the recipe's thresholds: FAIL at score >= {thresholds[1]:.4f}, REVIEW at >= {thresholds[0]:.4f}; "
            f"defect regions where the map is >= {thresholds[2]:.4f}, at least {recipe.min_defect_area_px} px")
    if region_peak:              # None (a model saved before it) or 0 (the recipe's): every region is drawn
        source = ("the recipe's" if recipe.thresholds.region_peak is not None
                  else "the highest value of the good images' maps when taught")
        rule += (f"; shown where a region's peak reaches {region_peak:.4f} ({source}), and each image's strongest "
                 "region")
    return ReportMeta(title=f"Review of {folder.name}", mode="recipe", source=str(folder), model=model,
                      thresholds=thresholds, rule=rule, total_files=total_files, complete=complete,
                      generated=now_text(), images_per_second=rate.per_second or None, notes=notes)


def inspect_files(station: Station, files: list[tuple[Path, str]], out: Path,
                  thresholds: tuple[float, float, float]) -> list[dict[str, Any]]:
    """`inspect_file` for several (path, relative name) pairs with one batched model call; records in order."""
    batch = [_decode(i, path, rel) for i, (path, rel) in enumerate(files)]
    return [record for _, record in _review_batch(station, batch, out, thresholds, batch_size=max(1, len(batch)))]


def inspect_file(station: Station, path: Path, rel: str, out: Path,
                 thresholds: tuple[float, float, float]) -> dict[str, Any]:
    """Score one file with the station, write its thumbnail (and overlay) into ``out``; its journal record.

    An unreadable file gives an ``"error"`` record with the reason, never an exception.
    """
    return _inspect_one(station, _decode(0, path, rel), out, thresholds)


class _Decoded(NamedTuple):
    """One file of the review, decoded (or not) by the decode thread."""

    position: int                   # in the list of files to do
    path: Path
    rel: str
    image: np.ndarray | None        # (H, W, 3) uint8 BGR; None when it could not be read
    error: Exception | None


_DONE: Final = object()


def _decode(position: int, path: Path, rel: str) -> _Decoded:
    try:
        return _Decoded(position, path, rel, load_image(path), None)
    except Exception as exc:  # handed to the consumer, which reports or re-raises it
        return _Decoded(position, path, rel, None, exc)


def _decode_ahead(files: list[Path], folder: Path) -> Generator[_Decoded, None, None]:
    """The files decoded on a thread of their own, up to ``DECODE_AHEAD`` ahead of the consumer,
    so the model never waits for JPEG decoding (OpenCV releases the GIL while it decodes).

    Closing the generator stops the thread.
    """
    ahead: queue.Queue[object] = queue.Queue(maxsize=DECODE_AHEAD)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        for index, path in enumerate(files):
            if not put(_decode(index, path, relative_name(path, folder))):
                return
        put(_DONE)

    thread = threading.Thread(target=work, name="review-decode", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not _DONE:
            assert isinstance(item, _Decoded)
            yield item
    finally:
        stop.set()
        thread.join(timeout=10.0)


def _review_batch(
    station: Station, batch: list[_Decoded], out: Path, thresholds: tuple[float, float, float], *, batch_size: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(relative path, journal record) of each decoded file, the readable ones scored in one batched call."""
    readable = [d for d in batch if d.image is not None]
    results: dict[int, Any] = {}
    if len(readable) > 1:
        try:
            scored = station.inspect_images([d.image for d in readable if d.image is not None],
                                            paths=[d.rel for d in readable], batch_size=batch_size)
            results = {d.position: r for d, r in zip(readable, scored, strict=True)}
        except (ValueError, RuntimeError) as exc:
            # One bad image fails its batch: score them one at a time so that only it is an error.
            logger.info("review: a batch of %d failed (%s); scoring its images one at a time", len(readable), exc)
    for d in batch:
        if d.error is not None and not isinstance(d.error, (FrameDecodeError, ValueError, RuntimeError, OSError)):
            raise d.error
        yield d.rel, _inspect_one(station, d, out, thresholds, results.get(d.position))


def _inspect_one(station: Station, decoded: _Decoded, out: Path, thresholds: tuple[float, float, float],
                 result: Any = None) -> dict[str, Any]:
    """The journal record of one file: its scored ``result`` (scored here when None) or its error."""
    path, rel, image = decoded.path, decoded.rel, decoded.image
    try:
        if decoded.error is not None:
            raise decoded.error
        assert image is not None
        if result is None:
            result = station.inspect_image(image, path=rel)
    except (FrameDecodeError, ValueError, RuntimeError, OSError) as exc:
        # One bad file never costs the others: it is reported with its reason and the review goes on.
        reason = error_reason(exc, path, rel)       # the file named once (a decode error names it too)
        logger.warning("review: %s: %s", rel, reason)
        return {"file": rel, "status": "error", "error": reason}
    score = float(result.score) if result.score is not None else math.nan
    thumb, overlay = write_images(out, rel, image, result.anomaly_map if result.anomaly_map is not None
                             else np.zeros(image.shape[:2], np.float32), result.regions, result.verdict, thresholds)
    return {"file": rel, "status": "ok", "verdict": result.verdict.value, "score": score,
            "regions": [region_dict(r) for r in result.regions], "width": int(image.shape[1]),
            "height": int(image.shape[0]), "thumb": thumb, "overlay": overlay}
