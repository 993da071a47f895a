"""Reading files that come from outside with a size limit, reading versioned JSON, and writing files atomically.

``read_bounded``:
A recipe, a model's ``model.json`` or its tensors could be anything a user (or an attacker) named:
``/dev/zero`` grows without end, a FIFO blocks ``open`` forever, a socket cannot be read. So files are
opened non-blocking, must be regular files, and their size is checked against the caller's limit
before reading; the read itself stops one byte past the limit, in case the file grows meanwhile.

No torch here: the engine's fast paths (``inspector --help``, recipe loading) import this module.

``read_versioned_json``: the one reader of this project's JSON files that carry a ``format`` and a
``format_version`` (a saved model's ``model.json``, an ONNX export's ``model.onnx.json``): bounded read,
JSON, the format name and a version this program knows, each failure a message naming the file and the fix.

``atomic_write``: the one way this project replaces a file (recipes, saved models, reports, exports,
sidecars): a temporary file beside the target, flushed to disk, then ``os.replace``, so a reader or a crash
sees either the old file or the whole new one, never half of it. ``atomic_open`` is the same for a writer
that streams (exports of millions of rows) instead of holding the whole file in memory.

Example:
    >>> data = read_bounded(Path("recipes/fryum_demo.yaml"), 1 << 20, what="recipe")   # doctest: +SKIP
    >>> atomic_write(Path("out/report.html"), "<html>...</html>")                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

__all__ = ["NEW_FILE_MODE", "FileTooLarge", "NotARegularFile", "atomic_open", "atomic_open_text", "atomic_write",
           "read_bounded",
           "read_versioned_json"]

NEW_FILE_MODE = 0o644   # a new file: readable by the station's other accounts (a temporary file is 0600)


class NotARegularFile(OSError):
    """The path is a device, FIFO, socket or folder, not a file that can be read to its end."""


class FileTooLarge(OSError):
    """The file is larger than the caller allows."""


def read_bounded(path: Path, limit: int, *, what: str = "file") -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes.

    Args:
        path: the file.
        limit: the most bytes accepted.
        what: what the file is for messages ("recipe", "model manifest").

    Raises:
        FileNotFoundError, PermissionError: as ``open``.
        IsADirectoryError: ``path`` is a folder.
        NotARegularFile: a device (``/dev/zero``), FIFO or socket; nothing was read.
        FileTooLarge: more than ``limit`` bytes; nothing was read.
    """
    path = Path(path)
    # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{path} is a folder, not a {what} file")
        if not stat.S_ISREG(info.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a file")
            msg = f"{path} is {kind}, not a regular {what} file"
            raise NotARegularFile(errno.EINVAL, msg)
        if info.st_size > limit:
            msg = f"{path} has {info.st_size} bytes; a {what} file may have at most {limit}"
            raise FileTooLarge(errno.EFBIG, msg)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            msg = f"{path} grew past {limit} bytes while it was read; a {what} file may have at most {limit}"
            raise FileTooLarge(errno.EFBIG, msg)
        return b"".join(chunks)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path, *, mode: int | None = None, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` when the ``with`` block ends without an error.

    For writers that stream (a CSV export of millions of rows, a Parquet writer); ``atomic_write`` is
    this with one ``write``. Same arguments and guarantees as ``atomic_write``: when the block raises,
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            mode = NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the OS allows it (POSIX); best effort."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open_text(path: Path, *, mode: int | None = None, fsync: bool = True) -> Iterator[TextIO]:
    """`atomic_open` for text: UTF-8, no newline translation (CSV writers want ``newline=""``)."""
    with atomic_open(path, mode=mode, fsync=fsync) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield text
            text.flush()
        finally:
            text.detach()              # atomic_open syncs and closes the binary handle (or drops it)


def read_versioned_json(
    path: Path,
    *,
    what: str,
    format_name: str,
    supported: int,
    limit: int,
    fix: str,
    missing: str,
    finite: bool = True,
) -> dict[str, Any]:
    """The JSON object in ``path``, checked to be of ``format_name`` at a version up to ``supported``.

    Args:
        path: the file.
        what: what it is, for messages ("model manifest", "ONNX description").
        format_name: the value its ``"format"`` key must have.
        supported: the newest ``"format_version"`` this program reads (an int; older ones are read).
        limit: the most bytes accepted (``read_bounded``).
        fix: what the user should do about a bad file ("save the model again").
        missing: what the user should do when the file does not exist, after "not found; ".
        finite: refuse ``NaN`` and ``Infinity`` (a number that compares false with everything must not
            reach a threshold); False reads them, for reports of measured differences.

    Raises:
        FileNotFoundError: ``{path} not found; {missing}``.
        ValueError: unreadable (device, FIFO, too large, permissions), not UTF-8 JSON, not finite, not an
            object of ``format_name``, or a version that is not an int or is newer than ``supported``;
            each message starts with the path and ends with ``fix``.
    """
    path = Path(path)
    if not path.exists():
        msg = f"{path} not found; {missing}"
        raise FileNotFoundError(msg)

    def refuse(name: str) -> Any:
        msg = f"holds {name}: every number of a {what} must be finite"
        raise _NonFinite(msg)

    try:
        text = read_bounded(path, limit, what=what).decode("utf-8")
        data = json.loads(text, parse_constant=refuse if finite else None)
    except _NonFinite as exc:
        msg = f"{path} {exc}; {fix}"
        raise ValueError(msg) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path} is corrupt or truncated ({exc}); {fix}"
        raise ValueError(msg) from exc
    except OSError as exc:
        msg = f"{path}: cannot read the {what}: {exc.strerror or exc}"
        raise ValueError(msg) from exc
    if not isinstance(data, dict) or data.get("format") != format_name:
        msg = f"{path} is not an inspector {what} (no \"format\": \"{format_name}\")"
        raise ValueError(msg)
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > supported:
        msg = (f"{path} has format version {version!r}; this program reads up to {supported}: "
               f"update the program, or {fix}")
        raise ValueError(msg)
    return data


class _NonFinite(ValueError):
    """A NaN or Infinity constant in a JSON file that must hold finite numbers only."""


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` so that the name only ever holds a complete file.

    Args:
        path: the target; its folder must exist (the temporary file goes there: ``os.replace`` is atomic
            only within one file system). Its name starts with a dot, so folder scans skip it.
        data: bytes, or text written as UTF-8 with no newline translation.
        mode: permission bits of the result; None keeps those of an existing ``path``, and
            ``NEW_FILE_MODE`` for a new one.
        fsync: flush the data to disk before the rename, and the folder after it, so a power cut
            cannot bring the old file back (off only for caches that may be lost).

    Raises:
        OSError: as ``open``/``write``/``os.replace`` (full disk, read-only folder); the temporary file is
            removed and ``path`` is left as it was.
    """
    with atomic_open(path, mode=mode, fsync=fsync) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
