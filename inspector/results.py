"""Plain data that crosses threads: frames, verdicts, defect regions, inspection results, progress.

Everything here is a frozen dataclass of numpy arrays and plain fields, so the pipeline, the store,
the CLI and the GUI can share it without locks. Which stage fills which field is said beside it.

It also holds the two rules every part of the project shares, written once:

- `verdict_for`: score -> verdict (no score or a broken one is ERROR, ``>= fail`` FAIL, ``>= review``
  REVIEW, else PASS), used by the station, batch review, teaching and the app;
- `VerdictCounts.yield_pct`: yield = PASS / (PASS + REVIEW + FAIL). ERROR frames are not parts judged
  (the frame could not be inspected), so they count neither for nor against the yield and are
  reported apart. The CLI's run summary, the store's `yield_summary` and the app's counter all use it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from inspector.defect_typing import PendingTyping

__all__ = [
    "DefectRegion",
    "Frame",
    "InspectionResult",
    "Progress",
    "StageTimes",
    "Verdict",
    "VerdictCounts",
    "verdict_for",
]


class Verdict(enum.StrEnum):
    """Outcome of one inspection; the value is what the store and reports write."""

    PASS = "PASS"
    REVIEW = "REVIEW"    # score between the review and the fail threshold: a person should look
    FAIL = "FAIL"
    ERROR = "ERROR"      # the frame could not be inspected; never counted as PASS


def verdict_for(score: float | None, review: float, fail: float) -> Verdict:
    """The verdict of one image score under a recipe's thresholds: the project's one rule.

    Args:
        score: image anomaly score; None (not scored) or a non-finite number gives ERROR, never PASS.
        review: score at or above which a part is REVIEW.
        fail: score at or above which a part is FAIL (checked first, so ``fail < review`` means FAIL wins).
    """
    if score is None or not math.isfinite(score):
        return Verdict.ERROR
    if score >= fail:
        return Verdict.FAIL
    return Verdict.REVIEW if score >= review else Verdict.PASS


@dataclass(frozen=True, kw_only=True)
class VerdictCounts:
    """How many frames got each verdict, and the yield that follows: the one definition of yield.

    ``yield_pct`` = PASS / (PASS + REVIEW + FAIL) * 100. ERROR frames (unreadable, a broken score) are
    not parts judged: they are counted in ``errors`` and ``inspected`` but not in the yield.

    Example:
        >>> c = VerdictCounts.from_verdicts([Verdict.PASS, Verdict.FAIL, Verdict.ERROR])
        >>> c.inspected, c.judged, c.yield_pct
        (3, 2, 50.0)
    """

    passed: int = 0
    review: int = 0
    failed: int = 0
    errors: int = 0

    @classmethod
    def from_verdicts(cls, verdicts: Iterable[Verdict | str]) -> VerdictCounts:
        """Count verdicts (enum members or their stored string values)."""
        n = dict.fromkeys(Verdict, 0)
        for verdict in verdicts:
            n[Verdict(verdict)] += 1
        return cls(passed=n[Verdict.PASS], review=n[Verdict.REVIEW], failed=n[Verdict.FAIL],
                   errors=n[Verdict.ERROR])

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> VerdictCounts:
        """From a count per stored verdict value (``{"PASS": 3, "FAIL": 1}``); other keys are ignored."""
        n = {v: int(counts.get(v.value, 0)) for v in Verdict}
        return cls(passed=n[Verdict.PASS], review=n[Verdict.REVIEW], failed=n[Verdict.FAIL], errors=n[Verdict.ERROR])

    @classmethod
    def from_scores(cls, scores: Sequence[float] | np.ndarray, review: float, fail: float) -> VerdictCounts:
        """`verdict_for` over many scores at once (vectorised: the teach sliders re-count on every move).

        Args:
            scores: (N,) image anomaly scores; NaN or infinite ones count as ERROR.
            review: score at or above which a part is REVIEW.
            fail: score at or above which a part is FAIL.
        """
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        finite = np.isfinite(values)
        failed = finite & (values >= fail)
        reviewed = finite & ~failed & (values >= review)
        n_failed, n_review = int(np.count_nonzero(failed)), int(np.count_nonzero(reviewed))
        n_errors = int(values.size - np.count_nonzero(finite))
        return cls(passed=int(values.size) - n_errors - n_failed - n_review, review=n_review, failed=n_failed,
                   errors=n_errors)

    def add(self, verdict: Verdict | str) -> VerdictCounts:
        """A copy with one more frame of the given verdict."""
        return self + VerdictCounts.from_verdicts((verdict,))

    def __add__(self, other: VerdictCounts) -> VerdictCounts:
        if not isinstance(other, VerdictCounts):
            return NotImplemented
        return VerdictCounts(passed=self.passed + other.passed, review=self.review + other.review,
                             failed=self.failed + other.failed, errors=self.errors + other.errors)

    def count(self, verdict: Verdict | str) -> int:
        """The count of one verdict."""
        return {Verdict.PASS: self.passed, Verdict.REVIEW: self.review, Verdict.FAIL: self.failed,
                Verdict.ERROR: self.errors}[Verdict(verdict)]

    @property
    def inspected(self) -> int:
        """Every frame counted, ERROR included."""
        return self.passed + self.review + self.failed + self.errors

    @property
    def judged(self) -> int:
        """Parts that got a PASS, REVIEW or FAIL verdict: the yield's denominator."""
        return self.passed + self.review + self.failed

    @property
    def yield_pct(self) -> float | None:
        """PASS / (PASS + REVIEW + FAIL) * 100; None while no part has been judged."""
        return 100.0 * self.passed / self.judged if self.judged else None


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
    # the regions' typing when it runs after the verdict was reported (a triggered station answers the PLC
    # first: Station.inspect(defer_typing=True)); inspector.defect_typing.finish_typing runs it. None: typed.
    typing: PendingTyping | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A progress tick yielded by long jobs (teaching, review, export); each is a place to cancel."""

    done: int
    total: int                     # 0 when unknown
    message: str = ""
    unit: str = "img"              # what done and total count (a progress bar's unit)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0
