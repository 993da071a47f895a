"""Frame sources: cameras through OpenCV, video files, image folders replayed, GenICam cameras.

Every source satisfies the `FrameSource` protocol and says whether it is live. Live sources may drop
frames (the pipeline keeps only the newest); file sources never do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["CameraSpec", "FolderSpec", "GenICamSpec", "SourceSpec", "VideoSpec"]


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
    """An image folder (sorted, recursive) replayed at a chosen rate: the source of tests and the demo."""

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
