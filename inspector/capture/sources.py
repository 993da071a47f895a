"""Frame sources through OpenCV and memory: cameras (device index or stream URL), video files, image
folders replayed, arrays; and the factories `open_source` (a spec -> its source) and `parse_source`
(text typed on the command line or in the UI -> a spec).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import cv2
import numpy as np

from inspector.capture.base import (
    CameraSpec,
    FolderSpec,
    FrameSource,
    GenICamSpec,
    SourceBase,
    SourceSpec,
    VideoSpec,
    redact_url,
)
from inspector.capture.decode import IMAGE_EXTENSIONS, image_files, load_image
from inspector.capture.genicam import GenICamSource
from inspector.errors import CameraNotFound, CaptureError, redact_credentials
from inspector.results import Frame

__all__ = [
    "STREAM_TIMEOUT_MS",
    "VIDEO_EXTENSIONS",
    "ArraySource",
    "CameraSource",
    "FolderSource",
    "VideoSource",
    "open_source",
    "parse_source",
]

logger = logging.getLogger("inspector.capture")

# Containers OpenCV's FFmpeg backend reads.
VIDEO_EXTENSIONS: Final = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm"}
)
# Open and read timeout of stream URLs: longer than a keyframe interval, short enough to reconnect soon.
STREAM_TIMEOUT_MS: Final = 5000


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class CameraSource(SourceBase):
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
        return self._frame(image, start)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoSource(SourceBase):
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
        return self._frame(image, start, path=str(self.spec.path))

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FolderSource(SourceBase):
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
        return self._frame(image, start, frame_id=frame_id, path=str(path))

    def close(self) -> None:
        self._opened = False


class ArraySource(SourceBase):
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
