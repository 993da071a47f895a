"""Zero-shot mode of ``inspector.review``: the folder's images scored against each other (MuSc, no recipe).

The batch is scored once (``models.detectors.zero_shot``) and its scores are kept in the report folder
(``SCORES_NAME``), so that an interrupted review, or one written again at other thresholds, renders from
them without scoring again: each journal record keeps the thresholds it was written at. The thresholds
are the batch's own rule (``robust_thresholds``: it assumes most images are good) or the reviewer's.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import math
import time
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cv2
import numpy as np

from inspector._jobs import relay_progress
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
    region_dict,
    relative_name,
    write_images,
)
from inspector.capture import load_image
from inspector.errors import FrameDecodeError, InspectorError
from inspector.results import DefectRegion, Progress, Verdict, verdict_for
from inspector.review import (
    EXTRACT_BATCH,
    SCORES_NAME,
    ZERO_SHOT_K_FAIL,
    ZERO_SHOT_K_REVIEW,
    ZERO_SHOT_MIN_AREA_PX,
)
from models.files import atomic_write

if TYPE_CHECKING:
    from models.detectors.zero_shot import ZeroShotConfig

__all__ = ["good_candidates", "review_zero_shot"]

logger = logging.getLogger(__name__)

ZERO_SHOT_NOTE: Final = (
    "Zero-shot mode: no recipe and no good reference images. Each image was scored against the others of this "
    "folder, and flagged by how far its score lies above the batch's median. It assumes most images are good: "
    "in a folder of mostly defective parts it flags few of them. Then set the thresholds from the score "
    "histogram (the REVIEW,FAIL box of the app's batch review, or inspector review --zero-shot --thresholds "
    "REVIEW,FAIL: the kept scores are used, nothing is scored again), or teach a recipe.")
ZERO_SHOT_NOTE_BY_HAND: Final = (
    "Zero-shot mode: no recipe and no good reference images. Each image was scored against the others of this "
    "folder; the REVIEW and FAIL thresholds were set by the reviewer, not by the batch's rule (named above, "
    "with the thresholds it would have set).")

def review_zero_shot(
    folder: Path, out: Path, files: list[Path], *, device: str | None, weights: str | Path | None,
    config: ZeroShotConfig | None, thresholds: tuple[float, float] | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    from inspector.recipe import DetectorSettings
    from models.backbone import create_backbone
    from models.detectors.zero_shot import ZeroShotConfig, ZeroShotScorer, patch_scores_to_map, robust_thresholds
    from models.weights import resolve_weights

    settings = DetectorSettings()          # what a fresh recipe uses: the measured defaults
    config = config if config is not None else ZeroShotConfig()
    header = {"journal": JOURNAL_VERSION, "mode": "zero-shot", "folder": str(folder.resolve()),
              "backbone": settings.backbone, "blocks": list(settings.blocks), "config": config.to_dict()}
    journal = Journal(out / JOURNAL_NAME, header)
    model = (f"zero-shot mutual scoring (no recipe) on {settings.backbone} block(s) "
             f"{', '.join(map(str, settings.blocks))}, shorter side {config.shorter_side} px")
    rate = ReviewRate()
    run_start = time.perf_counter()
    done_before = {rel for rel in (relative_name(p, folder) for p in files) if rel in journal.records}

    saved = _load_scores(out / SCORES_NAME)
    if saved is not None:
        known = set(saved["files"]) | {rel for rel, r in journal.records.items() if r["status"] != "ok"}
        added = [p for p in files if relative_name(p, folder) not in known]
        if added:
            # Scores are relative to the batch: new images change everyone's, so the batch is scored again.
            logger.info("review: %d image(s) were added since the batch was scored; scoring it again", len(added))
            saved = None
    fresh = saved is None              # scored now: every image's record is (re)written
    if saved is None:
        try:
            resolved = resolve_weights(settings.backbone, weights)
        except FileNotFoundError as exc:
            from inspector.errors import WeightsNotFound

            raise WeightsNotFound(str(exc), tried=tuple(getattr(exc, "tried", ()))) from exc
        yield Progress(done=0, total=len(files), message="loading the DINOv2 backbone")
        backbone = create_backbone(settings.backbone, state_dict=resolved.state_dict, blocks=tuple(settings.blocks),
                                   device=device or settings.device)
        scorer = ZeroShotScorer(backbone=backbone, config=config)
        readable: list[str] = []
        shapes: list[tuple[int, int]] = []
        pending: list[np.ndarray] = []
        for i, path in enumerate(files):
            rel = relative_name(path, folder)
            try:
                image = load_image(path)
            except FrameDecodeError as exc:
                if rel not in journal.records:
                    reason = error_reason(exc, path, rel)
                    logger.warning("review: %s: %s", rel, reason)
                    journal.append({"file": rel, "status": "error", "error": reason})
            else:
                readable.append(rel)
                shapes.append((int(image.shape[0]), int(image.shape[1])))
                pending.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            if len(pending) >= EXTRACT_BATCH or (i == len(files) - 1 and pending):
                scorer.add(pending)
                pending = []
            rate.tick()
            yield Progress(done=i + 1, total=len(files),
                           message=f"features {rel}  {rate.text(len(files) - i - 1)}".strip())
        if len(readable) < 2:
            msg = (f"{folder}: zero-shot review compares the images with each other and needs 2 or more "
                   f"readable images, found {len(readable)}")
            raise InspectorError(msg)
        scores = yield from relay_progress(lambda progress: scorer.score(progress=progress),
                                           message="mutual scoring", name="inspector-zero-shot",
                                           cancelled=lambda: InspectorError("zero-shot scoring was cancelled"))
        saved = {"files": readable, "shapes": shapes, "pred_score": scores.pred_score,
                 "patch_scores": scores.patch_scores, "patch_size": backbone.patch_size,
                 "brightness_active": scorer.brightness_active}
        _save_scores(out / SCORES_NAME, saved)
        rate = ReviewRate()
    model += _brightness_words(saved.get("brightness_active"), config.brightness)
    review_t, fail_t, rule = robust_thresholds(saved["pred_score"], k_review=ZERO_SHOT_K_REVIEW,
                                               k_fail=ZERO_SHOT_K_FAIL)
    by_hand = thresholds is not None
    if thresholds is not None:
        rule = (f"zero-shot, no recipe: thresholds set by the reviewer, REVIEW at {thresholds[0]:.4g}, FAIL at "
                f"{thresholds[1]:.4g} (the batch's own rule would set {review_t:.4f} and {fail_t:.4f}: "
                f"{rule.removeprefix('zero-shot, no recipe: ')})")
        review_t, fail_t = float(thresholds[0]), float(thresholds[1])
    # Patch scores and image scores share one scale (the image score is a similarity-weighted mean of
    # images' top patch scores), so a pixel reaching the review threshold marks a defect region.
    levels = (review_t, fail_t, review_t)
    rule += f"; defect regions where the map is >= the review threshold, at least {ZERO_SHOT_MIN_AREA_PX} px"

    def _overall_rate() -> float:
        # Features and mutual scoring count for every image; a resumed run only renders the rest.
        n = len(saved["files"]) if fresh else rate.done
        return n / max(time.perf_counter() - run_start, 1e-9)

    def meta(complete: bool) -> ReportMeta:
        return ReportMeta(title=f"Zero-shot review of {folder.name}", mode="zero-shot", source=str(folder),
                          model=model, thresholds=levels, rule=rule, total_files=len(files), complete=complete,
                          generated=now_text(), images_per_second=_overall_rate() or None,
                          notes=(ZERO_SHOT_NOTE_BY_HAND if by_hand else ZERO_SHOT_NOTE,))

    index = {rel: i for i, rel in enumerate(saved["files"])}
    last_report = time.perf_counter()
    # a record made at other thresholds (the reviewer's, or the rule's) is written again from the kept scores
    todo = [rel for rel in saved["files"] if fresh or journal.records.get(rel, {}).get("status") != "ok"
            or journal.records[rel].get("thresholds") != [review_t, fail_t]]
    resumed = len(done_before - set(todo))      # kept as an earlier run wrote them
    by_rel = {relative_name(p, folder): p for p in files}
    for i, rel in enumerate(todo):
        file = by_rel.get(rel)
        k = index[rel]
        try:
            if file is None:
                msg = "the file disappeared after the batch was scored"
                raise FrameDecodeError(msg)
            image = load_image(file)
            if image.shape[:2] != tuple(saved["shapes"][k]):
                msg = (f"its size changed after the batch was scored ({tuple(saved['shapes'][k])} then, "
                       f"{image.shape[:2]} now); delete {out} and review again")
                raise FrameDecodeError(msg)
        except FrameDecodeError as exc:
            journal.append({"file": rel, "status": "error", "error": error_reason(exc, file or Path(rel), rel)})
        else:
            journal.append(_zero_shot_record(out, rel, image, saved, k, levels, config,
                                             patch_scores_to_map))
        rate.tick()
        yield Progress(done=i + 1, total=len(todo), message=f"report {rel}  {rate.text(len(todo) - i - 1)}".strip())
        if time.perf_counter() - last_report >= REPORT_EVERY_S:
            write_report(out, ordered_records(folder, files, journal), meta(False))
            last_report = time.perf_counter()
    scored = len(saved["files"]) if fresh else len(todo)
    return finish_review(folder, out, files, journal, meta(True), resumed=resumed, scored=scored, mode="zero-shot")


def _zero_shot_record(
    out: Path, rel: str, image: np.ndarray, saved: Mapping[str, Any], k: int,
    thresholds: tuple[float, float, float], config: Any, to_map: Any,
) -> dict[str, Any]:
    from models.regions import find_regions

    review_t, fail_t, pixel = thresholds
    score = float(saved["pred_score"][k])
    verdict = verdict_for(score, review_t, fail_t)
    anomaly_map = to_map(saved["patch_scores"][k], image.shape[:2], shorter_side=config.shorter_side,
                         patch_size=int(saved["patch_size"]), blur_sigma=config.blur_sigma)
    regions: tuple[DefectRegion, ...] = ()
    if verdict is not Verdict.PASS:
        regions = tuple(
            DefectRegion(x=r.x, y=r.y, width=r.width, height=r.height, area_px=r.area_px, area_mm2=r.area_mm2,
                         max_score=r.max_score, mean_score=r.mean_score)
            for r in find_regions(anomaly_map, pixel_threshold=pixel, min_area_px=ZERO_SHOT_MIN_AREA_PX))
    thumb, overlay = write_images(out, rel, image, anomaly_map, regions, verdict, thresholds)
    return {"file": rel, "status": "ok", "verdict": verdict.value, "score": score,
            "regions": [region_dict(r) for r in regions], "width": int(image.shape[1]),
            "height": int(image.shape[0]), "thumb": thumb, "overlay": overlay, "thresholds": [review_t, fail_t]}


def _brightness_words(active: bool | None, mode: str) -> str:
    """What the report's model line says of the frames' brightness (``ZeroShotConfig.brightness``)."""
    if active is None:
        return ""
    why = {"auto": " (auto: the scene fills the frame)" if active else " (auto: a part on a plain background)"}
    return f"; {'each frame brightness-standardised' if active else 'frames as they are'}{why.get(mode, '')}"


def _save_scores(path: Path, saved: Mapping[str, Any]) -> None:
    """The batch's scores as plain arrays (no pickle), atomically."""
    grids = saved["patch_scores"]
    buffer = io.BytesIO()
    np.savez(buffer, files=np.asarray(saved["files"], dtype=str),
             shapes=np.asarray(saved["shapes"], dtype=np.int64).reshape(-1, 2),
             pred_score=np.asarray(saved["pred_score"], dtype=np.float32),
             grids=np.asarray([g.shape for g in grids], dtype=np.int64).reshape(-1, 2),
             flat=np.concatenate([g.reshape(-1) for g in grids]).astype(np.float32),
             patch_size=np.int64(saved["patch_size"]),
             brightness_active=np.int8(-1 if saved.get("brightness_active") is None else saved["brightness_active"]))
    atomic_write(path, buffer.getvalue())


def _load_scores(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            grids = [tuple(int(v) for v in g) for g in data["grids"]]
            flat = data["flat"]
            patch_scores = list(_split(flat, grids))
            return {"files": [str(f) for f in data["files"]],
                    "shapes": [tuple(int(v) for v in s) for s in data["shapes"]],
                    "pred_score": data["pred_score"].astype(np.float32), "patch_scores": patch_scores,
                    "patch_size": int(data["patch_size"]),
                    # scores saved before the option: frames as they were (-1: not known)
                    "brightness_active": bool(data["brightness_active"]) if "brightness_active" in data.files
                    and int(data["brightness_active"]) >= 0 else None}
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("%s: unreadable (%s); the batch is scored again", path, exc)
        return None


def _split(flat: np.ndarray, grids: list[tuple[int, ...]]) -> Iterator[np.ndarray]:
    start = 0
    for h, w in grids:
        yield flat[start : start + h * w].reshape(h, w)
        start += h * w


def good_candidates(out: Path, count: int) -> list[tuple[Path, float]]:
    """The ``count`` lowest-scoring PASS images of the zero-shot review in ``out``: (file, score), lowest first.

    A first good set for teaching a recipe from a folder nobody labelled (``inspector train
    --good-from-review``): in the half-defective 60-image lots of the three dev sets the 8 lowest-scoring
    images were all good, and 1-2 of the 16 lowest were defective (``benchmarks/results/
    issue11_zero_shot_batches.json``); in a mostly defective lot most of them are not.

    Raises:
        InspectorError: ``out`` holds no review, a recipe review, or no PASS image; a chosen file is gone.
    """
    journal = out / JOURNAL_NAME
    if not journal.is_file():
        msg = f"{out}: not a review folder (no {JOURNAL_NAME}); run inspector review FOLDER --zero-shot --out {out}"
        raise InspectorError(msg)
    with journal.open(encoding="utf-8") as fh:       # line by line: a big review's journal is tens of MB
        try:
            header = json.loads(fh.readline())
        except json.JSONDecodeError as exc:
            msg = f"{journal}: not a review journal"
            raise InspectorError(msg) from exc
        if header.get("mode") != "zero-shot":
            msg = (f"{out}: a {header.get('mode', 'unknown')} review, not a zero-shot one; its PASS images passed "
                   f"a recipe already: teach from its folder with --good")
            raise InspectorError(msg)
        last: dict[str, float | None] = {}     # file -> its score when its last record is a PASS, else None
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:       # a cut-off last line of an interrupted run
                continue
            score = record.get("score")
            ok = (record.get("status") == "ok" and record.get("verdict") == Verdict.PASS.value
                  and score is not None and math.isfinite(float(score)))
            last[record["file"]] = float(score) if ok else None    # the last record of a file wins
    passed = heapq.nsmallest(count, ((score, rel) for rel, score in last.items() if score is not None))
    if not passed:
        msg = f"{out}: the zero-shot review passed no image: nothing to teach from"
        raise InspectorError(msg)
    folder = Path(header["folder"])
    chosen = [(folder / rel, score) for score, rel in passed]
    gone = [str(path) for path, _ in chosen if not path.is_file()]
    if gone:
        msg = f"{out}: reviewed images are gone since the review: {', '.join(gone[:3])}"
        raise InspectorError(msg)
    return chosen
