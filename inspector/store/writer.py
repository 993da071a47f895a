"""The statistics store's `Store`: opening the database and its writer thread (recording results).

`Store` combines this writing side with the mixins of `inspector.store.queries` (reading),
`inspector.store.feedback` (reviewers' input) and `inspector.store.export` (CSV).

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
    >>> store = Store(tmp_path / "stats.db", on_error=print)           # doctest: +SKIP
    >>> store.record(result)                    # returns at once; the writer thread commits it
    >>> store.flush(); store.recorded_count
    1
    >>> store.close()                           # writes what is queued, then releases the database
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import functools
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import numpy as np
import sqlalchemy as sa

from inspector.errors import StoreError
from inspector.results import InspectionResult, Verdict
from inspector.store.export import StoreExport
from inspector.store.feedback import StoreFeedback
from inspector.store.queries import StoreQueries, parse_shift_start
from inspector.store.rollup import add_inspections
from inspector.store.schema import (
    WriteTransaction,
    check_schema,
    create_engine,
    database_url,
    display_url,
    error_reason,
    inspections,
    new_id,
    region_embeddings,
    regions,
    unreachable,
)

__all__ = ["Store", "result_rows"]

logger = logging.getLogger("inspector.store")

_RETRY_MAX_DELAY_S: Final = 5.0           # backoff cap while the database refuses writes


@dataclass(frozen=True, kw_only=True)
class _Pending:
    """One result turned into rows at `record` time (no image arrays are kept)."""

    inspection: dict[str, Any]
    regions: tuple[dict[str, Any], ...]


_FLUSH: Final = object()      # queue marker: write what you have now


class Store(StoreQueries, StoreFeedback, StoreExport):
    """The statistics database and its writer thread.

    Reading (`StoreQueries`), reviewers' input (`StoreFeedback`) and the CSV export (`StoreExport`) come
    from the mixins of their modules; this class opens the database and owns the writing.

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
        rollups: answer counts (yield, classes, Pareto, p-charts, location map) from the roll-up tables, which
            every write keeps in step (`inspector.store.rollup`); False reads the detail rows (slow on a big
            store; for checks and benchmarks). Writing keeps the roll-ups either way.

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
        rollups: bool = True,
    ) -> None:
        if batch_size < 1 or flush_interval < 0 or max_pending < 1:
            msg = (f"Store: batch_size and max_pending must be >= 1 and flush_interval >= 0, got "
                   f"{batch_size}, {max_pending}, {flush_interval}")
            raise ValueError(msg)
        self._shift_start_min = parse_shift_start(shift_start)
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
        self.rollups = rollups

        self.url = database_url(url)
        self.display_name = display_url(self.url)
        self._engine = create_engine(self.url, busy_timeout_s)
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        try:
            check_schema(self._engine, self.display_name)
            self._schema_ready = True
        except StoreError as exc:
            if not (allow_offline and self.url.get_backend_name() != "sqlite" and unreachable(exc)):
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
        try:
            try:
                fresh = self._insert_new(entries)
            except sa.exc.IntegrityError:
                # Another process forwarding the same journal committed some of these ids between our
                # check and our insert; once more sees them and skips them. A second failure is the data's.
                fresh = self._insert_new(entries)
        except sa.exc.SQLAlchemyError as exc:
            retry = isinstance(exc, sa.exc.OperationalError) or bool(getattr(exc, "connection_invalidated", False))
            msg = f"cannot write {len(entries)} result(s) to {self.display_name}: {error_reason(exc)}"
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

    def _insert_new(self, entries: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """One transaction: insert the entries whose result id the store does not have; returns those."""
        ids = [result_id for result_id, _ in entries]
        with self._engine.begin() as conn:
            have = set(conn.execute(sa.select(inspections.c.result_id)
                                    .where(inspections.c.result_id.in_(ids))).scalars())
            fresh = [(rid, payload) for rid, payload in entries if rid not in have]
            inserted: list[int] = []
            for rid, payload in fresh:
                row = {**payload["inspection"], "result_id": rid}
                inspection_id = new_id(conn.execute(sa.insert(inspections), row))
                inserted.append(inspection_id)
                region_rows = [_region_from_json(r, inspection_id) for r in payload["regions"]]
                if region_rows:
                    _insert_regions(conn, region_rows)
            add_inspections(conn, inserted)   # same transaction: never out of step
        return fresh

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
                check_schema(self._engine, self.display_name)
            except StoreError as exc:
                # The server away, a store made by a newer inspector, a role that may not create the tables:
                # the store's problem, not one result's. Results keep waiting in the journal, in order
                # (never set aside as refused data), and the error says why.
                exc.retry = True                   # type: ignore[attr-defined]
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
        with WriteTransaction(self._engine, self.display_name, "the removal of archived images") as conn:
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
                       f"retrying): {error_reason(exc)}")
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
               f"{error_reason(exc)}")
        self._settle(rejected=1)
        self._report(StoreError(msg), log=True)

    def _insert(self, batch: list[_Pending]) -> None:
        rows = [p.inspection for p in batch]
        with self._engine.begin() as conn:
            if self._engine.dialect.insert_executemany_returning_sort_by_parameter_order:
                stmt = sa.insert(inspections).returning(inspections.c.id, sort_by_parameter_order=True)
                ids = list(conn.execute(stmt, rows).scalars())
            else:                              # old SQLite without RETURNING: one statement per row
                ids = [new_id(conn.execute(sa.insert(inspections), row)) for row in rows]
            region_rows = [{**r, "inspection_id": i}
                           for i, p in zip(ids, batch, strict=True) for r in p.regions]
            if region_rows:
                _insert_regions(conn, region_rows)
            add_inspections(conn, ids)   # same transaction: never out of step

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


def _close_at_exit(ref: weakref.ReferenceType[Store]) -> None:
    store = ref()
    if store is None:
        return
    try:
        store.close()
    except StoreError as exc:
        logger.error("%s", exc)


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
        region_id = new_id(conn.execute(sa.insert(regions), values))
        if row.get("embedding") is not None:
            conn.execute(sa.insert(region_embeddings), {"region_id": region_id, "vector": row["embedding"]})


def _number(value: float | None) -> float | None:
    """A finite float, or None (SQL has no NaN; an infinite score is stored as unknown)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
