"""Reading files that come from outside with a size limit checked before a byte is read.

A recipe, a model's ``model.json`` or its tensors could be anything a user (or an attacker) named:
``/dev/zero`` grows without end, a FIFO blocks ``open`` forever, a socket cannot be read. So files are
opened non-blocking, must be regular files, and their size is checked against the caller's limit
before reading; the read itself stops one byte past the limit, in case the file grows meanwhile.

No torch here: the engine's fast paths (``inspector --help``, recipe loading) import this module.

Example:
    >>> data = read_bounded(Path("recipes/fryum_demo.yaml"), 1 << 20, what="recipe")   # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["FileTooLarge", "NotARegularFile", "read_bounded"]


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
