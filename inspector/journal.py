"""The local result journal: each result is on disk here before anyone is told its verdict.

A station must never show, print, publish or answer a verdict that a crash can then lose. So
`inspector.recording.ResultRecorder` first appends every result to this journal, one SQLite
transaction with ``synchronous = FULL`` (the commit has reached the disk when `append` returns),
and only then reports it. A forwarder copies the journal's entries, oldest first, into the
statistics store and removes them once the store has committed them. When the store is locked, full
or unreachable the entries simply stay here (up to ``max_entries``) and are forwarded when it is
back, by this process or by the next one that opens the same journal after a crash.

The journal knows nothing of the store's engine: an entry is a result id (unique per result) and
the store's rows as JSON, so the same file serves an SQLite store today and a remote server later.
Forwarding is idempotent by the result id (`inspector.store.Store.insert_results` skips ids it
has), so an entry forwarded twice (a crash between the store's commit and the journal's delete) is
stored once.

An entry may be appended **held** (``append(..., hold=True)``): a triggered station answers the PLC before
it types the defects, so the result is made durable untyped and held back from the store until `amend`
gives it its types (or `release` lets it go as it is). The forwarder stops at the oldest held entry, so
results still reach the store in order. A hold lives in this process only and lapses after
``HOLD_MAX_S``: after a crash, or if typing never ends, the entry is forwarded as journalled.

A station's running lot counters live here too (``tally``): an append may count its verdict in the same
commit, so after a crash or a restart the counters read back exactly what was recorded. A count belongs to
an epoch (a "New lot" starts the next one) with the lot number it counts under; `tally` reads the newest.
Entries leave the journal once stored; the counts stay until a newer epoch starts.

Example:
    >>> journal = ResultJournal(tmp_path / "inspector.pending.db")      # doctest: +SKIP
    >>> journal.append("c0ffee", {"inspection": {...}, "regions": []})
    >>> [entry.result_id for entry in journal.peek(10)]
    ['c0ffee']
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from inspector.errors import StoreError

__all__ = ["DEFAULT_MAX_ENTRIES", "HOLD_MAX_S", "JournalEntry", "JournalFull", "ResultJournal", "journal_path_for"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES: Final = 100_000     # about a day of a 1 fps line with the store away; ~1 KB each
HOLD_MAX_S: Final = 30.0    # ours: a held entry is forwarded as it is after this (typing takes a fraction of a second)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER PRIMARY KEY,
    result_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS removed_files (
    path TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS tally (
    epoch INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (epoch, verdict)
);
CREATE TABLE IF NOT EXISTS tally_lot (
    epoch INTEGER PRIMARY KEY,
    lot TEXT NOT NULL
);
"""
_EPOCH_MARK: Final = ""      # the verdict of an epoch's first row: the epoch has begun, nothing counted yet


class JournalFull(StoreError):
    """The journal holds ``max_entries`` results that the store has not taken; nothing more is accepted."""


@dataclass(frozen=True, kw_only=True)
class JournalEntry:
    """One journalled result: its order, its id and the store's rows for it."""

    seq: int
    result_id: str
    payload: dict[str, Any]


def journal_path_for(store_path: Path) -> Path:
    """The journal beside an SQLite store file: ``inspector.db`` -> ``inspector.pending.db``.

    Not ``inspector.db-journal``: that name is SQLite's own rollback journal.
    """
    return store_path.with_name(f"{store_path.stem}.pending.db")


class ResultJournal:
    """A bounded, crash-safe FIFO of results on local disk (SQLite, WAL, ``synchronous = FULL``).

    Thread-safe: one connection, used under a lock (appends come from the inspection worker,
    peeks and removals from the forwarder).

    Args:
        path: the journal file; its folder must exist.
        max_entries: most results waiting; `append` raises `JournalFull` beyond it.

    Raises:
        StoreError: the file cannot be opened or is not a journal.
    """

    def __init__(self, path: Path, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            msg = f"ResultJournal: max_entries must be >= 1, got {max_entries}"
            raise ValueError(msg)
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves; timeout: another process's lock
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")     # a COMMIT is on disk when it returns
            self._conn.executescript(_SCHEMA)
            self._count = int(self._conn.execute("SELECT count(*) FROM pending").fetchone()[0])
            self._removed = {str(p) for (p,) in self._conn.execute("SELECT path FROM removed_files")}
            self._held: dict[int, float] = {}     # seq -> monotonic time it was held (this process only)
        except sqlite3.Error as exc:
            msg = (f"cannot open the result journal {self.path}: {exc}; check that the folder is writable "
                   "and the file is a journal (it holds results not yet in the store: do not delete it)")
            raise StoreError(msg) from exc

    @property
    def count(self) -> int:
        """Results waiting to be forwarded."""
        with self._lock:
            return self._count

    def append(self, result_id: str, payload: dict[str, Any], *, hold: bool = False,
               tally: tuple[int, str] | None = None) -> int:
        """Write one result durably; returns its sequence number once the commit is on disk.

        ``hold``: not forwarded (nor any later entry) until `amend` or `release`, or ``HOLD_MAX_S``.
        ``tally``: (epoch, verdict) counted in the same commit (`tally`).

        Raises:
            JournalFull: ``max_entries`` results are waiting already.
            StoreError: the journal cannot be written (disk full, folder gone); the result is not durable.
        """
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
        with self._lock:
            if self._count >= self.max_entries:
                msg = (f"the result journal {self.path} is full: {self._count} results wait for the statistics "
                       "store; bring the store back (they are forwarded in order) before inspecting more")
                raise JournalFull(msg)
            with self._writing(f"cannot write result {result_id} to the journal"):
                cur = self._conn.execute("INSERT INTO pending (result_id, payload) VALUES (?, ?)", (result_id, text))
                if tally is not None:
                    self._conn.execute("INSERT INTO tally (epoch, verdict, n) VALUES (?, ?, 1) "
                                       "ON CONFLICT (epoch, verdict) DO UPDATE SET n = n + 1", tally)
            self._count += 1
            seq = int(cur.lastrowid or 0)
            if hold:
                self._held[seq] = time.monotonic()
            return seq

    def amend(self, seq: int, payload: dict[str, Any]) -> bool:
        """Replace a waiting entry's rows (its types, once known) and release its hold; durable on return.

        Returns:
            False when the entry is no longer here (a hold that lapsed and was forwarded, or another process
            sharing the journal forwarded it): the store keeps it as it was journalled.

        Raises:
            StoreError: the journal cannot be written; the entry stays as it was (and is released).
        """
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._held.pop(seq, None)
            try:
                cur = self._conn.execute("UPDATE pending SET payload = ? WHERE seq = ?", (text, seq))
            except sqlite3.Error as exc:
                msg = f"cannot amend journal entry {seq} in {self.path}: {exc}; it is forwarded as journalled"
                raise StoreError(msg) from exc
            return cur.rowcount > 0

    def release(self, seq: int) -> None:
        """Let a held entry go to the store as it is."""
        with self._lock:
            self._held.pop(seq, None)

    def tally(self) -> tuple[int, dict[str, int], str | None]:
        """The newest epoch of the counts, its count per verdict and its lot number ((0, {}, None) when nothing
        was ever counted; None: no number recorded for it)."""
        with self._lock:
            row = self._conn.execute("SELECT max(epoch) FROM tally").fetchone()
            if row is None or row[0] is None:
                return 0, {}, None
            epoch = int(row[0])
            rows = self._conn.execute("SELECT verdict, n FROM tally WHERE epoch = ? AND verdict != ?",
                                      (epoch, _EPOCH_MARK)).fetchall()
            named = self._conn.execute("SELECT lot FROM tally_lot WHERE epoch = ?", (epoch,)).fetchone()
        return epoch, {str(v): int(n) for v, n in rows}, str(named[0]) if named is not None else None

    def begin_tally(self, epoch: int, lot: str) -> None:
        """Record that counting ``epoch`` has begun (from zero, or goes on) under lot number ``lot``, and forget
        older epochs' counts.

        Appends may have counted into ``epoch`` already (they take the epoch when the lot changes, this
        write may come after): those counts stay. Called again for the same epoch, it renames its lot.

        Raises:
            StoreError: the journal cannot be written.
        """
        with self._lock, self._writing("cannot start new lot counts in the journal"):
            self._conn.execute("INSERT OR IGNORE INTO tally (epoch, verdict, n) VALUES (?, ?, 0)", (epoch, _EPOCH_MARK))
            self._conn.execute("INSERT OR REPLACE INTO tally_lot (epoch, lot) VALUES (?, ?)", (epoch, lot))
            self._conn.execute("DELETE FROM tally WHERE epoch < ?", (epoch,))
            self._conn.execute("DELETE FROM tally_lot WHERE epoch < ?", (epoch,))

    @property
    def held(self) -> int:
        """Entries held back from the store now (waiting for their types)."""
        with self._lock:
            return len(self._held)

    def peek(self, limit: int) -> list[JournalEntry]:
        """The oldest ``limit`` waiting results, in the order they were appended, up to the oldest held one."""
        with self._lock:
            first_held = self._first_held_locked()
            if first_held is not None:
                rows = self._conn.execute("SELECT seq, result_id, payload FROM pending WHERE seq < ? ORDER BY seq "
                                          "LIMIT ?", (first_held, limit)).fetchall()
                return [JournalEntry(seq=int(s), result_id=str(r), payload=json.loads(p)) for s, r, p in rows]
            rows = self._conn.execute("SELECT seq, result_id, payload FROM pending ORDER BY seq LIMIT ?",
                                      (limit,)).fetchall()
            if not rows:        # another process sharing this journal may have forwarded ours: none wait
                self._count = 0
        return [JournalEntry(seq=int(s), result_id=str(r), payload=json.loads(p)) for s, r, p in rows]

    def _first_held_locked(self) -> int | None:
        """The oldest held entry's seq, after letting go of holds older than ``HOLD_MAX_S``."""
        if not self._held:
            return None
        now = time.monotonic()
        lapsed = [seq for seq, since in self._held.items() if now - since > HOLD_MAX_S]
        for seq in lapsed:
            del self._held[seq]
            logger.warning("journal entry %d was held for its types over %.0f s; it is forwarded untyped", seq,
                           HOLD_MAX_S)
        return min(self._held) if self._held else None

    def remove(self, seqs: list[int]) -> None:
        """Forget results the store has committed."""
        if not seqs:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("DELETE FROM pending WHERE seq = ?", [(s,) for s in seqs])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._count = int(self._conn.execute("SELECT count(*) FROM pending").fetchone()[0])

    def set_aside(self, entry: JournalEntry, reason: str) -> None:
        """Move a result the store refuses for its data out of the queue (kept in table ``set_aside``)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT OR REPLACE INTO set_aside (seq, result_id, payload, reason) "
                                   "VALUES (?, ?, ?, ?)",
                                   (entry.seq, entry.result_id, json.dumps(entry.payload), reason))
                self._conn.execute("DELETE FROM pending WHERE seq = ?", (entry.seq,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._count = int(self._conn.execute("SELECT count(*) FROM pending").fetchone()[0])
        logger.error("result %s set aside in %s (table set_aside): %s", entry.result_id, self.path, reason)

    def note_removed(self, paths: list[str]) -> None:
        """Remember durably that the archive removed these files, until the store's rows forget them.

        Results still waiting here may name them; they are stored without them (`removed_files`), and
        rows already in the store are cleared by the forwarder (`forget_removed` once they are).

        Raises:
            StoreError: the journal cannot be written.
        """
        if not paths:
            return
        with self._lock:
            with self._writing(f"cannot note {len(paths)} removed archive file(s) in the journal"):
                self._conn.executemany("INSERT OR IGNORE INTO removed_files (path) VALUES (?)", [(p,) for p in paths])
            self._removed.update(paths)

    def removed_files(self) -> frozenset[str]:
        """Archive files removed whose rows in the store may still name them."""
        with self._lock:
            return frozenset(self._removed)

    def forget_removed(self, paths: list[str]) -> None:
        """The store's rows no longer name these files: stop remembering them."""
        if not paths:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("DELETE FROM removed_files WHERE path = ?", [(p,) for p in paths])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._removed.difference_update(paths)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _writing(self, failing: str) -> Iterator[None]:
        """One transaction (the caller holds ``_lock``): committed at the end, rolled back on an SQLite error,
        which is raised as a StoreError that says ``failing``, this journal's path and why."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            yield
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            msg = f"{failing} {self.path}: {exc}"
            raise StoreError(msg) from exc
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
