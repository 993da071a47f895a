"""Anomaly detectors on DINOv2 patch features, chosen by registered name.

Example:
    >>> from models.detectors import create_detector, PatchKNNConfig
    >>> detector = create_detector("patch_knn", backbone=backbone, config=PatchKNNConfig())
"""

from __future__ import annotations

from models.detectors.patch_knn import Detection, PatchKNN, PatchKNNConfig
from models.detectors.registry import (
    available_detectors,
    create_detector,
    get_detector_class,
    register_detector,
)

__all__ = [
    "Detection",
    "PatchKNN",
    "PatchKNNConfig",
    "available_detectors",
    "create_detector",
    "get_detector_class",
    "register_detector",
]
