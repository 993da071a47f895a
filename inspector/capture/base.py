"""What every frame source shares: the specs that describe sources, the `FrameSource` protocol, and
`SourceBase` (context manager, frame numbering, replay pacing).

Specs are built by the recipe loader and by `inspector.capture.parse_source`; sources are built from
them by `inspector.capture.open_source`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

import numpy as np

from inspector.errors import redact_credentials
from inspector.results import Frame

__all__ = [
    "CameraSpec",
    "FolderSpec",
    "FrameSource",
    "GenICamSpec",
    "SoftwareTriggerSource",
    "SourceBase",
    "SourceSpec",
    "VideoSpec",
    "redact_url",
]


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


@runtime_checkable
class SoftwareTriggerSource(Protocol):
    """A live source that can take one frame on request (a camera's software trigger; triggered mode).

    Used by `inspector.lineio.trigger.TriggeredRunner` on its own thread, after ``open()``.
    """

    def arm_software_trigger(self) -> bool:
        """Switch the open camera to software-triggered acquisition; False if it cannot (then it free-runs)."""
        ...

    def read_triggered(self, timeout: float) -> Frame:
        """Fire the software trigger and return that frame; raises `CaptureError` if none came in ``timeout`` s."""
        ...


class SourceBase:
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

    def _frame(self, image: np.ndarray, start: float, *, frame_id: int | None = None,
               path: str | None = None) -> Frame:
        """The frame just read: the next frame id (unless the read took one already), stamped now, with
        the time since ``start`` (a `time.perf_counter` value) as its capture time."""
        return Frame(
            image_bgr=image,
            frame_id=self._take_id() if frame_id is None else frame_id,
            timestamp=time.time(),
            source=self.name,
            path=path,
            capture_ms=(time.perf_counter() - start) * 1000,
        )

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
# Names
# --------------------------------------------------------------------------------------------


def redact_url(text: str) -> str:
    """Remove credentials from a URL for display and logs.

    ``rtsp://user:pw@host/x`` -> ``rtsp://***@host/x``; text without credentials comes back unchanged.
    """
    return redact_credentials(text)
