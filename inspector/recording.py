"""What a station does with each result besides showing it: archive FAIL/REVIEW images, record it durably.

Shared by the app and ``inspector run``. `ResultRecorder.record` is a pipeline consumer: it runs on the
pipeline's worker thread. It returns only when the result is **durable**: appended to the local
result journal (`inspector.journal`, one fsync'd SQLite commit, about a millisecond on an SSD),
from where a forwarder thread copies it into the statistics store, in order, and removes it once
the store has committed it. So whatever reports a verdict (the screen, ``inspector run``'s line, a
PLC answer, an MQTT message) reports it after `record` returned, or from a durable listener
(`ResultRecorder.add_durable_listener`), and a SIGKILL can no longer lose a reported result: the
next recorder that opens the same journal forwards what is left.

A locked, full or unreachable store costs nothing but time: results wait in the journal (bounded by
``max_journal``) and are forwarded when the store is back; `ResultRecorder.close` says how many wait,
and where, if it has to leave them.

The lot number and the archive of each recipe are set from another thread (the GUI's); they are read
under a lock. A recorder made with ``count_lot=True`` (the app's) also counts the verdicts of the running lot
in the journal, in the commit that makes each result durable, so a restart mid-lot goes on counting where the
lot was (`lot_counts`, `new_lot`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from inspector import paths
from inspector.errors import StoreError
from inspector.journal import DEFAULT_MAX_ENTRIES, JournalEntry, ResultJournal, journal_path_for
from inspector.results import InspectionResult, VerdictCounts

__all__ = ["DurableListener", "Receipt", "ResultRecorder", "journal_path_of"]

log = logging.getLogger(__name__)

_FORWARD_BATCH: Final = 64
_RETRY_MAX_DELAY_S: Final = 5.0


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """Proof that a result is durable: it survives a crash of this process from now on.

    ``where`` is the journal file (or "not recorded" without a store); the forwarder moves it into
    the store later. ``seq`` orders results within one journal.
    """

    result_id: str
    where: str
    seq: int
    durable_at: float          # time.time() when the journal's commit returned


DurableListener = Callable[[InspectionResult, Receipt], None]


class ResultRecorder:
    """Stamps the lot on each result, archives it by its recipe's policy, and records it durably.

    Args:
        store: an `inspector.store.Store`, or None (results are then only archived; nothing is durable).
        on_warning: called with a sentence when the archive pauses or the store is away; any thread.
        journal_path: the result journal; default beside an SQLite store (``inspector.pending.db``),
            else ``<data dir>/journal/<store name>.pending.db``.
        max_journal: most results that may wait for the store; `record` raises `JournalFull` beyond.
        count_lot: count the running lot's verdicts durably in the journal (`lot_counts`; one station's
            window: a command-line run on the same store leaves them alone).
    """

    def __init__(self, store: Any | None, *, on_warning: Callable[[str], None] | None = None,
                 journal_path: Path | None = None, max_journal: int = DEFAULT_MAX_ENTRIES,
                 count_lot: bool = False) -> None:
        self._store = store
        self._on_warning = on_warning
        self._lock = threading.Lock()
        self._archives: dict[str, Any] = {}     # recipe name -> inspector.archive.Archive
        self._lot = ""
        self._listeners: tuple[DurableListener, ...] = ()
        self._journal: ResultJournal | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._forwarded = 0
        self._last_error: StoreError | None = None
        self._thread: threading.Thread | None = None
        self._journal_path: Path | None = None
        self._count_lot = count_lot
        self._lot_epoch = 0                   # the running lot's counts (`new_lot` starts the next epoch)
        self._lot_counts = VerdictCounts()
        self._epoch_to_write: int | None = None     # begun by `new_lot` or renamed by `set_lot`, not yet written
        self._counted_lot: str | None = None  # the lot number the journal's counts were kept under
        if store is not None:
            self._journal = ResultJournal(journal_path or _default_journal_path(store), max_entries=max_journal)
            self._journal_path = self._journal.path
            if count_lot:
                self._lot_epoch, counted, self._counted_lot = self._journal.tally()
                self._lot_counts = VerdictCounts.from_counts(counted)
            if self._journal.count:
                log.warning("%d result(s) left in %s by an earlier run; forwarding them to %s",
                            self._journal.count, self._journal.path, getattr(store, "display_name", store))
            self._thread = threading.Thread(target=self._forward_loop, name="inspector-journal-forwarder",
                                            daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ state

    @property
    def lot(self) -> str:
        with self._lock:
            return self._lot

    def set_lot(self, lot: str) -> None:
        """The lot number written with every result from now on ("" for none)."""
        with self._lock:
            changed = self._lot != lot.strip()
            self._lot = lot.strip()
            if changed and self._count_lot:
                self._epoch_to_write = self._lot_epoch      # the counts' lot number, written by the forwarder
        if changed:
            self._wake.set()

    @property
    def counted_lot(self) -> str | None:
        """The lot number the journal's counts were kept under when this recorder opened it (None: none kept,
        or a journal from before lot numbers were kept with the counts)."""
        return self._counted_lot

    @property
    def lot_counts(self) -> VerdictCounts:
        """The verdicts recorded since the last `new_lot` (also before a restart: read back from the journal);
        empty unless made with ``count_lot``."""
        with self._lock:
            return self._lot_counts

    def new_lot(self) -> None:
        """Start the lot counts afresh; returns at once (any thread: the journal is written by the forwarder)."""
        with self._lock:
            self._lot_epoch += 1
            self._lot_counts = VerdictCounts()
            self._epoch_to_write = self._lot_epoch
        self._wake.set()

    @property
    def journal_path(self) -> Path | None:
        """The result journal's file (also after `close`), or None without a store."""
        return self._journal_path

    @property
    def pending(self) -> int:
        """Results durable in the journal but not yet in the store."""
        return self._journal.count if self._journal is not None else 0

    @property
    def forwarded_count(self) -> int:
        """Results this recorder has moved from the journal into the store (replays included)."""
        with self._lock:
            return self._forwarded

    @property
    def last_error(self) -> StoreError | None:
        """Why the store did not take the last batch (None once it did)."""
        with self._lock:
            return self._last_error

    def add_durable_listener(self, listener: DurableListener) -> None:
        """Call ``listener(result, receipt)`` for every result once it is durable (on the worker thread).

        This is where a PLC answer or an MQTT publish belongs: it can never announce a verdict that a
        crash then loses. Listeners must be quick; one that raises is logged and the others still run.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def use(self, inspector: Any, *, archive: bool = True) -> None:
        """Give an inspector (a `Station` has ``.recipe``) its defect typer and prepare its recipe's archive.

        Called before the recipe's first result (in the app: on the GUI thread when a recipe is loaded).
        ``archive=False`` (``inspector run --no-archive``) keeps no images but still types the defects.
        """
        recipe = getattr(inspector, "recipe", None)
        if recipe is not None and hasattr(inspector, "attach_typer"):
            self._attach_typer(inspector, recipe)
        if not archive or recipe is None or not getattr(getattr(recipe, "archive", None), "enabled", False):
            return
        with self._lock:
            if recipe.name in self._archives:
                return
        from inspector.archive import Archive, ArchivePolicy

        review, fail, pixel = getattr(inspector, "thresholds", (None, None, None))
        try:
            opened = Archive(
                ArchivePolicy(
                    directory=recipe.archive_dir(),
                    save_pass_every=recipe.archive.save_pass_every,
                    max_bytes=int(recipe.archive.max_size_mb * 1024 * 1024),
                    # the same colour range as the station view, so archived overlays read the same
                    vmin=0.5 * pixel if pixel else None,
                    vmax=1.5 * pixel if pixel else None,
                    owner=recipe.name,
                ),
                on_warning=self._on_warning,
                on_removed=self._images_removed if self._journal is not None else None,
            )
        except Exception as exc:   # a folder that cannot be made, a bad policy: record without images
            message = f"archive of recipe {recipe.name} unavailable ({exc}); results are recorded without images"
            log.warning(message)
            if self._on_warning is not None:
                self._on_warning(message)
            return
        with self._lock:
            self._archives[recipe.name] = opened

    # ------------------------------------------------------------------ recording

    def record(self, result: InspectionResult) -> Receipt | None:
        """Pipeline consumer (worker thread): archive, then make the result durable; returns its receipt.

        Returns None only without a store. Report the verdict after this returns. A result whose typing is
        pending (``result.typing``: a triggered station answers first) is journalled untyped and held back from
        the store until it is typed; its entry then takes the types.

        Raises:
            JournalFull: too many results wait for the store; this one is NOT recorded.
            StoreError: the journal cannot be written (disk full); this one is NOT recorded.
        """
        from inspector.store import result_rows

        with self._lock:
            lot, archive, listeners = self._lot, self._archives.get(result.recipe), self._listeners
            epoch = self._lot_epoch if self._count_lot else None
        if lot and not result.lot:
            result = dataclasses.replace(result, lot=lot)
        archived = archive.submit(result) if archive is not None else None
        if self._journal is None:
            self._counted(epoch, result)
            return None
        result_id = uuid.uuid4().hex
        files = {"image_path": str(archived.image) if archived and archived.image else None,
                 "overlay_path": str(archived.overlay) if archived and archived.overlay else None}
        payload = result_rows(result, **files)
        pending = result.typing
        hold = pending is not None and not pending.done      # typed after the answer: the store waits for it
        seq = self._journal.append(result_id, payload, hold=hold,
                                   tally=(epoch, result.verdict.value) if epoch is not None else None)
        self._counted(epoch, result)
        receipt = Receipt(result_id=result_id, where=str(self._journal.path), seq=seq, durable_at=time.time())
        if pending is not None:
            later = pending      # (bound for the callback: the narrowed name)
            pending.add_done_callback(lambda _regions: self._typed(seq, later.applied(result), files))
        self._wake.set()
        for listener in listeners:
            try:
                listener(result, receipt)
            except Exception:
                log.exception("durable listener %r failed", listener)
        return receipt

    def _counted(self, epoch: int | None, result: InspectionResult) -> None:
        with self._lock:
            if epoch is not None and epoch == self._lot_epoch:    # (a New lot since: counted in the old one)
                self._lot_counts = self._lot_counts.add(result.verdict)

    def _typed(self, seq: int, typed: InspectionResult, files: dict[str, str | None]) -> None:
        """A held result is typed (``typed``: its regions and the typing's time): its journal entry takes them and
        goes on to the store."""
        from inspector.store import result_rows

        journal = self._journal
        if journal is None:
            return
        try:
            if not journal.amend(seq, result_rows(typed, **files)):
                log.warning("frame %s of %s reached the store before its defect types; it is stored untyped",
                            typed.frame_id, typed.recipe)
        except StoreError as exc:
            log.warning("%s", exc)
        finally:
            journal.release(seq)
            self._wake.set()

    def wait_stored(self, timeout: float | None = None) -> bool:
        """Wait until the journal is empty (every result in the store, no row naming a removed archive file);
        False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._journal is not None and (self._journal.count or self._journal.removed_files()):
            if self._thread is None or not self._thread.is_alive():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def close_archives(self) -> None:
        """Close every archive (waits for queued images to be written)."""
        with self._lock:
            archives, self._archives = list(self._archives.values()), {}
        for archive in archives:
            try:
                archive.close()
            except Exception:
                log.exception("closing an archive failed")

    def _attach_typer(self, inspector: Any, recipe: Any) -> None:
        """Give the station a defect typer that learns from the labels in this recorder's store."""
        from inspector.defect_typing import DefectTyper, typer_config
        from inspector.recipe import Recipe

        if self._store is None:
            return
        recipe_name = recipe.name
        try:
            config = typer_config(recipe) if isinstance(recipe, Recipe) else None   # a station built in code
            inspector.attach_typer(DefectTyper(self._store, recipe_name, config=config))
        except Exception as exc:   # typing is an aid: a store that cannot be read must not stop inspection
            message = f"defect typing of recipe {recipe_name} unavailable ({exc}); regions are not typed"
            log.warning(message)
            if self._on_warning is not None:
                self._on_warning(message)

    def close(self, timeout: float = 10.0) -> int:
        """Close the archives, forward what the journal holds (up to ``timeout`` s), stop the forwarder.

        Returns:
            How many results still wait in the journal (`journal_path`); they are forwarded by the next
            recorder that opens it. 0 when everything is in the store.
        """
        self.close_archives()
        if self._journal is None:
            return 0
        self.wait_stored(timeout)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 5.0)
        self._write_epoch(self._journal)
        left = self._journal.count
        self._journal.close()
        self._journal = None
        return left

    # ------------------------------------------------------------------ the forwarder

    def _forward_loop(self) -> None:
        assert self._journal is not None and self._store is not None
        journal = self._journal
        attempt = 0
        while not self._stop.is_set():
            self._write_epoch(journal)
            entries = journal.peek(_FORWARD_BATCH)
            removed = journal.removed_files()
            if not entries and not removed:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if entries:
                    self._forward(journal, entries, removed)
                else:       # every result is in the store: its rows stop naming the files the archive removed
                    self._store.forget_images(sorted(removed))
                    journal.forget_removed(list(removed))
            except StoreError as exc:
                attempt += 1
                with self._lock:
                    self._last_error = exc
                if attempt == 1 or attempt % 20 == 0:
                    message = (f"{exc}; {journal.count} result(s) wait in {journal.path} and are forwarded when "
                               "the store is back")
                    log.warning(message)
                    if self._on_warning is not None:
                        self._on_warning(message)
                self._stop.wait(min(0.05 * 2 ** min(attempt, 10), _RETRY_MAX_DELAY_S))
                continue
            except Exception:        # a bug must not end the forwarder silently
                log.exception("forwarding the result journal failed")
                self._stop.wait(1.0)
                continue
            if attempt:
                log.info("statistics store is writable again; forwarding the journal")
            attempt = 0
            with self._lock:
                self._last_error = None

    def _write_epoch(self, journal: ResultJournal) -> None:
        """Make a `new_lot`, or the counts' new lot number (`set_lot`), durable (forwarder thread, and `close`)."""
        with self._lock:
            epoch, self._epoch_to_write, lot = self._epoch_to_write, None, self._lot
        if epoch is None:
            return
        try:
            journal.begin_tally(epoch, lot)
        except StoreError as exc:    # the counts of the new lot are still kept with each result
            log.warning("%s", exc)

    def _forward(self, journal: ResultJournal, entries: list[JournalEntry], removed: frozenset[str]) -> None:
        assert self._store is not None
        if removed:      # results recorded before the archive's cap removed their files are stored without them
            entries = [_without_files(entry, removed) for entry in entries]
        try:
            self._store.insert_results([(e.result_id, e.payload) for e in entries])
        except StoreError as exc:
            if getattr(exc, "retry", True):
                raise
            # The database refuses the data: find the bad ones, keep the rest flowing.
            for entry in entries:
                try:
                    self._store.insert_results([(entry.result_id, entry.payload)])
                except StoreError as one:
                    if getattr(one, "retry", True):
                        raise
                    journal.set_aside(entry, str(one))
                    continue
                journal.remove([entry.seq])
                self._count_forwarded(1)
            return
        journal.remove([e.seq for e in entries])
        self._count_forwarded(len(entries))

    def _count_forwarded(self, n: int) -> None:
        with self._lock:
            self._forwarded += n

    def _images_removed(self, removed: list[Path]) -> None:
        """The archive trimmed these files: noted in the journal (archive thread; never waits for the store).

        The forwarder then stores waiting results without them and clears the store's rows that name them,
        also after a crash or with the store away for a while.
        """
        journal = self._journal
        if journal is None:
            return
        try:
            journal.note_removed([str(p) for p in removed])
        except StoreError as exc:
            log.warning("%s", exc)
        self._wake.set()


def _without_files(entry: JournalEntry, removed: frozenset[str]) -> JournalEntry:
    """The entry with its archive paths cleared where the archive removed the file."""
    inspection = entry.payload.get("inspection", {})
    gone = {key: None for key in ("image_path", "overlay_path") if inspection.get(key) in removed}
    if not gone:
        return entry
    return dataclasses.replace(entry, payload={**entry.payload, "inspection": {**inspection, **gone}})


def journal_path_of(store: Any) -> Path:
    """Where a recorder on ``store`` keeps its journal by default (nothing is created here).

    Beside an SQLite file (``inspector.pending.db``), else ``<data dir>/journal/<store name>.pending.db``.
    """
    url = getattr(store, "url", None)
    database = getattr(url, "database", None)
    if url is not None and url.get_backend_name() == "sqlite" and database:
        return journal_path_for(Path(database))
    name = paths.safe_name(str(getattr(store, "display_name", "store")))
    return paths.data_dir() / "journal" / f"{name}.pending.db"


def _default_journal_path(store: Any) -> Path:
    path = journal_path_of(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
