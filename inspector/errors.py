"""Domain errors of the inspection engine.

Every error says what is wrong, where, and how to fix it, and carries the data a UI needs::

    InspectorError
    ├── RecipeError            a recipe file is missing, malformed or invalid (.path, .field)
    ├── CaptureError           a frame source failed
    │   ├── CameraNotFound     a live camera could not be opened
    │   └── FrameDecodeError   an image file could not be decoded into a frame (.path)
    ├── ModelError             a model could not be built, loaded or exported
    │   ├── WeightsNotFound    no DINOv2 weights source worked (.tried)
    │   └── ExportError        ONNX export or its self-check failed
    └── StoreError             the statistics store could not be opened or written

`models/` raises plain ``ValueError``/``RuntimeError``/``FileNotFoundError`` with good text; the
engine wraps them here where it adds context.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "CameraNotFound",
    "CaptureError",
    "ExportError",
    "FrameDecodeError",
    "InspectorError",
    "ModelError",
    "RecipeError",
    "StoreError",
    "WeightsNotFound",
    "redact_credentials",
]

# scheme://user:password@host: everything up to the authority's last "@" (a password may hold one);
# also scheme:/user:password@, as a URL reads after pathlib has folded its "//"
_CREDENTIALS = re.compile(r"(:/{1,2})[^/\s]*@")


def redact_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``, for messages and logs."""
    return _CREDENTIALS.sub(r"\1***@", text)


class InspectorError(Exception):
    """Base of every error the engine raises on purpose."""


class RecipeError(InspectorError):
    """A recipe is missing, malformed or invalid.

    Args:
        message: the full sentence, starting with the file name.
        path: the recipe file.
        field: dotted name of the offending field (``threshold.fail``), or None for the whole file.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.field = field


class CaptureError(InspectorError):
    """A frame source failed (opened, read or reconnected)."""


class CameraNotFound(CaptureError):
    """A live camera could not be opened."""


class FrameDecodeError(CaptureError):
    """An image file could not be decoded into a frame."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class ModelError(InspectorError):
    """A model could not be built, loaded, or exported."""


class WeightsNotFound(ModelError):
    """No DINOv2 weights source worked; ``tried`` lists each source and why it failed."""

    def __init__(self, message: str, *, tried: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tried = tried


class ExportError(ModelError):
    """ONNX export failed or its self-check against torch did not pass."""


class StoreError(InspectorError):
    """The statistics store could not be opened or written."""
