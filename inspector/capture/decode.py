"""Image files: decoding one as 8-bit BGR (refusing what cannot be a part image) and listing a folder's.

`load_image` checks the size from the header before decoding (a decompression bomb is refused unread),
reads regular files only, with a size limit, and works on non-ASCII paths. `image_files` and
`iter_image_files` list a folder's images recursively in natural order (``img2`` before ``img10``).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np

from inspector.errors import FrameDecodeError
from models.files import FileTooLarge, NotARegularFile, read_bounded

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "image_files",
    "iter_image_files",
    "load_image",
]


# File types OpenCV's imcodecs decode in the wheels we ship (lower case, with the dot).
IMAGE_EXTENSIONS: Final = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".gif"}
)
# One DINOv2 patch (14 px): anything smaller cannot be a part image, usually a thumbnail or a broken file.
MIN_IMAGE_SIDE: Final = 14
# 100 megapixels: ~300 MB as BGR uint8. Above this a "photo" is a mistake or a decompression bomb.
MAX_IMAGE_PIXELS: Final = 100_000_000
# Largest image file read: 100 MP of 16-bit RGB uncompressed is 600 MB; anything bigger is not a part image.
MAX_IMAGE_FILE_BYTES: Final = 1 << 30


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as 8-bit BGR, refusing what cannot be a part image.

    Decodes with ``cv2.imdecode(np.fromfile(path))`` so non-ASCII paths work on every OS. Grayscale,
    palette, RGBA/BGRA (alpha dropped) and 16-bit or float images are converted, and the EXIF
    orientation is applied. 16-bit images are
    scaled by their full range (``/ 257``), the same for every file, so brightness stays comparable
    between frames; 12-bit data stored in 16 bits therefore looks dark.

    Args:
        path: the image file (PNG, JPEG, BMP, TIFF, WebP, PNM, GIF; the content decides, not the extension).

    Returns:
        (H, W, 3) uint8 BGR, C-contiguous.

    Raises:
        FrameDecodeError: the file is missing, empty, not an image, truncated, smaller than
            `MIN_IMAGE_SIDE` px on a side, or larger than `MAX_IMAGE_PIXELS` (checked from the header,
            before decoding). The message starts with the file name; ``.path`` holds it.
    """
    path = Path(path)
    try:
        # regular files only (no device, FIFO or socket), at most MAX_IMAGE_FILE_BYTES, checked before reading
        data = np.frombuffer(read_bounded(path, MAX_IMAGE_FILE_BYTES, what="image"), dtype=np.uint8)
    except (NotARegularFile, FileTooLarge) as exc:
        msg = f"{path}: {exc.strerror}".replace(f"{path} ", "", 1)
        raise FrameDecodeError(msg, path=path) from exc
    except OSError as exc:
        msg = f"{path}: cannot read image file ({exc.strerror or exc})"
        raise FrameDecodeError(msg, path=path) from exc
    size = int(data.size)
    if size == 0:
        msg = f"{path}: image file is empty (0 bytes); it was probably not written completely"
        raise FrameDecodeError(msg, path=path)

    dims = _header_dims(data[:65536].tobytes())
    if dims is not None:
        _check_dims(path, *dims)
    # ANYCOLOR|ANYDEPTH: native channels (gray stays gray, palette and alpha become BGR) and bit depth,
    # and, unlike IMREAD_UNCHANGED, the EXIF orientation is applied (photos taken with a phone).
    try:
        image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:   # most decoders return None, a few raise (e.g. a header over OpenCV's size limit)
        reason = (exc.err or str(exc)).strip().splitlines()[0]
        msg = f"{path}: not a decodable image ({size} bytes): {reason}"
        raise FrameDecodeError(msg, path=path) from exc
    if image is None or image.size == 0:
        msg = (
            f"{path}: not a decodable image ({size} bytes); the file is truncated, corrupt, "
            f"or in a format OpenCV cannot read"
        )
        raise FrameDecodeError(msg, path=path)
    _check_dims(path, image.shape[1], image.shape[0])
    return _to_bgr8(image, path)


def _check_dims(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        msg = (
            f"{path}: image is {width}x{height} pixels ({width * height / 1e6:.0f} MP), over the "
            f"{MAX_IMAGE_PIXELS // 1_000_000} MP limit; resize it or crop to the part "
            f"(or the file is corrupt)"
        )
        raise FrameDecodeError(msg, path=path)
    if min(width, height) < MIN_IMAGE_SIDE:
        msg = (
            f"{path}: image is {width}x{height} pixels; at least {MIN_IMAGE_SIDE} px per side are needed "
            f"(is it a thumbnail or a broken file?)"
        )
        raise FrameDecodeError(msg, path=path)


def _to_bgr8(image: np.ndarray, path: Path) -> np.ndarray:
    """Any decoded image -> (H, W, 3) uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        finite = image[np.isfinite(image)]
        scale = 255.0 if finite.size == 0 or float(finite.max()) <= 1.0 else 1.0   # 0..1 data, or 0..255
        # clipped before scaling: a huge negative value times 255 would overflow float32
        clean = np.nan_to_num(image, nan=0.0, posinf=255.0 / scale, neginf=0.0)
        image = (np.clip(clean, 0.0, 255.0 / scale) * scale).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = image.clip(0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif not (image.ndim == 3 and image.shape[2] == 3):
        msg = f"{path}: unsupported image layout {image.shape}; expected gray, BGR or BGRA"
        raise FrameDecodeError(msg, path=path)
    return np.ascontiguousarray(image)


def _header_dims(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG, BMP, GIF, WebP or TIFF file, else None.

    Read before decoding so a decompression bomb is refused without allocating it.
    """
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head.startswith(b"\xff\xd8"):
            return _jpeg_dims(head)
        if head.startswith(b"BM") and len(head) >= 26:
            width, height = struct.unpack("<ii", head[18:26])
            return abs(width), abs(height)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_dims(head)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_dims(head)
    except struct.error:
        return None   # header cut short: let the decoder say what is wrong
    return None


def _jpeg_dims(head: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 < len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:                     # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", head[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # SOFn
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _webp_dims(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff_dims(head: bytes) -> tuple[int, int] | None:
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    (count,) = struct.unpack(order + "H", head[ifd : ifd + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = head[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):                  # ImageWidth, ImageLength: SHORT or LONG
            fmt = order + ("H" if kind == 3 else "I")
            found[tag] = struct.unpack(fmt, entry[8 : 8 + struct.calcsize(fmt)])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _natural_key(rel: str) -> list[Any]:
    """Sort key of a relative POSIX path: case-insensitive, digit runs compared as numbers (img_2 < img_10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", rel.lower())]


def image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden files skipped), in natural order of relative path."""
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(files, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def iter_image_files(root: Path, *, skip: Path | None = None,
                     on_skipped: Callable[[Path, str], None] | None = None) -> Iterator[Path]:
    """`image_files`, lazily: the same files in the same order, one folder read at a time.

    Only the names of the folders on the current path are held, never the whole tree's, so a
    review of a million-image archive does not keep a million paths in memory (a folder's names are
    needed at once because the OS lists them unsorted). The order equals `image_files`'s because a
    folder's name is sorted with a trailing ``/``, the way it prefixes its files' paths; files whose
    names differ only in case or leading zeros may come in another order.

    Args:
        root: the folder to walk; like `Path.rglob`, symbolic links to folders are not followed.
        skip: a folder left out with everything in it (a review's report folder inside ``root``).
        on_skipped: called with (path, reason) for each image file left out (a hidden name, or a link to
            a file outside ``root``, never followed), each hidden folder and each link to a folder.
    """
    skip_abs = skip.resolve() if skip is not None else None
    root_abs = root.resolve()

    def walk(folder: Path) -> Iterator[Path]:
        names: list[str] = []          # plain strings, a folder's with its "/": the least memory per entry
        with os.scandir(folder) as entries:
            for entry in entries:
                is_image = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                if entry.name.startswith("."):
                    if on_skipped is not None and is_image and entry.is_file():
                        on_skipped(folder / entry.name, "hidden (its name starts with '.')")
                    elif on_skipped is not None and entry.is_dir(follow_symlinks=False):
                        on_skipped(folder / entry.name, "a hidden folder (its name starts with '.'), not searched")
                    continue
                if entry.is_dir() and entry.is_symlink():
                    if on_skipped is not None:
                        on_skipped(folder / entry.name, f"a link to the folder {Path(entry.path).resolve()}, "
                                                        "not followed")
                    continue
                if entry.is_dir():
                    names.append(entry.name + "/")
                elif is_image and entry.is_file():
                    target = Path(entry.path).resolve() if entry.is_symlink() else None
                    if target is not None and not target.is_relative_to(root_abs):
                        if on_skipped is not None:
                            on_skipped(folder / entry.name, f"a link to {target}, outside the reviewed folder")
                        continue
                    names.append(entry.name)
        names.sort(key=_natural_key)
        for name in names:
            if not name.endswith("/"):
                yield folder / name
            elif skip_abs is None or (folder / name).resolve() != skip_abs:
                yield from walk(folder / name[:-1])

    yield from walk(root)
