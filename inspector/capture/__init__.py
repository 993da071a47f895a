"""Frame sources: cameras through OpenCV, video files, image folders replayed, GenICam cameras.

Every source satisfies the `FrameSource` protocol and says whether it is live. Live sources may drop
frames (the pipeline keeps only the newest); file sources never do. A source is built closed by
`open_source(spec)` and opened by the pipeline's capture thread, which owns it from then on.

Example:
    >>> spec = parse_source("tests/data/good")          # a folder -> FolderSpec
    >>> with open_source(spec) as source:                 # doctest: +SKIP
    ...     while (frame := source.read()) is not None:
    ...         print(frame.frame_id, frame.path, frame.image_bgr.shape)

Errors: `open()` raises `CameraNotFound` or `CaptureError` with a sentence saying what to check. A
folder with one unreadable file does not stop: `FolderSource.read()` raises `FrameDecodeError` for
that file (the file still takes its frame id) and the next `read()` goes on with the next file.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self, runtime_checkable

import cv2
import numpy as np

from inspector.errors import CameraNotFound, CaptureError, FrameDecodeError, redact_credentials
from inspector.results import Frame
from models.files import FileTooLarge, NotARegularFile, read_bounded

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "STREAM_TIMEOUT_MS",
    "VIDEO_EXTENSIONS",
    "ArraySource",
    "CameraSource",
    "CameraSpec",
    "FolderSource",
    "FolderSpec",
    "FrameSource",
    "GenICamSource",
    "GenICamSpec",
    "SourceSpec",
    "VideoSource",
    "VideoSpec",
    "image_files",
    "iter_image_files",
    "load_image",
    "open_source",
    "parse_source",
    "redact_url",
]

logger = logging.getLogger(__name__)

# File types OpenCV's imcodecs decode in the wheels we ship (lower case, with the dot).
IMAGE_EXTENSIONS: Final = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".gif"}
)
# Containers OpenCV's FFmpeg backend reads.
VIDEO_EXTENSIONS: Final = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm"}
)
# One DINOv2 patch (14 px): anything smaller cannot be a part image, usually a thumbnail or a broken file.
MIN_IMAGE_SIDE: Final = 14
# Open and read timeout of stream URLs: longer than a keyframe interval, short enough to reconnect soon.
STREAM_TIMEOUT_MS: Final = 5000
# 100 megapixels: ~300 MB as BGR uint8. Above this a "photo" is a mistake or a decompression bomb.
MAX_IMAGE_PIXELS: Final = 100_000_000
# Largest image file read: 100 MP of 16-bit RGB uncompressed is 600 MB; anything bigger is not a part image.
MAX_IMAGE_FILE_BYTES: Final = 1 << 30


# --------------------------------------------------------------------------------------------
# Specs (built by the recipe loader and by `parse_source`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CameraSpec:
    """A camera through OpenCV: a device index (USB/V4L2) or a stream URL (RTSP/HTTP)."""

    type: Literal["camera"] = "camera"
    device: int | str = 0               # index, or URL (may carry credentials: never logged)
    width: int | None = None            # requested resolution, where the backend supports it
    height: int | None = None
    fps: float | None = None
    exposure: float | None = None       # backend units (CAP_PROP_EXPOSURE)


@dataclass(frozen=True, kw_only=True)
class VideoSpec:
    """A video file, read frame by frame."""

    type: Literal["video"] = "video"
    path: Path
    loop: bool = False
    fps: float | None = None            # replay rate; None = as fast as the pipeline takes frames


@dataclass(frozen=True, kw_only=True)
class FolderSpec:
    """An image folder (sorted, recursive) replayed at a chosen rate: the source of tests and the demo.

    ``path`` may also name a single image file, which is then replayed alone.
    """

    type: Literal["folder"] = "folder"
    path: Path
    fps: float | None = None            # None = as fast as the pipeline takes frames
    loop: bool = False


@dataclass(frozen=True, kw_only=True)
class GenICamSpec:
    """A GigE Vision / USB3 Vision camera through `harvesters` (optional extra `genicam`)."""

    type: Literal["genicam"] = "genicam"
    cti: Path | None = None             # GenTL producer file; None = env GENICAM_GENTL64_PATH
    serial: str | None = None           # None = the first camera found
    exposure_us: float | None = None


SourceSpec = CameraSpec | VideoSpec | FolderSpec | GenICamSpec


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


@runtime_checkable
class FrameSource(Protocol):
    """Anything the pipeline can read frames from (napari's ``_AsyncSliceable``, anomalib's ``VideoStream``).

    A source is used by one thread at a time: the pipeline's capture thread opens, reads and closes it.

    Attributes:
        name: display name; URL credentials removed (``rtsp://***@host/stream``).
        is_live: True for cameras (frames may be dropped, reads never end), False for files.

    Optional extension: a source may define ``interrupt()``, callable from any thread, that makes a
    read waiting for its replay time return early; the pipeline calls it on ``stop()``.
    """

    name: str
    is_live: bool

    def open(self) -> None:
        """Acquire the device or file; raises `CameraNotFound` / `CaptureError` with a sentence."""
        ...

    def read(self) -> Frame | None:
        """Next frame; None when a file source ended.

        Live sources raise `CaptureError` when the stream drops.
        """
        ...

    def close(self) -> None:
        """Release the device or file; safe to call twice or before `open`."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class _SourceBase:
    """Shared plumbing: context manager, frame numbering, replay pacing that `interrupt()` can cut short."""

    name: str = ""
    is_live: bool = False

    def __init__(self, *, fps: float | None = None) -> None:
        if fps is not None and not fps > 0:
            msg = f"{type(self).__name__}: fps must be a positive number or None, got {fps!r}"
            raise ValueError(msg)
        self._period = 1.0 / fps if fps else 0.0
        self._next_due = 0.0
        self._next_id = 0
        self._interrupted = threading.Event()

    def open(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def interrupt(self) -> None:
        """Wake a read that waits for its replay time (any thread); that read returns None."""
        self._interrupted.set()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _take_id(self) -> int:
        frame_id = self._next_id
        self._next_id += 1
        return frame_id

    def _pace(self) -> bool:
        """Wait until the next frame is due at the replay rate. False when interrupted."""
        if self._interrupted.is_set():
            return False
        if not self._period:
            return True
        now = time.monotonic()
        if not self._next_due:
            self._next_due = now                    # the first frame is due at once
        if self._next_due > now and self._interrupted.wait(self._next_due - now):
            return False
        # Schedule from the due time, not from now, so the mean rate holds; but never bank more
        # than one period of lateness (a slow consumer must not cause a burst afterwards).
        self._next_due = max(self._next_due + self._period, time.monotonic() - self._period)
        return True


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
        on_skipped: called with (file, reason) for each image file left out: a hidden name, or a link to
            a file outside ``root`` (never followed).
    """
    skip_abs = skip.resolve() if skip is not None else None
    root_abs = root.resolve()

    def walk(folder: Path) -> Iterator[Path]:
        names: list[str] = []          # plain strings, a folder's with its "/": the least memory per entry
        with os.scandir(folder) as entries:
            for entry in entries:
                is_image = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                if entry.name.startswith("."):
                    if is_image and on_skipped is not None and entry.is_file():
                        on_skipped(folder / entry.name, "hidden (its name starts with '.')")
                    continue
                if entry.is_dir() and not entry.is_symlink():
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


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def redact_url(text: str) -> str:
    """Remove credentials from a URL for display and logs.

    ``rtsp://user:pw@host/x`` -> ``rtsp://***@host/x``; text without credentials comes back unchanged.
    """
    return redact_credentials(text)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class CameraSource(_SourceBase):
    """A camera through OpenCV's ``VideoCapture``: a device index or an RTSP/HTTP URL. Live.

    Requested width/height/fps/exposure are applied where the backend accepts them; what it refused
    is logged as a warning once per `open()`.
    """

    is_live = True

    def __init__(self, spec: CameraSpec) -> None:
        super().__init__()
        self.spec = spec
        device = spec.device
        if isinstance(device, str) and device.strip().isascii() and device.strip().isdigit():
            device = int(device)
        self._device: int | str = device
        self.name = f"camera {device}" if isinstance(device, int) else redact_url(device)
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        """Open the device.

        Raises:
            CameraNotFound: OpenCV could not open the device or URL.
        """
        self.close()
        if isinstance(self._device, int):
            capture = cv2.VideoCapture(self._device)
        else:
            # Stream URLs go through FFmpeg, which otherwise waits ~30 s on a dead host and can block a
            # read forever on a dropped stream; the capture thread must notice and reconnect instead.
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
            ]
            capture = cv2.VideoCapture(self._device, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            hint = (
                "is it connected, and not used by another program?"
                if isinstance(self._device, int)
                else "check the address, the network and the credentials"
            )
            msg = f"{self.name} could not be opened; {hint}"
            raise CameraNotFound(msg)
        requested = {
            "width": (cv2.CAP_PROP_FRAME_WIDTH, self.spec.width),
            "height": (cv2.CAP_PROP_FRAME_HEIGHT, self.spec.height),
            "fps": (cv2.CAP_PROP_FPS, self.spec.fps),
            "exposure": (cv2.CAP_PROP_EXPOSURE, self.spec.exposure),
        }
        refused = []
        for field, (prop, value) in requested.items():
            if value is None:
                continue
            accepted = capture.set(prop, float(value))
            got = capture.get(prop)
            if not accepted or abs(got - float(value)) > 1e-3 * max(1.0, abs(float(value))):
                refused.append(f"{field}={value} (got {got:g})")
        if refused:
            logger.warning("%s: the backend refused %s", self.name, ", ".join(refused))
        self._capture = capture
        self._interrupted.clear()
        logger.info("%s opened (%s)", self.name, capture.getBackendName())

    def read(self) -> Frame:
        """Grab the next frame.

        Raises:
            CaptureError: the camera is not open or gave no frame (unplugged, stream dropped).
        """
        if self._capture is None:
            msg = f"{self.name} is not open; call open() first"
            raise CaptureError(msg)
        start = time.perf_counter()
        ok, image = self._capture.read()
        if not ok or image is None:
            msg = f"{self.name} gave no frame; is it still connected?"
            raise CaptureError(msg)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return Frame(
            image_bgr=image,
            frame_id=self._take_id(),
            timestamp=time.time(),
            source=self.name,
            capture_ms=(time.perf_counter() - start) * 1000,
        )

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoSource(_SourceBase):
    """A video file read through OpenCV (FFmpeg backend); optional loop and replay rate. Not live."""

    is_live = False

    def __init__(self, spec: VideoSpec) -> None:
        super().__init__(fps=spec.fps)
        self.spec = spec
        self.name = str(spec.path)
        self._capture: cv2.VideoCapture | None = None
        self._frames_this_pass = 0

    def open(self) -> None:
        """Open the file.

        Raises:
            CaptureError: the file is missing or OpenCV cannot decode it.
        """
        self.close()
        path = Path(self.spec.path)
        if not path.is_file():
            msg = f"{path}: video file not found; check the path"
            raise CaptureError(msg)
        capture = cv2.VideoCapture(os.fspath(path))
        if not capture.isOpened():
            capture.release()
            msg = f"{path}: cannot be opened as a video; is the codec supported by OpenCV's FFmpeg?"
            raise CaptureError(msg)
        self._capture = capture
        self._frames_this_pass = 0
        self._interrupted.clear()

    def read(self) -> Frame | None:
        """Next frame, or None at the end (never with ``loop``, unless the file holds no frame).

        Raises:
            CaptureError: the source is not open.
        """
        if self._capture is None:
            msg = f"{self.name}: video is not open; call open() first"
            raise CaptureError(msg)
        if not self._pace():
            return None
        start = time.perf_counter()
        ok, image = self._capture.read()
        if not ok and self.spec.loop and self._frames_this_pass > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._frames_this_pass = 0
            ok, image = self._capture.read()
            if not ok:   # some containers do not seek: reopen instead
                self.open()
                assert self._capture is not None
                ok, image = self._capture.read()
        if not ok or image is None:
            return None
        self._frames_this_pass += 1
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return Frame(
            image_bgr=image,
            frame_id=self._take_id(),
            timestamp=time.time(),
            source=self.name,
            path=str(self.spec.path),
            capture_ms=(time.perf_counter() - start) * 1000,
        )

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FolderSource(_SourceBase):
    """Image files of a folder (recursive, natural sort order) replayed in order. Not live.

    An unreadable file does not end the replay: `read()` raises `FrameDecodeError` naming it (the file
    takes its frame id, so ids match positions in the list), and the next `read()` goes on.
    """

    is_live = False

    def __init__(self, spec: FolderSpec) -> None:
        super().__init__(fps=spec.fps)
        self.spec = spec
        self.name = str(spec.path)
        self.files: list[Path] = []
        self._index = 0
        self._opened = False

    def open(self) -> None:
        """List the image files.

        Raises:
            CaptureError: the folder is missing or holds no image file.
        """
        path = Path(self.spec.path)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = image_files(path)
        else:
            msg = f"{path}: folder not found; check the path"
            raise CaptureError(msg)
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            msg = f"{path}: no image files found (looked recursively for {exts})"
            raise CaptureError(msg)
        self.files = files
        self._index = 0
        self._opened = True
        self._interrupted.clear()
        logger.info("%s: %d image files", path, len(files))

    def read(self) -> Frame | None:
        """Next image, or None after the last (never with ``loop``).

        Raises:
            FrameDecodeError: this file cannot be decoded; call `read()` again for the next one.
            CaptureError: the source is not open.
        """
        if not self._opened:
            msg = f"{self.name}: folder source is not open; call open() first"
            raise CaptureError(msg)
        if self._index >= len(self.files):
            if not self.spec.loop:
                return None
            self._index = 0
        if not self._pace():
            return None
        path = self.files[self._index]
        self._index += 1
        frame_id = self._take_id()
        start = time.perf_counter()
        image = load_image(path)   # FrameDecodeError propagates; the id above stays used
        return Frame(
            image_bgr=image,
            frame_id=frame_id,
            timestamp=time.time(),
            source=self.name,
            path=str(path),
            capture_ms=(time.perf_counter() - start) * 1000,
        )

    def close(self) -> None:
        self._opened = False


class ArraySource(_SourceBase):
    """Frames from images held in memory: tests, benchmarks and demos without files.

    Args:
        images: (H, W, 3) uint8 BGR arrays, replayed in order (not copied).
        name: display name.
        loop: start again after the last image.
        count: stop after this many frames in total (with ``loop``, a long run of few images).
        is_live: pretend to be a camera (the pipeline then drops frames instead of waiting).
        fps: replay rate; None = as fast as they are taken.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        *,
        name: str = "memory",
        loop: bool = False,
        count: int | None = None,
        is_live: bool = False,
        fps: float | None = None,
    ) -> None:
        super().__init__(fps=fps)
        if not images:
            msg = "ArraySource needs at least one image"
            raise ValueError(msg)
        self.images = list(images)
        self.name = name
        self.loop = loop
        self.count = count
        self.is_live = is_live
        self._index = 0
        self._opened = False

    def open(self) -> None:
        self._opened = True
        self._interrupted.clear()

    def read(self) -> Frame | None:
        if not self._opened:
            msg = f"{self.name}: source is not open; call open() first"
            raise CaptureError(msg)
        if self.count is not None and self._next_id >= self.count:
            return None
        if self._index >= len(self.images):
            if not self.loop:
                return None
            self._index = 0
        if not self._pace():
            return None
        image = self.images[self._index]
        self._index += 1
        return Frame(image_bgr=image, frame_id=self._take_id(), timestamp=time.time(), source=self.name)

    def close(self) -> None:
        self._opened = False


class GenICamSource(_SourceBase):
    """A GigE Vision / USB3 Vision camera through ``harvesters`` and a GenTL producer (.cti). Live.

    Needs the optional extra (``pip install 'inspector[genicam]'``) and a GenTL producer file from the
    camera vendor's SDK (or a generic one); without either, `open()` says what to install or set.
    """

    is_live = True
    FETCH_TIMEOUT_S: Final = 2.0   # longer than any sane exposure + transfer; a stall means a lost camera

    def __init__(self, spec: GenICamSpec) -> None:
        super().__init__()
        self.spec = spec
        self.name = f"genicam {spec.serial}" if spec.serial else "genicam (first camera)"
        self._harvester: Any = None
        self._acquirer: Any = None

    def _cti_file(self) -> Path:
        if self.spec.cti is not None:
            cti = Path(self.spec.cti)
            if not cti.is_file():
                msg = f"GenTL producer {cti} not found; install the camera vendor's SDK or fix source.cti"
                raise CaptureError(msg)
            return cti
        for folder in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep):
            if folder and Path(folder).is_dir():
                found = sorted(Path(folder).glob("*.cti"))
                if found:
                    return found[0]
        msg = (
            "no GenTL producer (.cti) file: set source.cti in the recipe, or GENICAM_GENTL64_PATH to the "
            "folder holding it (installed with the camera vendor's SDK, e.g. Basler pylon, "
            "Allied Vision Vimba X or Balluff/MATRIX VISION mvIMPACT Acquire)"
        )
        raise CaptureError(msg)

    def open(self) -> None:
        """Find the camera and start acquisition.

        Raises:
            CaptureError: harvesters or the producer is missing.
            CameraNotFound: no camera (or none with the serial number) is visible.
        """
        self.close()
        try:
            from harvesters.core import Harvester  # optional extra: imported only when used
        except ImportError as exc:
            msg = "GenICam cameras need the 'harvesters' package: pip install 'inspector[genicam]'"
            raise CaptureError(msg) from exc
        cti = self._cti_file()
        harvester = Harvester()
        try:
            harvester.add_file(os.fspath(cti))
            harvester.update()
            devices = list(harvester.device_info_list)
            if not devices:
                msg = (
                    f"no GenICam camera visible through {cti.name}; "
                    f"is it powered and on this network/USB bus?"
                )
                raise CameraNotFound(msg)
            if self.spec.serial is not None:
                serials = [getattr(d, "serial_number", "?") for d in devices]
                if self.spec.serial not in serials:
                    visible = ", ".join(map(str, serials))
                    msg = f"GenICam camera {self.spec.serial} not found; visible: {visible}"
                    raise CameraNotFound(msg)
                acquirer = harvester.create({"serial_number": self.spec.serial})
            else:
                acquirer = harvester.create(0)
            if self.spec.exposure_us is not None:
                try:
                    acquirer.remote_device.node_map.ExposureTime.value = float(self.spec.exposure_us)
                except Exception as exc:  # GenApi raises its own types; the camera still works
                    logger.warning("%s: exposure %s us refused: %s", self.name, self.spec.exposure_us, exc)
            acquirer.start()
        except CaptureError:
            harvester.reset()
            raise
        except Exception as exc:  # harvesters/GenTL errors are not one family
            harvester.reset()
            msg = f"{self.name} could not be opened: {exc}"
            raise CameraNotFound(msg) from exc
        self._harvester, self._acquirer = harvester, acquirer

    def read(self) -> Frame:
        """Fetch the next buffer and convert it to BGR.

        Raises:
            CaptureError: not open, no buffer within `FETCH_TIMEOUT_S`, or an unsupported pixel format.
        """
        if self._acquirer is None:
            msg = f"{self.name} is not open; call open() first"
            raise CaptureError(msg)
        start = time.perf_counter()
        try:
            with self._acquirer.fetch(timeout=self.FETCH_TIMEOUT_S) as buffer:
                component = buffer.payload.components[0]
                image = _genicam_to_bgr(
                    np.asarray(component.data), str(component.data_format), component.width, component.height
                )
        except CaptureError:
            raise
        except Exception as exc:
            msg = f"{self.name} gave no frame within {self.FETCH_TIMEOUT_S} s ({exc}); is it still connected?"
            raise CaptureError(msg) from exc
        return Frame(
            image_bgr=image,
            frame_id=self._take_id(),
            timestamp=time.time(),
            source=self.name,
            capture_ms=(time.perf_counter() - start) * 1000,
        )

    def close(self) -> None:
        acquirer, harvester = self._acquirer, self._harvester
        self._acquirer = self._harvester = None
        for step in (getattr(acquirer, "stop", None), getattr(acquirer, "destroy", None),
                     getattr(harvester, "reset", None)):
            if step is not None:
                try:
                    step()
                except Exception:   # releasing a lost camera may fail; nothing more to do
                    logger.debug("%s: error while closing", self.name, exc_info=True)


_BAYER_TO_BGR: Final = {
    "BayerRG": cv2.COLOR_BayerRG2BGR,
    "BayerGR": cv2.COLOR_BayerGR2BGR,
    "BayerBG": cv2.COLOR_BayerBG2BGR,
    "BayerGB": cv2.COLOR_BayerGB2BGR,
}


def _genicam_to_bgr(data: np.ndarray, pixel_format: str, width: int, height: int) -> np.ndarray:
    """A GenICam buffer (flat array) -> (H, W, 3) uint8 BGR, copied out of the driver's memory.

    Supports Mono8/10/12/16, RGB8, BGR8 and Bayer 8/10/12/16 (unpacked formats only).
    """
    bits = int(m.group(1)) if (m := re.search(r"(\d+)$", pixel_format)) else 8
    if pixel_format.endswith("p") or "Packed" in pixel_format:
        msg = (
            f"GenICam pixel format {pixel_format} (packed) is not supported; "
            f"set an unpacked format such as Mono8"
        )
        raise CaptureError(msg)
    if bits > 8:
        data = (data.astype(np.float32) * (255.0 / ((1 << bits) - 1))).round().astype(np.uint8)
    if pixel_format.startswith("Mono"):
        return cv2.cvtColor(data.reshape(height, width), cv2.COLOR_GRAY2BGR)
    if pixel_format.startswith("RGB"):
        return cv2.cvtColor(data.reshape(height, width, 3), cv2.COLOR_RGB2BGR)
    if pixel_format.startswith("BGR"):
        return data.reshape(height, width, 3).copy()
    for prefix, code in _BAYER_TO_BGR.items():
        if pixel_format.startswith(prefix):
            return cv2.cvtColor(data.reshape(height, width), code)
    msg = f"GenICam pixel format {pixel_format} is not supported; set Mono8, RGB8, BGR8 or a Bayer8 format"
    raise CaptureError(msg)


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------


def open_source(spec: SourceSpec) -> FrameSource:
    """Build the source for a spec, not yet opened (the pipeline's capture thread opens it).

    Raises:
        ValueError: ``spec`` is not one of the source specs.
    """
    match spec:
        case CameraSpec():
            return CameraSource(spec)
        case VideoSpec():
            return VideoSource(spec)
        case FolderSpec():
            return FolderSource(spec)
        case GenICamSpec():
            return GenICamSource(spec)
    msg = f"unknown source spec {spec!r}; expected CameraSpec, VideoSpec, FolderSpec or GenICamSpec"
    raise ValueError(msg)


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def parse_source(text: str) -> SourceSpec:
    """A source as typed on the command line or in the UI.

    ``"0"`` -> camera 0; ``"rtsp://..."``, ``"http://..."`` -> camera URL; a path ending in a video
    extension (`VIDEO_EXTENSIONS`) -> video file; an existing folder or image file -> folder replay.

    Raises:
        CaptureError: the text is none of these (the message lists what is accepted).
    """
    text = text.strip()
    if text.isascii() and text.isdigit():   # not str.isdigit alone: "¹" and "٣" are digits to it
        return CameraSpec(device=int(text))
    if _URL.match(text) and not text.lower().startswith("file://"):
        return CameraSpec(device=text)
    typed = text
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    path = Path(os.path.expanduser(text))   # "~user" of an unknown user stays as typed (Path's raises)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoSpec(path=path)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
        return FolderSpec(path=path)
    msg = (
        f"source {redact_credentials(typed)!r} is not a camera index (0, 1, ...), a stream URL (rtsp://, http://), "
        f"a video file ({', '.join(sorted(VIDEO_EXTENSIONS))}) or an existing image folder"
    )
    raise CaptureError(msg)

