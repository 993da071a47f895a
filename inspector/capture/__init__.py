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

The package's modules: `inspector.capture.base` (specs, the `FrameSource` protocol, the shared base),
`inspector.capture.decode` (image files: decoding and listing), `inspector.capture.sources` (OpenCV
cameras, video, folders, arrays; `open_source`, `parse_source`) and `inspector.capture.genicam`
(GenICam cameras). Import the public names from here: ``from inspector.capture import open_source``.
"""

from __future__ import annotations

from inspector.capture.base import (
    CameraSpec,
    FolderSpec,
    FrameSource,
    GenICamSpec,
    SoftwareTriggerSource,
    SourceSpec,
    VideoSpec,
    redact_url,
)
from inspector.capture.decode import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_FILE_BYTES,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    image_files,
    iter_image_files,
    load_image,
)
from inspector.capture.genicam import GenICamSource
from inspector.capture.sources import (
    STREAM_TIMEOUT_MS,
    VIDEO_EXTENSIONS,
    ArraySource,
    CameraSource,
    FolderSource,
    VideoSource,
    open_source,
    parse_source,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_FILE_BYTES",
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
    "SoftwareTriggerSource",
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
