"""The statistics store: every inspection, its defect regions and reviewers' feedback, in SQL.

SQLAlchemy Core over SQLite by default (``<data dir>/inspector.db``, WAL journal, so several
processes can read and write one file), or any SQLAlchemy URL (``postgresql://...``); the SQL is
kept portable. All SQL is parameterised.

Writing never blocks the inspection worker: `Store.record` turns the result into plain rows and puts
them on a bounded queue; the store's writer thread inserts them in batches, one transaction per
batch, and only after the commit bumps `Store.recorded_count` and calls ``on_recorded``. So a count
that was reported is on disk: a killed process loses at most what was still queued.

When the queue is full (the database has been unwritable for a long time, ``max_pending`` results
behind), `record` does not wait: it drops the result, counts it in `Store.dropped_count`, logs a
warning and reports a `StoreError` through ``on_error``. A database error is retried with backoff
(and reported each time); a row the database refuses (a constraint) is set aside alone, counted in
`Store.failed_count` and reported, so one bad result never costs the others.

Example:
    >>> with Store(tmp_path / "stats.db") as store:                       # doctest: +SKIP
    ...     store.record(result, image_path="archive/2026-11-23/x.jpg")
    ...     store.flush()
    ...     store.yield_summary(group_by="hour")
    [YieldRow(key='2026-11-23 10:00', inspected=1, passed=1, review=0, failed=0, errors=0, yield_pct=100.0)]
"""

from __future__ import annotations

import atexit
import base64
import csv
import datetime as dt
import functools
import logging
import math
import os
import queue
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Self, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from inspector import paths
from inspector._csv import csv_cell
from inspector.errors import StoreError
from inspector.results import InspectionResult, Verdict, VerdictCounts

__all__ = [
    "FeedbackRecord",
    "GroupBy",
    "InspectionRecord",
    "RegionRecord",
    "SCHEMA_VERSION",
    "STORE_URL_ENV",
    "STORE_URL_FILE_ENV",
    "ScorePoint",
    "Store",
    "YieldRow",
    "configured_url",
    "inspection_conditions",
    "metadata",
    "result_rows",
]

logger = logging.getLogger(__name__)

GroupBy = Literal["recipe", "line", "station", "lot", "hour", "shift", "day"]
_NAME_KEYS: Final = ("recipe", "line", "station", "lot")
_TIME_KEYS: Final = ("hour", "shift", "day")

# Each change of the schema is a migration in inspector/migrations/versions (Alembic), which sets this version.
SCHEMA_VERSION: Final = 3            # 2: inspections.result_id (unique); 3: predicted defect types, embeddings
UNCLASSIFIED: Final = "unclassified"      # defects_by_class key for regions nobody has classified yet
# Time grouping is done on 15-minute buckets in SQL, then mapped to local hours/days/shifts in Python:
# every time zone in use today is a whole number of quarter hours from UTC, so a bucket never
# straddles a local hour, and shifts may start on any quarter hour.
_BUCKET_S: Final = 900
STORE_URL_ENV: Final = "INSPECTOR_STORE_URL"            # a plant's shared store, e.g. postgresql://...
STORE_URL_FILE_ENV: Final = "INSPECTOR_STORE_URL_FILE"  # ... or a file (mode 0600) holding that URL
_MAX_URL_FILE_BYTES: Final = 4096
_RETRY_MAX_DELAY_S: Final = 5.0           # backoff cap while the database refuses writes

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

metadata = sa.MetaData()

inspections = sa.Table(
    "inspections", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),          # capture time, seconds since the epoch
    sa.Column("recipe", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False, default=""),
    sa.Column("line", sa.Text, nullable=False, default=""),
    sa.Column("station", sa.Text, nullable=False, default=""),
    sa.Column("lot", sa.Text, nullable=False, default=""),
    sa.Column("source", sa.Text, nullable=False, default=""),
    sa.Column("frame_id", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text),                          # source file (file/replay sources)
    sa.Column("verdict", sa.String(8), nullable=False),  # Verdict value: PASS, REVIEW, FAIL, ERROR
    sa.Column("score", sa.Float),                        # None for ERROR
    sa.Column("latency_ms", sa.Float),                   # capture + preprocess + model + postprocess
    sa.Column("image_path", sa.Text),                    # archived frame, if any
    sa.Column("overlay_path", sa.Text),                  # archived heatmap overlay, if any
    sa.Column("error", sa.Text),                         # one sentence for ERROR
    sa.Column("result_id", sa.String(64)),               # unique per result: a journal replay stores it once
    sa.Index("ix_inspections_time", "time"),
    sa.Index("ux_inspections_result_id", "result_id", unique=True),
    sa.Index("ix_inspections_recipe_time", "recipe", "time"),
    sa.Index("ix_inspections_verdict", "verdict"),
)

regions = sa.Table(
    "regions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("inspection_id", sa.Integer, sa.ForeignKey("inspections.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("x", sa.Integer, nullable=False),
    sa.Column("y", sa.Integer, nullable=False),
    sa.Column("w", sa.Integer, nullable=False),
    sa.Column("h", sa.Integer, nullable=False),
    sa.Column("area_px", sa.Integer, nullable=False),
    sa.Column("area_mm2", sa.Float),
    sa.Column("max_score", sa.Float),
    sa.Column("mean_score", sa.Float),
    sa.Column("defect_class", sa.Text),                  # None until a reviewer classifies it
    sa.Column("classified_by", sa.Text),
    sa.Column("classified_at", sa.Float),
    # added later (upgraded in place): the few-shot typer's guess at inspection time, kept apart
    # from a reviewer's defect_class
    sa.Column("predicted_class", sa.Text),                # a labelled class, "unknown", or None (no typer)
    sa.Column("predicted_confidence", sa.Float),          # [0, 1]
    sa.Index("ix_regions_inspection", "inspection_id"),
    sa.Index("ix_regions_classified_at", "classified_at"),   # the defect typer's "labels since" query
)

# added later: each region's DINOv2 embedding ((D,) float32 bytes), so that labelling it teaches the typer
region_embeddings = sa.Table(
    "region_embeddings", metadata,
    sa.Column("region_id", sa.Integer, sa.ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("inspection_id", sa.Integer, sa.ForeignKey("inspections.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("label", sa.Text, nullable=False),         # "good" or a defect class of the recipe
    sa.Column("user", sa.Text, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Index("ix_feedback_inspection", "inspection_id"),
)

store_meta = sa.Table(
    "store_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class _bucket(FunctionElement[int]):
    """``floor(x)`` for x >= 0, portably: SQLite's ``floor`` needs its optional math extension."""

    type = sa.Integer()
    inherit_cache = True
    name = "bucket"


@compiles(_bucket)
def _bucket_default(element: _bucket, compiler: Any, **kw: Any) -> str:
    return f"FLOOR({compiler.process(element.clauses, **kw)})"


@compiles(_bucket, "sqlite")
def _bucket_sqlite(element: _bucket, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"   # truncation == floor for x >= 0


# --------------------------------------------------------------------------------------------------
# What queries return
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class YieldRow:
    """Counts of one group (``inspected`` includes ERROR rows); ``yield_pct``: `inspector.results.VerdictCounts`."""

    key: str                 # recipe/line/lot, or local time: "2026-11-23 14:00", "2026-11-23 06:00-14:00";
                             # with several group keys their values joined by " / "
    inspected: int
    passed: int
    review: int
    failed: int
    errors: int
    yield_pct: float
    keys: tuple[str, ...] = field(default=(), compare=False)   # each group key's value, in the order asked


class ScorePoint(NamedTuple):
    """One scored inspection, for the score-over-time chart."""

    time: float              # seconds since the epoch
    score: float
    verdict: Verdict


@dataclass(frozen=True, kw_only=True)
class RegionRecord:
    """A stored defect region (field names as `inspector.results.DefectRegion`)."""

    id: int
    inspection_id: int
    x: int
    y: int
    width: int
    height: int
    area_px: int
    area_mm2: float | None
    max_score: float | None
    mean_score: float | None
    defect_class: str | None
    classified_by: str | None = None
    classified_at: float | None = None
    predicted_class: str | None = None       # the typer's guess at inspection time (None: no typer)
    predicted_confidence: float | None = None


@dataclass(frozen=True, kw_only=True)
class FeedbackRecord:
    """A reviewer's label for an inspection."""

    id: int
    inspection_id: int
    label: str               # "good" or a defect class
    user: str
    time: float
    note: str


@dataclass(frozen=True, kw_only=True)
class InspectionRecord:
    """A stored inspection with its regions and feedback (oldest feedback first)."""

    id: int
    time: float
    recipe: str
    model_version: str
    line: str
    station: str
    lot: str
    source: str
    frame_id: int
    path: str | None
    verdict: Verdict
    score: float | None
    latency_ms: float | None
    image_path: str | None
    overlay_path: str | None
    error: str | None
    regions: tuple[RegionRecord, ...] = ()
    feedback: tuple[FeedbackRecord, ...] = ()

    @property
    def label(self) -> str | None:
        """The latest feedback label, or None when nobody has reviewed it."""
        return self.feedback[-1].label if self.feedback else None


@dataclass(frozen=True, kw_only=True)
class _Pending:
    """One result turned into rows at `record` time (no image arrays are kept)."""

    inspection: dict[str, Any]
    regions: tuple[dict[str, Any], ...]


_FLUSH: Final = object()      # queue marker: write what you have now


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------

class Store:
    """The statistics database and its writer thread.

    Args:
        url: an SQLite file path, a SQLAlchemy URL (``"postgresql+psycopg://user@host/db"``; add
            ``?sslmode=verify-full&sslrootcert=ca.pem`` for TLS), or None for the plant's configured
            store (`configured_url`: ``$INSPECTOR_STORE_URL`` or a 0600 file named by
            ``$INSPECTOR_STORE_URL_FILE``), else ``<data dir>/inspector.db``.
        batch_size: most results per insert transaction.
        flush_interval: seconds the writer waits to fill a batch before committing what it has.
        max_pending: results that may wait for the database; beyond it `record` drops and counts.
        on_recorded: called with the new `recorded_count` after each commit, on the writer thread.
        on_error: called with a `StoreError` for each failed write, rejected row or dropped result,
            on the thread where it happened (usually the writer).
        shift_start: local time the first of the day's shifts starts ("06:00"); a quarter hour.
        shift_hours: length of a shift; 24 must be a multiple of it (8 = three shifts).
        tz: time zone for hour/day/shift groups and CSV times; None = the computer's local zone.
        busy_timeout_s: how long SQLite waits for another process's write lock before an error.
        allow_offline: a server store (PostgreSQL) that cannot be reached now is opened anyway, offline:
            `insert_results` raises a retryable `StoreError` until the server answers, then checks and
            upgrades the schema first. For stations, whose results wait in their journal meanwhile.

    Raises:
        StoreError: the database cannot be opened (unless offline is allowed and it is only unreachable)
            or was made by a newer inspector.
    """

    def __init__(
        self,
        url: str | Path | None = None,
        *,
        batch_size: int = 64,
        flush_interval: float = 0.2,
        max_pending: int = 10_000,
        on_recorded: Callable[[int], None] | None = None,
        on_error: Callable[[StoreError], None] | None = None,
        shift_start: str = "06:00",
        shift_hours: int = 8,
        tz: dt.tzinfo | None = None,
        busy_timeout_s: float = 10.0,
        allow_offline: bool = False,
    ) -> None:
        if batch_size < 1 or flush_interval < 0 or max_pending < 1:
            msg = (f"Store: batch_size and max_pending must be >= 1 and flush_interval >= 0, got "
                   f"{batch_size}, {max_pending}, {flush_interval}")
            raise ValueError(msg)
        self._shift_start_min = _parse_shift_start(shift_start)
        if shift_hours < 1 or 24 % shift_hours:
            msg = f"Store: shift_hours must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24), got {shift_hours}"
            raise ValueError(msg)
        self._shift_min = shift_hours * 60
        self._tz = tz
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._on_recorded = on_recorded
        self._on_error = on_error
        self._busy_timeout_s = busy_timeout_s

        self.url = _database_url(url)
        self.display_name = _display(self.url)
        self._engine = _create_engine(self.url, busy_timeout_s)
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        try:
            self._init_schema()
            self._schema_ready = True
        except StoreError as exc:
            if not (allow_offline and self.url.get_backend_name() != "sqlite" and _unreachable(exc)):
                self._engine.dispose()
                raise
            logger.warning("statistics store %s is offline (%s); results wait in the journal until it answers",
                           self.display_name, exc)
        except BaseException:
            self._engine.dispose()
            raise

        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._cond = threading.Condition()
        self._enqueued = 0            # results accepted by record()
        self._settled = 0             # of those: committed, rejected or lost
        self._recorded = 0
        self._failed = 0
        self._dropped = 0
        self._lost = 0
        self._last_error: StoreError | None = None
        self._closed = False
        self._stopping = threading.Event()     # close(): exit once the queue is empty
        self._abandon = threading.Event()      # close() gave up waiting: count what is left as lost
        self._thread = threading.Thread(target=self._run, name="inspector-store-writer", daemon=True)
        self._thread.start()
        # A program that forgets close() still gets its queued results written at exit.
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)
        logger.info("statistics store open: %s", self.display_name)

    # ---- counters ----

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine, for read queries of other modules (``inspector.statistics``)."""
        return self._engine

    @property
    def recorded_count(self) -> int:
        """Results committed so far (each is on disk; a crash loses none of them)."""
        with self._cond:
            return self._recorded

    @property
    def failed_count(self) -> int:
        """Results the database refused (e.g. a constraint); each was reported."""
        with self._cond:
            return self._failed

    @property
    def dropped_count(self) -> int:
        """Results `record` dropped because ``max_pending`` results were already waiting."""
        with self._cond:
            return self._dropped

    @property
    def lost_count(self) -> int:
        """Results still queued when `close` gave up on an unwritable database."""
        with self._cond:
            return self._lost

    @property
    def pending(self) -> int:
        """Results accepted but not yet committed (or given up)."""
        with self._cond:
            return self._enqueued - self._settled

    @property
    def last_error(self) -> StoreError | None:
        """The most recent write problem, or None."""
        with self._cond:
            return self._last_error

    # ---- writing ----

    def record(self, result: InspectionResult, *, image_path: str | None = None,
               overlay_path: str | None = None) -> None:
        """Queue a result for writing; returns at once (never waits for the database).

        Args:
            result: the inspection; its arrays are not stored, only the plain fields and regions.
            image_path: where the archive saved the frame, if it did.
            overlay_path: where the archive saved the heatmap overlay, if it did.

        Raises:
            StoreError: if the store is closed.
        """
        if self._closed:
            msg = f"statistics store {self.display_name} is closed; cannot record frame {result.frame_id}"
            raise StoreError(msg)
        item = _pending(result, image_path, overlay_path)
        with self._cond:
            self._enqueued += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._cond:
                self._enqueued -= 1
                self._dropped += 1
                dropped = self._dropped
            msg = (f"statistics store {self.display_name}: {self._queue.maxsize} results are waiting for the "
                   f"database; dropped {result.recipe} frame {result.frame_id} ({dropped} dropped so far)")
            self._report(StoreError(msg), log=dropped == 1 or dropped % 100 == 0)

    def insert_results(self, entries: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Write journalled results now, in one transaction; skip result ids the store already has.

        This is the durable path (`inspector.recording.ResultRecorder` forwards its journal with it):
        it runs on the caller's thread, does not retry, and returns only after the commit.

        Args:
            entries: (result id, payload of `result_rows`) pairs, in the order they were inspected.

        Returns:
            How many were inserted (the others were stored before: a replay after a crash).

        Raises:
            StoreError: the database refused or could not be reached; nothing of this call is stored.
                Its ``retry`` attribute is False when the data itself was refused (a constraint), so
                writing the same rows again cannot help.
        """
        if self._closed:
            msg = f"statistics store {self.display_name} is closed"
            raise StoreError(msg)
        self._ensure_schema()
        ids = [result_id for result_id, _ in entries]
        try:
            with self._engine.begin() as conn:
                have = set(conn.execute(sa.select(inspections.c.result_id)
                                        .where(inspections.c.result_id.in_(ids))).scalars())
                fresh = [(rid, payload) for rid, payload in entries if rid not in have]
                for rid, payload in fresh:
                    row = {**payload["inspection"], "result_id": rid}
                    new_id = _new_id(conn.execute(sa.insert(inspections), row))
                    region_rows = [_region_from_json(r, new_id) for r in payload["regions"]]
                    if region_rows:
                        _insert_regions(conn, region_rows)
        except sa.exc.SQLAlchemyError as exc:
            retry = isinstance(exc, sa.exc.OperationalError) or bool(getattr(exc, "connection_invalidated", False))
            msg = f"cannot write {len(entries)} result(s) to {self.display_name}: {_reason(exc)}"
            error = StoreError(msg)
            error.retry = retry   # type: ignore[attr-defined]
            raise error from exc
        with self._cond:
            self._recorded += len(fresh)
            recorded = self._recorded
        if fresh and self._on_recorded is not None:
            try:
                self._on_recorded(recorded)
            except Exception:
                logger.exception("on_recorded callback failed")
        return len(fresh)

    @property
    def online(self) -> bool:
        """False while a store opened offline (``allow_offline``) has not yet reached its server."""
        return self._schema_ready

    def _ensure_schema(self) -> None:
        """For a store opened offline: check and upgrade the schema once the server answers."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            try:
                self._init_schema()
            except StoreError as exc:
                exc.retry = _unreachable(exc)       # type: ignore[attr-defined]
                raise
            self._schema_ready = True
            logger.info("statistics store %s is online", self.display_name)

    def forget_images(self, removed: Sequence[str]) -> int:
        """The archive removed these files: rows that pointed at them now say no image (NULL).

        Returns:
            How many rows were changed.

        Raises:
            StoreError: the database could not be written.
        """
        if not removed:
            return 0
        changed = 0
        with _WriteTransaction(self, "the removal of archived images") as conn:
            for column in (inspections.c.image_path, inspections.c.overlay_path):
                result = conn.execute(sa.update(inspections).where(column.in_(list(removed))).values({column: None}))
                changed += result.rowcount or 0
        return changed

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every result recorded before this call is committed (or given up).

        Raises:
            StoreError: if that takes longer than ``timeout`` seconds (e.g. the database is locked or
                unwritable); the results stay queued and the writer keeps trying.
        """
        with self._cond:
            target = self._enqueued
            if self._settled >= target:
                return
        try:
            self._queue.put_nowait(_FLUSH)     # wake the writer now instead of after flush_interval
        except queue.Full:
            pass                               # it is busy anyway
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    left = target - self._settled
                    cause = f"; last error: {self._last_error}" if self._last_error else ""
                    msg = (f"statistics store {self.display_name}: {left} result(s) not yet written after "
                           f"{timeout:g} s{cause}")
                    raise StoreError(msg)
                self._cond.wait(remaining)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (waiting up to ``timeout`` s), stop the writer and release the database.

        Raises:
            StoreError: if queued results could not be written; they are counted in `lost_count`.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        try:
            self.flush(timeout)
        except StoreError:
            self._abandon.set()                # the writer counts the rest as lost and stops
        self._stopping.set()
        self._thread.join(self._busy_timeout_s + 5.0)
        if self._thread.is_alive():
            logger.error("statistics store writer did not stop within %.0f s", self._busy_timeout_s + 5.0)
        self._engine.dispose()
        lost = self.lost_count
        if lost:
            msg = (f"statistics store {self.display_name}: {lost} result(s) could not be written before "
                   f"closing; last error: {self.last_error}")
            raise StoreError(msg)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        try:                                   # do not hide the exception already on its way
            self.close()
        except StoreError as close_exc:
            logger.error("%s", close_exc)

    # ---- the writer thread ----

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                try:
                    self._write(batch)
                except Exception as exc:       # a bug must not silently end the writer
                    logger.exception("statistics store writer failed")
                    self._settle(lost=len(batch))
                    self._report(StoreError(f"statistics store writer failed: {exc}"), log=False)
            elif self._stopping.is_set() and self._queue.empty():
                return

    def _next_batch(self) -> list[_Pending]:
        """Block for the first result, then gather more until the batch is full or the interval ends."""
        batch: list[_Pending] = []
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return batch
        if first is not _FLUSH:
            batch.append(first)
        else:
            return self._drain(batch)
        deadline = time.monotonic() + self._flush_interval
        while len(batch) < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _FLUSH:
                return self._drain(batch)
            batch.append(item)
        return batch

    def _drain(self, batch: list[_Pending]) -> list[_Pending]:
        """Add whatever is queued right now (up to a batch), without waiting."""
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _FLUSH:
                batch.append(item)
        return batch

    def _write(self, batch: list[_Pending]) -> None:
        """Insert a batch in one transaction; retry on database errors, isolate rows the database refuses."""
        attempt = 0
        while True:
            try:
                self._insert(batch)
            except sa.exc.DBAPIError as exc:
                if not (isinstance(exc, sa.exc.OperationalError) or exc.connection_invalidated):
                    self._write_apart(batch, exc)
                    return
                # Locked, busy, disk full, connection lost: the data is fine, the database is not. Retry.
                attempt += 1
                if self._abandon.is_set():
                    self._settle(lost=len(batch))
                    return
                msg = (f"cannot write {len(batch)} result(s) to {self.display_name} (attempt {attempt}, "
                       f"retrying): {_reason(exc)}")
                self._report(StoreError(msg), log=attempt == 1 or attempt % 10 == 0)
                self._abandon.wait(min(0.05 * 2 ** attempt, _RETRY_MAX_DELAY_S))
                continue
            except sa.exc.SQLAlchemyError as exc:
                self._write_apart(batch, exc)
                return
            if attempt:
                logger.info("statistics store %s is writable again", self.display_name)
            recorded = self._settle(committed=len(batch))
            if self._on_recorded is not None:
                try:
                    self._on_recorded(recorded)
                except Exception:
                    logger.exception("on_recorded callback failed")
            return

    def _write_apart(self, batch: list[_Pending], exc: BaseException) -> None:
        """The database refused the batch for its data: write each result alone, set the bad ones aside."""
        if len(batch) > 1:
            for item in batch:
                self._write([item])
            return
        row = batch[0].inspection
        msg = (f"{self.display_name} refused the result of {row['recipe']!r} frame {row['frame_id']}: "
               f"{_reason(exc)}")
        self._settle(rejected=1)
        self._report(StoreError(msg), log=True)

    def _insert(self, batch: list[_Pending]) -> None:
        rows = [p.inspection for p in batch]
        with self._engine.begin() as conn:
            if self._engine.dialect.insert_executemany_returning_sort_by_parameter_order:
                stmt = sa.insert(inspections).returning(inspections.c.id, sort_by_parameter_order=True)
                ids = list(conn.execute(stmt, rows).scalars())
            else:                              # old SQLite without RETURNING: one statement per row
                ids = [_new_id(conn.execute(sa.insert(inspections), row)) for row in rows]
            region_rows = [{**r, "inspection_id": i}
                           for i, p in zip(ids, batch, strict=True) for r in p.regions]
            if region_rows:
                _insert_regions(conn, region_rows)

    def _settle(self, *, committed: int = 0, rejected: int = 0, lost: int = 0) -> int:
        with self._cond:
            self._recorded += committed
            self._failed += rejected
            self._lost += lost
            self._settled += committed + rejected + lost
            self._cond.notify_all()
            return self._recorded

    def _report(self, error: StoreError, *, log: bool) -> None:
        with self._cond:
            self._last_error = error
        if log:
            logger.warning("%s", error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception("on_error callback failed")

    # ---- reading ----

    def yield_summary(
        self,
        *,
        group_by: GroupBy | Sequence[GroupBy] = "recipe",
        recipe: str | None = None,
        line: str | None = None,
        lot: str | None = None,
        station: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[YieldRow]:
        """Inspected / passed / review / failed / error counts and yield per group.

        Args:
            group_by: one key or several (``("line", "station", "recipe")``): ``recipe``, ``line``,
                ``station``, ``lot`` (sorted by name) and at most one of ``hour``, ``shift``, ``day``
                (local time, in time order; a shift belongs to the day it started). Several keys give
                one row per combination, ``key`` joined by " / " and ``keys`` apart.
            recipe, line, lot, station: only inspections with this value.
            since, until: only inspections with ``since <= time < until`` (seconds since the epoch).

        Raises:
            ValueError: an unknown key, or more than one time key.
        """
        keys = (group_by,) if isinstance(group_by, str) else tuple(group_by)
        unknown = [k for k in keys if k not in _NAME_KEYS + _TIME_KEYS]
        times = [k for k in keys if k in _TIME_KEYS]
        if not keys or unknown or len(times) > 1 or len(set(keys)) != len(keys):
            msg = (f"unknown or repeated group_by {', '.join(keys) or '(none)'}; use one or more of "
                   f"{', '.join(_NAME_KEYS)} and at most one of {', '.join(_TIME_KEYS)}")
            raise ValueError(msg)
        conds = _where(recipe=recipe, line=line, lot=lot, station=station, since=since, until=until)
        counts = [
            sa.func.count().label("inspected"),
            *(sa.func.sum(sa.case((inspections.c.verdict == v.value, 1), else_=0)).label(v.value.lower())
              for v in (Verdict.PASS, Verdict.REVIEW, Verdict.FAIL, Verdict.ERROR)),
        ]
        names = [k for k in keys if k in _NAME_KEYS]
        columns = [inspections.c[k].label(f"k_{k}") for k in names]
        if times:   # 15-minute buckets in SQL, mapped to local hours/shifts/days here
            columns.append(_bucket(inspections.c.time / sa.literal_column(str(_BUCKET_S))).label("k_time"))
        stmt = (sa.select(*columns, *counts).where(*conds)
                .group_by(*(sa.text(c.name) for c in columns)).order_by(*(sa.text(c.name) for c in columns)))
        groups: dict[tuple[str, ...], list[int]] = {}
        with self._engine.connect() as conn:
            for r in conn.execute(stmt).mappings():
                values: dict[str, str] = {k: str(r[f"k_{k}"]) for k in names}
                if times:
                    values[times[0]] = self._time_key(int(r["k_time"]) * _BUCKET_S, times[0])
                acc = groups.setdefault(tuple(values[k] for k in keys), [0, 0, 0, 0, 0])
                for i, n in enumerate((r["inspected"], r["pass"], r["review"], r["fail"], r["error"])):
                    acc[i] += int(n or 0)
        return [_yield_row(k, *v) for k, v in groups.items()]

    def _time_key(self, t: float, group_by: str) -> str:
        local = dt.datetime.fromtimestamp(t, tz=self._tz)
        if group_by == "hour":
            return local.strftime("%Y-%m-%d %H:00")
        if group_by == "day":
            return local.strftime("%Y-%m-%d")
        since_start = local - dt.timedelta(minutes=self._shift_start_min)   # wall-clock arithmetic
        index = (since_start.hour * 60 + since_start.minute) // self._shift_min
        begin = self._shift_start_min + index * self._shift_min
        return f"{since_start:%Y-%m-%d} {_hhmm(begin)}-{_hhmm(begin + self._shift_min)}"

    def defects_by_class(
        self,
        *,
        recipe: str | None = None,
        line: str | None = None,
        lot: str | None = None,
        station: str | None = None,
        verdict: Verdict | str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[tuple[str, int]]:
        """Defect regions per class, most frequent first; unclassified regions count as ``"unclassified"``."""
        conds = _where(recipe=recipe, line=line, lot=lot, station=station, verdict=verdict, since=since,
                       until=until)
        stmt = (sa.select(regions.c.defect_class, sa.func.count().label("n"))
                .select_from(regions.join(inspections, regions.c.inspection_id == inspections.c.id))
                .where(*conds).group_by(regions.c.defect_class))
        totals: dict[str, int] = {}
        with self._engine.connect() as conn:
            for name, n in conn.execute(stmt):
                key = name if name is not None else UNCLASSIFIED
                totals[key] = totals.get(key, 0) + int(n)
        return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))

    def score_series(
        self,
        *,
        recipe: str | None = None,
        line: str | None = None,
        lot: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 5000,
    ) -> list[ScorePoint]:
        """The newest ``limit`` scored inspections, oldest first (ERROR results have no score)."""
        conds = _where(recipe=recipe, line=line, lot=lot, since=since, until=until)
        stmt = (sa.select(inspections.c.time, inspections.c.score, inspections.c.verdict)
                .where(inspections.c.score.is_not(None), *conds)
                .order_by(inspections.c.time.desc(), inspections.c.id.desc()).limit(max(0, limit)))
        with self._engine.connect() as conn:
            points = [ScorePoint(t, s, Verdict(v)) for t, s, v in conn.execute(stmt)]
        points.reverse()
        return points

    def score_histogram(
        self,
        *,
        recipe: str | None = None,
        bins: int = 30,
        line: str | None = None,
        lot: str | None = None,
        station: str | None = None,
        verdict: Verdict | str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> tuple[list[float], list[int]]:
        """Histogram of image scores, counted in the database.

        Returns:
            ``(edges, counts)``: ``bins + 1`` ascending bin edges from the lowest to the highest score
            and ``bins`` counts (the last bin includes its upper edge); ``([], [])`` when no
            inspection has a score.
        """
        if bins < 1:
            msg = f"score_histogram: bins must be >= 1, got {bins}"
            raise ValueError(msg)
        conds = [inspections.c.score.is_not(None),
                 *_where(recipe=recipe, line=line, lot=lot, station=station, verdict=verdict, since=since,
                         until=until)]
        with self._engine.connect() as conn:
            lo, hi = conn.execute(sa.select(sa.func.min(inspections.c.score),
                                            sa.func.max(inspections.c.score)).where(*conds)).one()
            if lo is None:
                return [], []
            lo, hi = float(lo), float(hi)
            width = (hi - lo) / bins if hi > lo else 1.0 / bins
            index = _bucket((inspections.c.score - lo) / width).label("b")
            stmt = sa.select(index, sa.func.count().label("n")).where(*conds).group_by(sa.text("b"))
            counts = [0] * bins
            for b, n in conn.execute(stmt):
                counts[min(max(int(b), 0), bins - 1)] += int(n)
        edges = [lo + i * width for i in range(bins + 1)]
        return edges, counts

    def inspections(
        self,
        *,
        recipe: str | None = None,
        verdict: Verdict | str | None = None,
        line: str | None = None,
        lot: str | None = None,
        station: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> list[InspectionRecord]:
        """A page of inspections, newest first, each with its regions and feedback."""
        conds = _where(recipe=recipe, line=line, lot=lot, station=station, verdict=verdict, since=since,
                       until=until)
        stmt = (sa.select(inspections).where(*conds)
                .order_by(inspections.c.time.desc(), inspections.c.id.desc())
                .limit(max(0, limit)).offset(max(0, offset)))
        with self._engine.connect() as conn:
            rows = list(conn.execute(stmt).mappings())
            return self._records(conn, rows)

    def get_inspection(self, inspection_id: int) -> InspectionRecord:
        """One inspection with its regions and feedback.

        Raises:
            StoreError: if there is no inspection with that id.
        """
        _check_id(inspection_id, self.display_name)
        with self._engine.connect() as conn:
            stmt = sa.select(inspections).where(inspections.c.id == inspection_id)
            rows = list(conn.execute(stmt).mappings())
            if not rows:
                msg = f"no inspection with id {inspection_id} in {self.display_name}"
                raise StoreError(msg)
            return self._records(conn, rows)[0]

    def _records(self, conn: sa.Connection, rows: Sequence[sa.RowMapping]) -> list[InspectionRecord]:
        ids = [r["id"] for r in rows]
        by_regions: dict[int, list[RegionRecord]] = {i: [] for i in ids}
        by_feedback: dict[int, list[FeedbackRecord]] = {i: [] for i in ids}
        if ids:
            for r in conn.execute(sa.select(regions).where(regions.c.inspection_id.in_(ids))
                                  .order_by(regions.c.id)).mappings():
                by_regions[r["inspection_id"]].append(RegionRecord(
                    id=r["id"], inspection_id=r["inspection_id"], x=r["x"], y=r["y"], width=r["w"],
                    height=r["h"], area_px=r["area_px"], area_mm2=r["area_mm2"], max_score=r["max_score"],
                    mean_score=r["mean_score"], defect_class=r["defect_class"],
                    classified_by=r["classified_by"], classified_at=r["classified_at"],
                    predicted_class=r["predicted_class"], predicted_confidence=r["predicted_confidence"]))
            for r in conn.execute(sa.select(feedback).where(feedback.c.inspection_id.in_(ids))
                                  .order_by(feedback.c.time, feedback.c.id)).mappings():
                by_feedback[r["inspection_id"]].append(FeedbackRecord(**r))
        return [InspectionRecord(
            id=r["id"], time=r["time"], recipe=r["recipe"], model_version=r["model_version"], line=r["line"],
            station=r["station"], lot=r["lot"], source=r["source"], frame_id=r["frame_id"], path=r["path"],
            verdict=Verdict(r["verdict"]), score=r["score"], latency_ms=r["latency_ms"],
            image_path=r["image_path"], overlay_path=r["overlay_path"], error=r["error"],
            regions=tuple(by_regions[r["id"]]), feedback=tuple(by_feedback[r["id"]]),
        ) for r in rows]

    # ---- reviewers' input (written at once, not queued) ----

    def add_feedback(self, inspection_id: int, label: str, *, user: str, note: str = "",
                     time_s: float | None = None) -> int:
        """Record a reviewer's label for an inspection.

        Args:
            inspection_id: the inspection.
            label: ``"good"`` or one of the recipe's defect classes (the caller checks which).
            user: who said so.
            note: free text.
            time_s: when (seconds since the epoch); None = now.

        Returns:
            The feedback row's id.

        Raises:
            StoreError: no such inspection, an empty label or user, or the database refused.
        """
        _require_text(label=label, user=user)
        _check_id(inspection_id, self.display_name)
        row = {"inspection_id": inspection_id, "label": label, "user": user, "note": note,
               "time": time.time() if time_s is None else time_s}
        what = f"feedback {label!r} for inspection {inspection_id}"
        with _WriteTransaction(self, what) as conn:
            exists = sa.select(inspections.c.id).where(inspections.c.id == inspection_id)
            if conn.execute(exists).first() is None:
                msg = f"no inspection with id {inspection_id} in {self.display_name}; feedback not recorded"
                raise StoreError(msg)
            return int(_new_id(conn.execute(sa.insert(feedback), row)))

    def set_defect_class(self, defect_class: str, *, user: str, region_id: int | None = None,
                         inspection_id: int | None = None) -> int:
        """Classify one region (``region_id``) or every region of an inspection (``inspection_id``).

        Returns:
            How many regions were updated (>= 1).

        Raises:
            StoreError: neither or both ids given, nothing found, or the database refused.
        """
        if (region_id is None) == (inspection_id is None):
            msg = "set_defect_class: give exactly one of region_id= or inspection_id="
            raise StoreError(msg)
        _require_text(defect_class=defect_class, user=user)
        if region_id is not None:
            _check_id(region_id, self.display_name, "region")
            target, what = regions.c.id == region_id, f"region {region_id}"
        else:
            assert inspection_id is not None   # exactly one of the two was given (checked above)
            _check_id(inspection_id, self.display_name)
            target = regions.c.inspection_id == inspection_id
            what = f"the regions of inspection {inspection_id}"
        stmt = (sa.update(regions).where(target)
                .values(defect_class=defect_class, classified_by=user, classified_at=time.time()))
        with _WriteTransaction(self, f"class {defect_class!r} for {what}") as conn:
            n = conn.execute(stmt).rowcount
            if not n:
                msg = f"no {what} in {self.display_name}; defect class not set"
                raise StoreError(msg)
            return int(n)

    # ---- export ----

    def export_csv(
        self,
        path: str | Path,
        *,
        recipe: str | None = None,
        verdict: Verdict | str | None = None,
        line: str | None = None,
        lot: str | None = None,
        station: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> int:
        """Write the matching inspections to a CSV file (UTF-8, oldest first), atomically.

        Columns: the inspection's fields, ``local_time`` (ISO 8601 in the store's time zone),
        ``regions`` (count), ``defect_classes`` (reviewers', ``;``-separated), ``predicted_classes``
        (the few-shot typer's guesses) and ``label`` (latest feedback).
        Text that a spreadsheet would run as a formula (starting with ``= + - @``) is prefixed
        with ``'``.

        Returns:
            The number of inspections written.

        Raises:
            StoreError: the file cannot be written.
        """
        path = Path(path)
        conds = _where(recipe=recipe, line=line, lot=lot, station=station, verdict=verdict, since=since,
                       until=until)
        n_regions = (sa.select(sa.func.count()).where(regions.c.inspection_id == inspections.c.id)
                     .scalar_subquery().label("regions"))
        label = (sa.select(feedback.c.label).where(feedback.c.inspection_id == inspections.c.id)
                 .order_by(feedback.c.time.desc(), feedback.c.id.desc()).limit(1)
                 .scalar_subquery().label("label"))
        stmt = (sa.select(inspections, n_regions, label).where(*conds)
                .order_by(inspections.c.time, inspections.c.id))
        columns = ["id", "time", "local_time", "recipe", "model_version", "line", "station", "lot", "source",
                   "frame_id", "path", "verdict", "score", "latency_ms", "regions", "defect_classes",
                   "predicted_classes", "label",
                   "image_path", "overlay_path", "error"]
        count = 0
        tmp_name: str | None = None
        try:
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=path.parent,
                                             prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
                tmp_name = tmp.name
                writer = csv.writer(tmp)
                writer.writerow(columns)
                with self._engine.connect() as conn:
                    for chunk in _chunks(conn.execution_options(stream_results=True, yield_per=1000)
                                         .execute(stmt).mappings(), 1000):
                        classes = self._classes_of(conn, [r["id"] for r in chunk])
                        predicted = self._classes_of(conn, [r["id"] for r in chunk], regions.c.predicted_class)
                        for r in chunk:
                            values = {**r, "local_time": dt.datetime.fromtimestamp(r["time"], tz=self._tz)
                                      .isoformat(timespec="milliseconds"),
                                      "defect_classes": ";".join(classes.get(r["id"], ())),
                                      "predicted_classes": ";".join(predicted.get(r["id"], ()))}
                            writer.writerow([csv_cell(values[c]) for c in columns])
                            count += 1
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as exc:
            msg = (f"cannot write the CSV export {path}: {exc.strerror or exc}; "
                   "check the folder exists and is writable")
            raise StoreError(msg) from exc
        finally:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
        logger.info("exported %d inspection(s) to %s", count, path)
        return count

    @staticmethod
    def _classes_of(conn: sa.Connection, ids: list[int],
                    column: sa.Column[Any] = regions.c.defect_class) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        stmt = (sa.select(regions.c.inspection_id, column).distinct()
                .where(regions.c.inspection_id.in_(ids), column.is_not(None))
                .order_by(regions.c.inspection_id, column))
        for i, c in conn.execute(stmt):
            out.setdefault(i, []).append(c)
        return out

    # ---- opening ----

    def _init_schema(self) -> None:
        """Create or upgrade the schema in place (`inspector.migrations`) and check the version."""
        from inspector import migrations

        migrations.upgrade(self._engine, self.display_name)
        version = sa.select(store_meta.c.value).where(store_meta.c.key == "schema_version")
        try:
            with self._engine.connect() as conn:
                found = conn.execute(version).scalar()
        except sa.exc.SQLAlchemyError as exc:
            msg = f"cannot open the statistics store {self.display_name}: {_reason(exc)}"
            raise StoreError(msg) from exc
        if found is None or not found.isdigit() or int(found) > SCHEMA_VERSION:
            msg = (f"the statistics store {self.display_name} has schema version {found}, newer than this "
                   f"inspector reads ({SCHEMA_VERSION}); upgrade inspector or use another database")
            raise StoreError(msg)


class _WriteTransaction:
    """One immediate write (feedback, classes) with the database's errors turned into StoreError."""

    def __init__(self, store: Store, what: str) -> None:
        self._store = store
        self._what = what
        self._ctx: Any = None

    def __enter__(self) -> sa.Connection:
        self._ctx = self._store._engine.begin()
        try:
            return self._ctx.__enter__()   # type: ignore[no-any-return]
        except sa.exc.SQLAlchemyError as exc:
            msg = f"cannot write {self._what} to {self._store.display_name}: {_reason(exc)}"
            raise StoreError(msg) from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._ctx.__exit__(exc_type, exc, tb)
        except sa.exc.SQLAlchemyError as db_exc:
            msg = f"cannot write {self._what} to {self._store.display_name}: {_reason(db_exc)}"
            raise StoreError(msg) from db_exc
        if isinstance(exc, sa.exc.SQLAlchemyError):
            msg = f"cannot write {self._what} to {self._store.display_name}: {_reason(exc)}"
            raise StoreError(msg) from exc


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def _unreachable(exc: BaseException) -> bool:
    """Whether a store error means the server could not be reached (not: refused us, or our data)."""
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, sa.exc.SQLAlchemyError):
        cause = cause.__cause__
    return isinstance(cause, sa.exc.OperationalError | sa.exc.InterfaceError)


def _close_at_exit(ref: weakref.ReferenceType[Store]) -> None:
    store = ref()
    if store is None:
        return
    try:
        store.close()
    except StoreError as exc:
        logger.error("%s", exc)


def configured_url() -> str | None:
    """The store URL a plant configured for this computer, or None for the per-user SQLite file.

    ``$INSPECTOR_STORE_URL`` first, else the first line of the file named by ``$INSPECTOR_STORE_URL_FILE``,
    which must be a regular file readable by its owner only (``chmod 600``): a URL holds the database
    password, and neither is ever printed (see `_display`).

    Raises:
        StoreError: the URL file is missing, empty, not a regular file or readable by others.
    """
    value = os.environ.get(STORE_URL_ENV, "").strip()
    if value:
        return value
    file_name = os.environ.get(STORE_URL_FILE_ENV, "").strip()
    if not file_name:
        return None
    path = Path(file_name).expanduser()
    try:
        info = path.stat()
    except OSError as exc:
        msg = f"{STORE_URL_FILE_ENV}={path}: cannot read the store URL file ({exc.strerror or exc})"
        raise StoreError(msg) from exc
    if not stat.S_ISREG(info.st_mode):
        msg = f"{STORE_URL_FILE_ENV}={path}: not a regular file"
        raise StoreError(msg)
    if info.st_mode & 0o077:
        msg = (f"{STORE_URL_FILE_ENV}={path}: readable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
               f"it holds the database password: run chmod 600 {path}")
        raise StoreError(msg)
    if info.st_size > _MAX_URL_FILE_BYTES:
        msg = f"{STORE_URL_FILE_ENV}={path}: {info.st_size} bytes is not a store URL (at most {_MAX_URL_FILE_BYTES})"
        raise StoreError(msg)
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    if not lines or not lines[0].strip():
        msg = f"{STORE_URL_FILE_ENV}={path}: empty; write the store URL on its first line"
        raise StoreError(msg)
    return lines[0].strip()


def _database_url(url: str | Path | None) -> sa.URL:
    if url is None:
        url = configured_url()
    if url is None:
        path = paths.database_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return sa.URL.create("sqlite", database=str(path))
    text = str(url)
    if isinstance(url, Path) or "://" not in text:
        if text in ("", ":memory:"):
            msg = (f"statistics store {text!r}: an in-memory database cannot be shared with the writer "
                   "thread; give a file path (tests: a file in tmp_path)")
            raise StoreError(msg)
        path = Path(text).expanduser()
        if not path.parent.is_dir():
            msg = (f"statistics store {path}: folder {path.parent} does not exist; "
                   "create it or choose another path")
            raise StoreError(msg)
        return sa.URL.create("sqlite", database=str(path))
    try:
        parsed = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        msg = f"statistics store URL {text!r} is not a valid SQLAlchemy URL (e.g. postgresql://user@host/db)"
        raise StoreError(msg) from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        msg = ("statistics store: an in-memory SQLite database cannot be shared with the writer thread; "
               "give a file")
        raise StoreError(msg)
    return parsed


def _display(url: sa.URL) -> str:
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def _create_engine(url: sa.URL, busy_timeout_s: float) -> sa.Engine:
    try:
        if url.get_backend_name() != "sqlite":
            return sa.create_engine(url, pool_pre_ping=True)
        # Connections move between the writer thread and readers; the pool hands each to one thread at a time.
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        msg = (f"cannot open the statistics store {_display(url)}: {exc}; "
               "install its database driver or check the URL")
        raise StoreError(msg) from exc

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")   # our own int: not user input
            cur.execute("PRAGMA journal_mode = WAL")     # readers never block the writer, nor other processes
            # FULL: a commit is on disk before recorded_count moves, even across a power cut.
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    return engine


def result_rows(result: InspectionResult, *, image_path: str | None = None,
                overlay_path: str | None = None) -> dict[str, Any]:
    """The store's rows for a result as plain JSON data: ``{"inspection": {...}, "regions": [...]}``.

    What the result journal keeps (see `inspector.journal`) and `Store.insert_results` writes.
    """
    pending = _pending(result, image_path, overlay_path)
    return {"inspection": pending.inspection, "regions": [_region_to_json(r) for r in pending.regions]}


def _region_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A region row as JSON data: its embedding (float32 bytes) as base64 text."""
    vector = row.get("embedding")
    return {**row, "embedding": None if vector is None else base64.b64encode(vector).decode("ascii")}


def _region_from_json(row: dict[str, Any], inspection_id: int) -> dict[str, Any]:
    vector = row.get("embedding")
    return {**row, "inspection_id": inspection_id,
            "embedding": None if vector is None else base64.b64decode(vector)}


def _pending(result: InspectionResult, image_path: str | None, overlay_path: str | None) -> _Pending:
    row = {
        "time": float(result.timestamp),
        "recipe": str(result.recipe),
        "model_version": str(result.model_version or ""),
        "line": str(result.line or ""),
        "station": str(result.station or ""),
        "lot": str(result.lot or ""),
        "source": str(result.source or ""),
        "frame_id": int(result.frame_id),
        "path": None if result.path is None else str(result.path),
        "verdict": Verdict(result.verdict).value,
        "score": _number(result.score),
        "latency_ms": _number(result.times.total_ms),
        "image_path": None if image_path is None else str(image_path),
        "overlay_path": None if overlay_path is None else str(overlay_path),
        "error": None if result.error is None else str(result.error),
    }
    region_rows = tuple({
        "x": int(r.x), "y": int(r.y), "w": int(r.width), "h": int(r.height), "area_px": int(r.area_px),
        "area_mm2": _number(r.area_mm2), "max_score": _number(r.max_score),
        "mean_score": _number(r.mean_score),
        "defect_class": r.defect_class,
        "predicted_class": r.predicted_class,
        "predicted_confidence": _number(r.type_confidence),
        "embedding": None if r.embedding is None else np.asarray(r.embedding, dtype=np.float32).tobytes(),
    } for r in result.regions)
    return _Pending(inspection=row, regions=region_rows)


def _insert_regions(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert region rows; their embeddings (where given) go to ``region_embeddings``."""
    plain = [{k: v for k, v in r.items() if k != "embedding"} for r in rows]
    if not any(r.get("embedding") is not None for r in rows):
        conn.execute(sa.insert(regions), plain)
        return
    for row, values in zip(rows, plain, strict=True):
        region_id = _new_id(conn.execute(sa.insert(regions), values))
        if row.get("embedding") is not None:
            conn.execute(sa.insert(region_embeddings), {"region_id": region_id, "vector": row["embedding"]})


def inspection_conditions(*, recipe: str | None = None, line: str | None = None, lot: str | None = None,
                          station: str | None = None, verdict: Verdict | str | None = None,
                          since: float | None = None, until: float | None = None) -> list[sa.ColumnElement[bool]]:
    """SQL conditions on ``inspections`` for the usual filters (None = any); for other query modules."""
    return _where(recipe=recipe, line=line, lot=lot, station=station, verdict=verdict, since=since, until=until)


def _number(value: float | None) -> float | None:
    """A finite float, or None (SQL has no NaN; an infinite score is stored as unknown)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _where(*, recipe: str | None = None, line: str | None = None, lot: str | None = None,
           station: str | None = None, verdict: Verdict | str | None = None, since: float | None = None,
           until: float | None = None) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = []
    for column, value in (("recipe", recipe), ("line", line), ("lot", lot), ("station", station)):
        if value is not None:
            conds.append(inspections.c[column] == value)
    if verdict is not None:
        conds.append(inspections.c.verdict == Verdict(verdict).value)
    if since is not None:
        conds.append(inspections.c.time >= since)
    if until is not None:
        conds.append(inspections.c.time < until)
    return conds


def _new_id(result: sa.CursorResult[Any]) -> Any:
    """The primary key of a one-row insert (SQLAlchemy types it Optional: None only after executemany)."""
    return cast("sa.Row[Any]", result.inserted_primary_key)[0]


def _yield_row(keys: tuple[str, ...], inspected: int, passed: int, review: int, failed: int,
               errors: int) -> YieldRow:
    pct = VerdictCounts(passed=passed, review=review, failed=failed, errors=errors).yield_pct or 0.0
    return YieldRow(key=" / ".join(keys), keys=keys, inspected=inspected, passed=passed, review=review,
                    failed=failed, errors=errors, yield_pct=pct)


def _parse_shift_start(text: str) -> int:
    try:
        hours, minutes = (int(part) for part in text.split(":"))
    except ValueError:
        hours, minutes = -1, -1
    if not (0 <= hours < 24 and 0 <= minutes < 60) or minutes % 15:
        msg = f"Store: shift_start must be a local time HH:MM on a quarter hour such as '06:00', got {text!r}"
        raise ValueError(msg)
    return hours * 60 + minutes


def _hhmm(minutes: int) -> str:
    minutes %= 24 * 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _require_text(**values: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value.strip():
            msg = f"{name} must be non-empty text, got {value!r}"
            raise StoreError(msg)


def _check_id(row_id: int, where: str, kind: str = "inspection") -> None:
    """Refuse an id no row can have (SQLite's INTEGER is signed 64-bit; ids start at 1)."""
    if not 1 <= row_id < 2**63:
        msg = f"no {kind} with id {row_id} in {where} (ids are whole numbers from 1)"
        raise StoreError(msg)


def _reason(exc: BaseException) -> str:
    """The database's own sentence, without SQLAlchemy's SQL dump and link."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]


def _chunks(rows: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
