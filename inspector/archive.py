"""The image archive: FAIL and REVIEW frames (and every Nth PASS) saved with their heatmap overlay, and the
ERROR frames that have a picture (the model failed on them: a reviewer and the recipe engineer look at them later).

Files are written by the archive's own thread, so `Archive.submit` is quick enough to be a pipeline
consumer. Every file appears atomically (``models.files``: written under a temporary name in the same
folder, then ``os.replace``): a crash leaves no partial image under a final name. The folder is kept under a size
cap, oldest files removed first, and only files the archive wrote itself: each archive (one per
recipe) lists what it wrote in its manifest, ``<directory>/.inspector-archive-<recipe>.jsonl``, so two
recipes sharing one folder each keep their own cap and neither touches the other's images, nor
anyone else's photos in dated folders. ``on_removed`` hears of every frame the cap removed (the
recorder clears the store's paths to them). A failed write (disk full, folder gone, read-only) pauses the archive
with a warning; inspection goes on, and archiving tries again after ``retry_after_s``.

Layout::

    <directory>/2026-11-23/101502-123_bracket-a_000042_fail.jpg
    <directory>/2026-11-23/101502-123_bracket-a_000042_fail_overlay.jpg

Example:
    >>> archive = Archive(ArchivePolicy(directory=Path("archive"), save_pass_every=100))  # doctest: +SKIP
    >>> paths = archive.submit(result)   # ArchivedPaths(image, overlay) or None
    >>> archive.close()
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Literal, NamedTuple, Self

import cv2
import numpy as np

from inspector.overlay import render_overlay
from inspector.paths import safe_name
from inspector.results import InspectionResult, Verdict
from models.files import atomic_open, atomic_write

__all__ = ["Archive", "ArchivePolicy", "ArchivedPaths"]

logger = logging.getLogger(__name__)

_DAY_DIR: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, kw_only=True)
class ArchivePolicy:
    """What to archive, where, and how much disk it may use."""

    enabled: bool = True
    directory: Path                           # created when missing
    save_pass_every: int = 0                  # also keep every Nth PASS frame; 0 = no PASS frames
    max_bytes: int = 2 * 1024**3              # size cap of the archive's own files; oldest go first
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 92                    # cv2.IMWRITE_JPEG_QUALITY, 0-100
    # Heatmap colour range of the overlays: set from the recipe (e.g. 0.5x and 1.5x the pixel
    # threshold) so colours mean the same in every file; None = each map's own min/max.
    vmin: float | None = None
    vmax: float | None = None
    retry_after_s: float = 30.0               # after a failed write, skip archiving this long
    queue_size: int = 64                      # frames waiting for the writer; more are skipped
    owner: str = ""                           # whose files these are (the recipe): names the manifest

    def __post_init__(self) -> None:
        if self.save_pass_every < 0:
            msg = f"archive.save_pass_every must be 0 (none) or a positive count, got {self.save_pass_every}"
            raise ValueError(msg)
        if self.max_bytes <= 0:
            msg = f"archive.max_bytes must be a positive number of bytes, got {self.max_bytes}"
            raise ValueError(msg)
        if self.image_format not in ("jpg", "png"):
            msg = f"archive.image_format must be 'jpg' or 'png', got {self.image_format!r}"
            raise ValueError(msg)
        if not 0 <= self.jpeg_quality <= 100:
            msg = f"archive.jpeg_quality must be in 0-100, got {self.jpeg_quality}"
            raise ValueError(msg)
        if self.vmin is not None and self.vmax is not None and not self.vmax > self.vmin:
            msg = f"archive.vmin ({self.vmin}) must be below archive.vmax ({self.vmax})"
            raise ValueError(msg)
        if self.queue_size < 1 or self.retry_after_s < 0:
            msg = "archive.queue_size must be >= 1 and archive.retry_after_s >= 0"
            raise ValueError(msg)


def _temporary_name(owner: str) -> re.Pattern[str]:
    """The names of the temporaries `atomic_open` makes for this recipe's archive files (`Archive._paths_for`):
    ``.<HHMMSS-mmm>_<recipe>_<frame>_<verdict>[_overlay].<ext>.<mkstemp's 8 characters>.tmp``; nothing else."""
    recipe = re.escape(safe_name(owner, max_length=48))
    return re.compile(rf"\.\d{{6}}-\d{{3}}_{recipe}_\d{{6,}}_(fail|review|pass)(_overlay)?\.(jpg|png)"
                      r"\.[A-Za-z0-9_]{8}\.tmp")


class ArchivedPaths(NamedTuple):
    """Where the archive writes a frame (the files appear once the writer gets to them)."""

    image: Path
    overlay: Path | None                      # None when the result has no anomaly map


@dataclass(frozen=True, kw_only=True)
class _Job:
    result: InspectionResult
    paths: ArchivedPaths


def _write_file(handle: BinaryIO, data: bytes) -> None:
    """The one place an archived image's bytes reach the disk; tests replace it to mock a full disk (hardware)."""
    handle.write(data)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``models.files.atomic_open``: the final name only ever holds the
    complete file; the temporary name starts with a dot, so readers and the size-cap scan skip it."""
    with atomic_open(path) as handle:
        _write_file(handle, data)


class Archive:
    """Saves FAIL/REVIEW frames (and every Nth PASS), with overlays, and ERROR frames with a picture, on its own
    writer thread.

    Args:
        policy: what to keep, where, and the size cap.
        on_warning: called with one sentence when archiving pauses (disk full, not writable) or the
            writer falls behind; called from the writer thread or the submitting thread.

        on_removed: called with the files of each frame the size cap removed (writer thread).

    Use `close` (or a ``with`` block) to write what is queued and join the writer thread.
    """

    def __init__(self, policy: ArchivePolicy, on_warning: Callable[[str], None] | None = None,
                 on_removed: Callable[[list[Path]], None] | None = None) -> None:
        self.policy = policy
        self._on_warning = on_warning
        self._on_removed = on_removed
        self._directory = Path(policy.directory)
        self._owner = safe_name(policy.owner or "archive", max_length=64)
        self.manifest_path = self._directory / f".inspector-archive-{self._owner}.jsonl"
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=policy.queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._pass_seen = 0
        self._paused_until = 0.0                 # time.monotonic(); archiving skipped before it
        self._failing = False                    # last write failed; warn again only after a success
        self._warned_full = False
        self._closed = False
        # One entry per archived frame (its image and overlay go together), oldest first.
        self._files: collections.deque[tuple[tuple[Path, ...], int]] = collections.deque()
        self._total_bytes = 0
        self.saved = 0                           # frames written
        self.skipped = 0                         # frames not written: paused, queue full, or failed
        self._thread: threading.Thread | None = None
        if policy.enabled:
            self._pending = 1                    # the start-up scan: flush() waits for it too
            self._thread = threading.Thread(target=self._run, name="inspector-archive", daemon=True)
            self._thread.start()

    # ---- any thread -------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while archiving is paused after a failed write."""
        return time.monotonic() < self._paused_until

    @property
    def total_bytes(self) -> int:
        """Bytes of archived files the writer knows of (after its start-up scan)."""
        with self._lock:
            return self._total_bytes

    def submit(self, result: InspectionResult) -> ArchivedPaths | None:
        """Queue a result for archiving if the policy keeps it.

        Returns:
            The paths the writer will use, or None when the frame is not archived (a PASS not due, no
            image (an unreadable file's ERROR), archiving disabled, paused or falling behind).
        """
        if self._thread is None or self._closed or result.image_bgr is None:
            return None
        if result.verdict is Verdict.PASS:
            if self.policy.save_pass_every <= 0:
                return None
            with self._lock:
                self._pass_seen += 1
                if self._pass_seen % self.policy.save_pass_every:
                    return None
        elif result.verdict not in (Verdict.FAIL, Verdict.REVIEW, Verdict.ERROR):
            return None
        if self.paused:
            with self._lock:
                self.skipped += 1
            return None
        paths = self._paths_for(result)
        with self._lock:
            self._pending += 1
        try:
            self._queue.put_nowait(_Job(result=result, paths=paths))
        except queue.Full:
            with self._lock:
                self._pending -= 1
                self.skipped += 1
                warn, self._warned_full = not self._warned_full, True
            if warn:
                self._warn(
                    f"archive writer in {self._directory} falls behind ({self.policy.queue_size} frames "
                    f"queued); frames are skipped until it catches up"
                )
            return None
        return paths

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the start-up scan and every submitted frame to be written (or skipped).

        Returns:
            False on timeout.
        """
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop and join the writer thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.error("archive writer did not finish within %s s", timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _paths_for(self, result: InspectionResult) -> ArchivedPaths:
        seconds = int(result.timestamp)
        millis = int(round((result.timestamp - seconds) * 1000)) % 1000
        local = time.localtime(result.timestamp)
        day = time.strftime("%Y-%m-%d", local)
        stem = (
            f"{time.strftime('%H%M%S', local)}-{millis:03d}_{safe_name(result.recipe, max_length=48)}_"
            f"{max(0, int(result.frame_id)):06d}_{result.verdict.value.lower()}"
        )
        ext = self.policy.image_format
        folder = self._directory / day
        overlay = folder / f"{stem}_overlay.{ext}" if result.anomaly_map is not None else None
        return ArchivedPaths(image=folder / f"{stem}.{ext}", overlay=overlay)

    def _warn(self, message: str) -> None:
        logger.warning("%s", message)
        if self._on_warning is not None:
            try:
                self._on_warning(message)
            except Exception:
                logger.exception("archive on_warning callback raised")

    # ---- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._scan()
        except OSError as exc:
            logger.warning("archive %s could not be scanned: %s", self._directory, exc)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._write(job)
            except Exception:
                logger.exception("archiving %s failed", job.paths.image)
                with self._lock:
                    self.skipped += 1
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _write(self, job: _Job) -> None:
        if self.paused:
            with self._lock:
                self.skipped += 1
            return
        result, paths = job.result, job.paths
        blobs = [(paths.image, self._encode(result.image_bgr))]   # type: ignore[arg-type]
        if paths.overlay is not None and result.anomaly_map is not None and result.image_bgr is not None:
            anomaly_map = result.anomaly_map
            vmin = self.policy.vmin if self.policy.vmin is not None else float(np.nanmin(anomaly_map))
            vmax = self.policy.vmax if self.policy.vmax is not None else float(np.nanmax(anomaly_map))
            vmax = max(vmax, vmin + 1e-6)
            overlay = render_overlay(
                result.image_bgr, anomaly_map, vmin=vmin, vmax=vmax, regions=result.regions
            )
            blobs.append((paths.overlay, self._encode(overlay)))
        written: list[tuple[Path, int]] = []
        try:
            paths.image.parent.mkdir(parents=True, exist_ok=True)
            for path, data in blobs:
                _write_atomic(path, data)
                written.append((path, len(data)))
        except OSError as exc:
            for path, _ in written:               # no half-archived frame
                path.unlink(missing_ok=True)
            self._paused_until = time.monotonic() + self.policy.retry_after_s
            with self._lock:
                self.skipped += 1
                warn, self._failing = not self._failing, True
            reason = exc.strerror or str(exc)
            if warn:
                self._warn(
                    f"archive paused: cannot write {paths.image.name} in {paths.image.parent} ({reason}); "
                    f"inspection goes on, archiving retries in {self.policy.retry_after_s:g} s"
                )
            else:
                logger.info("archive still cannot write in %s (%s)", paths.image.parent, reason)
            return
        with self._lock:
            if self._failing:
                logger.info("archive resumed writing in %s", self._directory)
            self._failing = False
            self.saved += 1
            size = sum(n for _, n in written)
            self._files.append((tuple(p for p, _ in written), size))
            self._total_bytes += size
        self._note("add", tuple(p for p, _ in written), size)
        self._trim(keep=1)

    def _encode(self, image_bgr: np.ndarray) -> bytes:
        if self.policy.image_format == "jpg":
            ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.policy.jpeg_quality])
        else:
            ok, buffer = cv2.imencode(".png", image_bgr)
        if not ok:
            msg = (
                f"OpenCV could not encode a {image_bgr.shape} {image_bgr.dtype} image "
                f"as {self.policy.image_format}"
            )
            raise ValueError(msg)
        return buffer.tobytes()

    def _trim(self, *, keep: int) -> None:
        """Remove the oldest frames until under the cap, never the ``keep`` newest (just written)."""
        while True:
            with self._lock:
                if self._total_bytes <= self.policy.max_bytes or len(self._files) <= keep:
                    return
                paths, size = self._files.popleft()
                self._total_bytes -= size
            for path in paths:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    logger.warning("archive could not remove %s: %s", path, exc)
            self._note("del", paths, size)
            if self._on_removed is not None:
                try:
                    self._on_removed(list(paths))
                except Exception:
                    logger.exception("archive on_removed callback raised")
            try:
                paths[0].parent.rmdir()           # only succeeds once the day folder is empty
            except OSError:
                pass

    def _note(self, op: str, paths: tuple[Path, ...], size: int) -> None:
        """Append one line to the manifest: what this archive wrote ("add") or removed ("del")."""
        line = json.dumps({"op": op, "files": [p.relative_to(self._directory).as_posix() for p in paths],
                           "bytes": size})
        try:
            with open(self.manifest_path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:     # the file is then never trimmed: kept, never someone else's removed
            logger.warning("archive could not update its manifest %s: %s", self.manifest_path, exc)

    def _read_manifest(self) -> list[tuple[Path, ...]]:
        """The frames this archive wrote and has not removed, oldest first (from its manifest)."""
        frames: dict[tuple[str, ...], None] = {}
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                entry = json.loads(line)
                files = tuple(str(f) for f in entry["files"])
                op = entry["op"]
            except (ValueError, KeyError, TypeError):
                logger.warning("%s line %d is not a manifest entry; skipped", self.manifest_path, number)
                continue
            if any(Path(f).is_absolute() or ".." in Path(f).parts for f in files):
                logger.warning("%s line %d names a file outside the archive; skipped", self.manifest_path, number)
                continue
            if op == "add":
                frames[files] = None
            elif op == "del":
                frames.pop(files, None)
        return [tuple(self._directory / f for f in files) for files in frames]

    def _scan(self) -> None:
        """Learn the frames this archive wrote before (its manifest), oldest first; drop its stale temp files.

        Files the manifest does not list (another recipe's, someone's photos, archives of older
        versions without a manifest) are never counted nor removed.
        """
        if not self._directory.is_dir():
            return
        ours = _temporary_name(self.policy.owner) if self.policy.owner else None
        for day in self._directory.iterdir():
            if not (day.is_dir() and _DAY_DIR.match(day.name)) or ours is None:
                continue
            for path in day.iterdir():
                # left by our own crash mid-write: exactly the temporary name atomic_open gives our file
                if ours.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
        found: list[tuple[tuple[Path, ...], int]] = []
        for files in self._read_manifest():
            present = [(p, p.stat().st_size) for p in files if p.is_file() and not p.is_symlink()]
            if present:
                found.append((tuple(p for p, _ in present), sum(n for _, n in present)))
        with self._lock:
            # The writer thread scans before its first write, so everything found is older.
            self._files.extendleft(reversed(found))
            self._total_bytes += sum(size for _, size in found)
        self._compact_manifest(found)
        self._trim(keep=0)

    def _compact_manifest(self, found: list[tuple[tuple[Path, ...], int]]) -> None:
        """Rewrite the manifest with only the frames still there (atomically)."""
        lines = "".join(json.dumps({"op": "add", "files": [p.relative_to(self._directory).as_posix() for p in paths],
                                    "bytes": size}) + "\n" for paths, size in found)
        if not found and not self.manifest_path.exists():
            return
        try:
            atomic_write(self.manifest_path, lines)
        except OSError as exc:
            logger.warning("archive could not rewrite its manifest %s: %s", self.manifest_path, exc)
