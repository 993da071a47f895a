"""A batch review's records: the journal that makes it resumable, each file's record and images.

``progress.jsonl`` (`Journal`) holds a header line saying what the review was made with, then one
record per finished file (flushed and synced); `write_images` renders the thumbnail and overlay a
record points to, and `finish_review` writes the final report from the records. Both review modes of
`inspector.review` and the Ray review (`inspector.ray_review`) write the same records this way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np

from inspector._report import ReportMeta, write_report
from inspector.errors import InspectorError
from inspector.overlay import render_overlay, thumbnail
from inspector.paths import safe_name
from inspector.results import DefectRegion, Verdict, VerdictCounts
from models.files import atomic_write

__all__ = [
    "JOURNAL_NAME",
    "prepare_output",
    "JOURNAL_VERSION",
    "REPORT_EVERY_S",
    "Journal",
    "ReviewRate",
    "error_reason",
    "finish_review",
    "now_text",
    "ordered_records",
    "records_in_order",
    "region_dict",
    "relative_name",
    "write_images",
    "write_jpeg",
]

logger = logging.getLogger("inspector.review")   # the review's one log, as before these helpers moved here

JOURNAL_NAME: Final = "progress.jsonl"
JOURNAL_VERSION: Final = 1
REPORT_EVERY_S: Final = 30.0       # periodic report while running; a report costs ~10 ms per 100 images
THUMB_SIDE: Final = 160            # longer side of a thumbnail, px
THUMB_QUALITY: Final = 80          # JPEG quality of thumbnails
OVERLAY_QUALITY: Final = 90        # JPEG quality of full-size overlays


class Journal:
    """``progress.jsonl``: a header line, then one record per finished file (the last record of a file wins).

    ``records`` maps each finished file to its record: a dict in memory, or with ``on_disk`` an SQLite
    index beside the journal (`RecordIndex`), so that a review of a million images does not hold a
    million records (the Ray driver). The journal file stays the one truth; the index is rebuilt from
    it on every start and removed by `close`.
    """

    def __init__(self, path: Path, header: dict[str, Any], *, on_disk: bool = False) -> None:
        self.path = path
        self.records: MutableMapping[str, dict[str, Any]] = (
            RecordIndex(path.with_name(f".{path.stem}-index.sqlite")) if on_disk else {})
        try:
            if path.is_file() and path.stat().st_size > 0:
                self._read(header)
            else:
                self._write_line(header, mode="w")
        except BaseException:
            self.close()
            raise

    def _read(self, header: dict[str, Any]) -> None:
        with self.path.open("rb") as fh:           # line by line: a million-image journal is not read at once
            first = fh.readline()
            try:
                old = json.loads(first)
            except json.JSONDecodeError as exc:
                msg = f"{self.path}: not a review journal; delete it or choose another --out folder"
                raise InspectorError(msg) from exc
            if old != header:
                diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
                msg = (f"{self.path.parent}: holds a review made with other settings ({', '.join(diff)} differ: "
                       f"{ {k: old.get(k) for k in diff} } before, { {k: header.get(k) for k in diff} } now); "
                       f"choose another --out folder or delete that one to start afresh")
                raise InspectorError(msg)
            last = first
            with _bulk(self.records):
                for n, line in enumerate(fh, 2):
                    last = line
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        # A process killed mid-write leaves a cut-off last line: that file is done again.
                        logger.warning("%s: line %d is incomplete; its file is reviewed again", self.path, n)
                        continue
                    self.records[record["file"]] = record
        if not last.endswith(b"\n"):
            with self.path.open("a", encoding="utf-8") as fh:   # end the cut-off line
                fh.write("\n")

    def _write_line(self, data: Mapping[str, Any], *, mode: str = "a") -> None:
        with self.path.open(mode, encoding="utf-8") as fh:
            fh.write(json.dumps(data, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, record: dict[str, Any]) -> None:
        self._write_line(record)
        self.records[record["file"]] = record

    def close(self) -> None:
        """Remove the on-disk index, if any (the journal file stays)."""
        if isinstance(self.records, RecordIndex):
            self.records.close()


class RecordIndex(MutableMapping[str, dict[str, Any]]):
    """A review's records by file in an SQLite file: what the journal holds, without holding it in memory.

    A cache of the journal, never its only copy: not synced, rebuilt from the journal on each start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = OFF")
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute("CREATE TABLE records (file TEXT PRIMARY KEY, record TEXT NOT NULL)")

    def __getitem__(self, file: str) -> dict[str, Any]:
        row = self._conn.execute("SELECT record FROM records WHERE file = ?", (file,)).fetchone()
        if row is None:
            raise KeyError(file)
        record: dict[str, Any] = json.loads(row[0])
        return record

    def __setitem__(self, file: str, record: dict[str, Any]) -> None:
        self._conn.execute("INSERT OR REPLACE INTO records (file, record) VALUES (?, ?)",
                           (file, json.dumps(record, allow_nan=False)))

    def __delitem__(self, file: str) -> None:
        if self._conn.execute("DELETE FROM records WHERE file = ?", (file,)).rowcount == 0:
            raise KeyError(file)

    def __contains__(self, file: object) -> bool:
        return self._conn.execute("SELECT 1 FROM records WHERE file = ?", (file,)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        return (file for (file,) in self._conn.execute("SELECT file FROM records ORDER BY file"))

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM records").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
        self.path.unlink(missing_ok=True)


class _bulk:  # noqa: N801 (a context manager used like a function)
    """One transaction around many writes to a `RecordIndex` (nothing to do for a dict)."""

    def __init__(self, records: MutableMapping[str, dict[str, Any]]) -> None:
        self._conn = records._conn if isinstance(records, RecordIndex) else None

    def __enter__(self) -> None:
        if self._conn is not None:
            self._conn.execute("BEGIN")

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.execute("COMMIT")


def relative_name(path: Path, folder: Path) -> str:
    """A file's name in the journal and the report: its POSIX path relative to the reviewed folder."""
    return path.relative_to(folder).as_posix()


def error_reason(exc: BaseException, path: Path, rel: str) -> str:
    """The error's sentence with the absolute path replaced by the file's name relative to the folder."""
    text = str(exc).replace(str(path), rel)
    return text[len(rel) + 2:] if text.startswith(f"{rel}: ") else text


def region_dict(r: DefectRegion) -> dict[str, Any]:
    return {"x": int(r.x), "y": int(r.y), "width": int(r.width), "height": int(r.height), "area_px": int(r.area_px),
            "area_mm2": None if r.area_mm2 is None else float(r.area_mm2), "max_score": float(r.max_score),
            "mean_score": float(r.mean_score), "defect_class": r.defect_class,
            "predicted_class": r.predicted_class, "type_confidence": r.type_confidence}


def write_jpeg(path: Path, image_bgr: np.ndarray, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        msg = f"could not encode {path.name} as JPEG"
        raise OSError(msg)
    # rendered from the journal's record, so not synced (as before): a thumbnail is quick to write again
    atomic_write(path, data.tobytes(), fsync=False)


def write_images(
    out: Path, rel: str, image_bgr: np.ndarray, anomaly_map: np.ndarray, regions: tuple[DefectRegion, ...],
    verdict: Verdict, thresholds: tuple[float, float, float],
) -> tuple[str, str | None]:
    """Write the thumbnail (every image) and the full-size overlay (REVIEW/FAIL); returns their relative paths."""
    review_t, fail_t, pixel = thresholds
    vmin = 0.5 * pixel
    vmax = max(fail_t, pixel, vmin + 1e-6) * 1.5
    overlay = render_overlay(image_bgr, anomaly_map, vmin=vmin, vmax=vmax, regions=regions)
    name = safe_name(rel) + ".jpg"
    write_jpeg(out / "thumbs" / name, thumbnail(overlay, THUMB_SIDE), THUMB_QUALITY)
    if verdict in (Verdict.REVIEW, Verdict.FAIL):
        write_jpeg(out / "overlays" / name, overlay, OVERLAY_QUALITY)
        return f"thumbs/{name}", f"overlays/{name}"
    return f"thumbs/{name}", None


class ReviewRate:
    """Images per second and time left, from the images done in this run only (resumed ones excluded)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.done = 0

    def tick(self) -> None:
        self.done += 1

    def text(self, left: int) -> str:
        elapsed = time.perf_counter() - self.start
        if not self.done or elapsed <= 0:
            return ""
        rate = self.done / elapsed
        return f"{rate:.2f} img/s, ETA {left / rate:.0f} s"

    @property
    def per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if self.done and elapsed > 0 else 0.0


# ------------------------------------------------------------------------------------ review


def finish_review(
    folder: Path, out: Path, files: Sequence[Path] | Callable[[], Iterable[Path]], journal: Journal,
    meta: ReportMeta, *, resumed: int, scored: int, mode: str,
) -> dict[str, Any]:
    """Write the final report and return the fields of the `ReviewSummary` (``scored`` included).

    ``files`` is the folder's files in report order: a sequence, or a function that walks the folder
    afresh (`inspector.ray_review`, with a journal on disk: the report is then streamed, and no list of
    the folder's files or records is held).
    """
    walk = files if callable(files) else (lambda: files)
    records = records_in_order(folder, walk, journal)
    index = write_report(out, records, meta)
    count = sum(1 for _ in walk())
    errors: list[str] = []

    def verdicts() -> Iterator[Verdict | str]:
        for r in records():
            if r["status"] != "ok":
                errors.append(f"{r['file']}: {r['error']}")
                yield Verdict.ERROR
            else:
                yield r["verdict"]

    tally = VerdictCounts.from_verdicts(verdicts())
    counts = {v.value: tally.count(v) for v in Verdict}
    logger.info("review of %s: %s; report %s", folder, counts, index)
    return {"folder": folder, "out": out, "report": index, "mode": mode, "model": meta.model, "files": count,
            "counts": counts,
            "thresholds": meta.thresholds or (math.nan, math.nan, math.nan), "rule": meta.rule, "resumed": resumed,
            "scored": scored, "errors": tuple(errors)}


def ordered_records(folder: Path, files: Iterable[Path], journal: Journal) -> list[dict[str, Any]]:
    """Journal records in the folder's file order (files not done yet are left out)."""
    return [journal.records[rel] for rel in (relative_name(p, folder) for p in files) if rel in journal.records]


def records_in_order(folder: Path, files: Callable[[], Iterable[Path]],
                     journal: Journal) -> Callable[[], Iterator[dict[str, Any]]]:
    """`ordered_records` as a function that reads them afresh on each call (for a streamed report)."""

    def again() -> Iterator[dict[str, Any]]:
        for rel in (relative_name(p, folder) for p in files()):
            record = journal.records.get(rel)
            if record is not None:
                yield record

    return again


def now_text() -> str:
    """The local time now, ISO 8601 to the second: when a report was made."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def prepare_output(folder: Path, out: Path, n_files: int) -> None:
    """Refuse a folder with nothing to review; make the report's image folders (``thumbs/``, ``overlays/``).

    Raises:
        InspectorError: ``folder`` holds no image files.
    """
    if not n_files:
        msg = f"{folder}: holds no image files to review"
        raise InspectorError(msg)
    for sub in ("thumbs", "overlays"):
        (out / sub).mkdir(parents=True, exist_ok=True)
