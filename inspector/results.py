"""Plain data that crosses threads: frames, verdicts, defect regions, inspection results, progress.

Everything here is a frozen dataclass of numpy arrays and plain fields, so the pipeline, the store,
the CLI and the GUI can share it without locks. Which stage fills which field is said beside it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DefectRegion", "Frame", "InspectionResult", "Progress", "StageTimes", "Verdict"]


class Verdict(enum.StrEnum):
    """Outcome of one inspection; the value is what the store and reports write."""

    PASS = "PASS"
    REVIEW = "REVIEW"    # score between the review and the fail threshold: a person should look
    FAIL = "FAIL"
    ERROR = "ERROR"      # the frame could not be inspected; never counted as PASS


@dataclass(frozen=True, kw_only=True, eq=False)
class Frame:
    """One captured image.

    Filled by the frame source.
    """

    image_bgr: np.ndarray          # (H, W, 3) uint8, BGR as read by OpenCV
    frame_id: int                  # counts from 0 per source run
    timestamp: float               # time.time() at capture
    source: str                    # human-readable source name (credentials removed from URLs)
    path: str | None = None        # the file it came from, for file/replay sources
    capture_ms: float = 0.0        # time spent reading/decoding it


@dataclass(frozen=True, kw_only=True)
class DefectRegion:
    """One connected defect region of the anomaly map, in full-frame pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    area_px: int                   # pixels above the pixel threshold
    area_mm2: float | None         # area_px * mm_per_px**2 when the recipe gives a scale
    max_score: float
    mean_score: float
    defect_class: str | None = None  # assigned later by a reviewer, or None
    # filled by the station's few-shot typer (inspector.defect_typing), None when it has no labels:
    predicted_class: str | None = None   # a labelled defect class, or "unknown" (far from every example)
    type_confidence: float | None = None  # [0, 1]
    # (D,) float32 DINOv2 embedding of the region, stored so that a reviewer's label teaches the typer
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class StageTimes:
    """Milliseconds per pipeline stage for one frame."""

    capture_ms: float = 0.0
    preprocess_ms: float = 0.0
    model_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.capture_ms + self.preprocess_ms + self.model_ms + self.postprocess_ms


@dataclass(frozen=True, kw_only=True, eq=False)
class InspectionResult:
    """Everything known about one inspected frame.

    Filled by the inference worker (``inspector.station.Station.inspect``); the store and archive
    only read it.
    """

    frame_id: int
    timestamp: float               # capture time of the frame
    source: str
    recipe: str                    # recipe name
    model_version: str             # e.g. "v3", or "" when no model was loaded
    verdict: Verdict
    score: float | None            # image anomaly score; None for ERROR
    regions: tuple[DefectRegion, ...] = ()
    anomaly_map: np.ndarray | None = None   # (H, W) float32 at frame size (ROI-sized inside the ROI box)
    image_bgr: np.ndarray | None = None     # the inspected frame, for display and archive
    times: StageTimes = field(default_factory=StageTimes)
    error: str | None = None       # one sentence, set when verdict is ERROR
    path: str | None = None        # source file for file/replay sources
    line: str = ""
    station: str = ""
    lot: str = ""


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A progress tick yielded by long jobs (teaching, review, export); each is a place to cancel."""

    done: int
    total: int                     # 0 when unknown
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0
