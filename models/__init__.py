"""The ML layer: DINOv2 backbone through timm, anomaly detectors, ONNX export and runtime.

Knows nothing of recipes, cameras, SQLite or Qt: it takes arrays or tensors and returns results.

onnxruntime's telemetry is switched off before any module here can load it: on import it otherwise
writes a device id and an event database under ``~/.cache/Microsoft/DeveloperTools``, which a
station should not do unasked (set ``ORT_DISABLE_TELEMETRY=0`` in the environment to allow it).
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
