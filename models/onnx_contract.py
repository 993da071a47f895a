"""The contract between ``models.export`` (writes ONNX files) and ``models.runtime`` (runs them).

One module owns what both sides must agree on, so neither imports the other for it: the graph's
input and output names, the graph kinds, the description file beside the ``.onnx`` (its name, format
name and version) and how it is read and written. ``models.export`` imports ``models.runtime`` (the
self-check runs the file in the real runtime); ``models.runtime`` imports only this module. No torch.

The description (``model.onnx.json``) holds: ``format``, ``format_version``, ``graph`` (a
``GraphKind``), ``opset``, ``inputs``/``outputs`` (name, shape, dtype), ``input_hw``, ``preprocess``
(shorter side, patch size, mean, std), ``detector`` (name, config, bank size, masking), ``backbone``
(blocks, norm, feature size, patch size), ``weights`` and ``weights_sha256``, ``tolerances``,
``versions``, ``created``, and after the self-check ``verification``, ``notes`` and ``onnx_sha256``.

Example:
    >>> description = read_description(Path("models/fryum/v3/model.onnx"))
    >>> description["graph"], description["input_hw"]
    ('detector', [448, 672])
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final, Literal

from models.files import atomic_write, read_versioned_json

__all__ = [
    "BACKBONE_OUTPUTS",
    "DETECTOR_OUTPUTS",
    "INPUT_NAME",
    "ONNX_FORMAT",
    "ONNX_FORMAT_VERSION",
    "GraphKind",
    "describe_path",
    "file_sha256",
    "read_description",
    "write_description",
]

GraphKind = Literal["detector", "backbone"]

ONNX_FORMAT: Final = "inspector.onnx"
# Bump when the graph's inputs/outputs or the description change meaning.
ONNX_FORMAT_VERSION: Final = 1
INPUT_NAME: Final = "images"
# Graph outputs are named after the fields of models.detectors.Detection (as anomalib's to_onnx does).
DETECTOR_OUTPUTS: Final = ("pred_score", "anomaly_map")
BACKBONE_OUTPUTS: Final = ("features",)
# A description is a page of settings and a few measured numbers.
MAX_DESCRIPTION_BYTES: Final = 4 << 20


def describe_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (not ``model.json``: that is a saved detector's manifest)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_description(path: str | Path) -> dict[str, Any]:
    """The JSON description of an exported file (``path`` is the ``.onnx`` file).

    Raises:
        FileNotFoundError: no description beside the file.
        ValueError: it is corrupt or not an inspector export, or from a newer version.
    """
    return read_versioned_json(
        describe_path(path), what="ONNX description", format_name=ONNX_FORMAT, supported=ONNX_FORMAT_VERSION,
        limit=MAX_DESCRIPTION_BYTES, fix="export the model again",
        missing="export the model again with `inspector export` (it writes both files)",
        finite=False,       # a failed self-check records its NaN differences
    )


def write_description(path: str | Path, description: dict[str, Any]) -> Path:
    """Write ``description`` beside the ``.onnx`` file ``path`` (atomically); returns its path."""
    json_path = describe_path(path)
    atomic_write(json_path, json.dumps(description, indent=2, allow_nan=True, default=str) + "\n")
    return json_path


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
