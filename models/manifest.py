"""A saved detector's ``model.json``, read without torch (``models.saved`` writes and loads the whole model).

The Statistics screen asks a saved version for its thresholds (``inspector.station.line_thresholds``), its teaching
statistics and how it was taught (``inspector.statistics``); it reads this page of settings alone. Importing torch
to read it would cost its reader thread a second or more and, while the import holds the interpreter lock, stall
the app's screen (up to 0.37 s measured as the app started).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from models.files import read_versioned_json

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_MANIFEST_BYTES", "MODEL_JSON", "MODEL_TENSORS", "read_manifest"]

MODEL_JSON: Final = "model.json"
MODEL_TENSORS: Final = "model.safetensors"
FORMAT: Final = "inspector.detector"
# Bump when the layout changes; loading refuses files from a newer version.
# 2: model.json's sha256 in the safetensors header (version 1 files load with a warning).
FORMAT_VERSION: Final = 2
MAX_MANIFEST_BYTES: Final = 4 << 20       # model.json is a page of settings and statistics


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a saved detector.

    Raises:
        FileNotFoundError: no ``model.json`` in ``directory``.
        ValueError: the file is corrupt, truncated, or of another format or a newer version.
    """
    return read_versioned_json(
        Path(directory) / MODEL_JSON, what="model manifest", format_name=FORMAT, supported=FORMAT_VERSION,
        limit=MAX_MANIFEST_BYTES, fix="save the model again (or teach it again)",
        missing=f"{directory} does not hold a saved detector (save one with save_detector)")
