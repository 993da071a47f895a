"""Thresholds from scores: good images only, or good and defect images when there are some.

With good images only, anomalib's F1-adaptive threshold has nothing to balance and flags everything
(anomalib issues 2433 and 3357). Here the good-only rule uses the leave-one-out scores of the
training images (``PatchKNN.train_scores``/``train_maps``: each image scored against a bank
without its own patches, so they behave like unseen good parts):

* ``fail`` = the highest good score plus ``fail_margin`` times the spread of the good scores
  (a robust spread, 1.4826 x the median absolute deviation, so that one odd good image, which
  already raises the maximum, does not widen the margin a second time);
* ``review`` = the ``review_quantile`` of the good scores (never above ``fail``): the 90th
  percentile by default, a REVIEW band below FAIL that stops a share of the defects the margin rule
  lets through (benchmarks/README.md E5, 16 shots: defects caught as FAIL or REVIEW 74 % instead of
  45 % with the 99th percentile, at 7 % of good parts sent to review, 3-15 % per category);
* ``pixel`` = the ``pixel_quantile`` of all good anomaly-map pixels, so good parts give (almost)
  no defect regions;
* ``region_peak`` = the highest value of any good anomaly map: a region (pixels at or above ``pixel``)
  is shown when its peak reaches it, or when it is the frame's strongest (``models.regions.shown_count``).
  Hysteresis, as in edge detection: the low threshold gives a defect its extent, the high one decides
  which regions are defects, so that the weak spots a good part also has are not boxed beside the defect
  (benchmarks/README.md, "Which regions a flagged part shows").

When defect scores exist, ``fail`` is the best-F1 threshold (or the threshold meeting a target
false-reject rate), and with defect masks ``pixel`` is the best pixel-F1 threshold. The rule used
is written into ``Thresholds.rule`` in one sentence.

How often a threshold set from n good scores will stop new good parts is itself uncertain with
n = 16. ``good_flag_outlook`` states it without assuming a score distribution (conformal): under
exchangeability a new good score lands in each of the n + 1 gaps of the sorted good scores with
equal chance, so with m good scores at or above the threshold the expected share of good parts
flagged is m / (n + 1) when the threshold is a good score and at most (m + 1) / (n + 1) when it
lies between two (``np.quantile`` interpolates). The true rate of this calibration, 1 - F(threshold),
is Beta-distributed over the draw of the n good images; its 90 % quantile is the "could be as high
as" figure. ``held_out_defect_rates`` states how the known-bad images given to teaching fare when each is
judged by thresholds set without it (leave-one-out), since the thresholds set on them flatter them.
``operating_point`` measures the same shares on labelled test scores (``inspector evaluate``).

Example:
    >>> thresholds = calibrate(detector.train_scores, good_maps=detector.train_maps)
    >>> thresholds.fail > thresholds.good_max
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

__all__ = [
    "MAX_SCORE",
    "check_thresholds",
    "FlagRateOutlook",
    "HeldOutDefectRates",
    "Thresholds",
    "auroc",
    "beta_quantile",
    "calibrate",
    "good_flag_outlook",
    "held_out_defect_rates",
    "operating_point",
]

# ours: with a few near-identical good images the spread is ~0; it never drops below 5 % of
# the median good score, so the fail threshold keeps a real margin above the goods.
MIN_RELATIVE_SPREAD: Final = 0.05
# Pixel-F1 search resolution: candidate thresholds are this many histogram edges.
PIXEL_BINS: Final = 2048
# Pooled good pixels beyond this many are subsampled (seeded) for the quantile.
MAX_POOLED_PIXELS: Final = 20_000_000
# Image scores and map values are cosine distances (1 - cos, models/detectors/_knn.py): never above 2.
# A threshold above this can never be reached, so a model holding one would pass every part.
MAX_SCORE: Final = 2.0


def check_thresholds(
    review: object, fail: object, pixel: object, *, prefix: str = "thresholds", region_peak: object = None
) -> None:
    """Refuse thresholds that no taught model has: not a finite number in [0, `MAX_SCORE`], or review above fail.

    Args:
        review, fail, pixel: the three thresholds (None is refused too).
        prefix: how the message names them (``thresholds`` gives ``thresholds.fail``).
        region_peak: ``Thresholds.region_peak``: None, or a finite number >= 0 (a map value, not bounded by
            `MAX_SCORE` when the map is in units of the bank's spread).

    Raises:
        ValueError: naming the field and its value.
    """
    values = {"review": review, "fail": fail, "pixel": pixel}
    for key, value in values.items():
        if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
                or not 0 <= value <= MAX_SCORE):
            msg = (f"{prefix}.{key} is {value!r}; it must be a finite number from 0 to {MAX_SCORE:g} "
                   "(scores are cosine distances: a threshold above that would pass every part)")
            raise ValueError(msg)
    if review > fail:    # type: ignore[operator]   # both numbers: checked above
        msg = f"{prefix}.review ({review}) is above {prefix}.fail ({fail})"
        raise ValueError(msg)
    if region_peak is not None and (not isinstance(region_peak, int | float) or isinstance(region_peak, bool)
                                    or not math.isfinite(region_peak) or region_peak < 0):
        msg = f"{prefix}.region_peak is {region_peak!r}; it must be a finite number >= 0 or null"
        raise ValueError(msg)


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Decision thresholds and the score statistics they came from.

    A frame is FAIL when its score >= ``fail``, REVIEW when >= ``review``, PASS otherwise; pixels
    at or above ``pixel`` form defect regions; of those, the ones whose peak reaches ``region_peak``
    (and the frame's strongest) are shown.
    """

    review: float  # image score at or above this -> REVIEW (<= fail)
    fail: float  # image score at or above this -> FAIL
    pixel: float  # anomaly-map value at or above this is a defect pixel
    rule: str  # one sentence stating how the thresholds were chosen
    # --- statistics of the scores used ---
    good_mean: float  # mean good (leave-one-out) image score
    good_std: float  # standard deviation of the good scores (ddof=1)
    good_max: float  # highest good score
    n_good: int  # good scores used
    n_defect: int = 0  # defect scores used
    expected_false_reject: float  # share of the good scores at or above ``fail``
    expected_review: float | None = None  # share at or above ``review`` (REVIEW or FAIL); None in old models
    # --- only when defect scores were given ---
    auroc: float | None = None  # image AUROC of good vs defect scores
    f1: float | None = None  # image F1 at ``fail`` (defect = positive)
    confusion: tuple[int, int, int, int] | None = None  # (tn, fp, fn, tp) at ``fail``
    pixel_f1: float | None = None  # pixel F1 at ``pixel`` over the defect masks
    # a region is shown when its peak reaches this (the frame's strongest always): the highest good map
    # value; None (no good maps, or a model saved before) shows every region
    region_peak: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["confusion"] = list(self.confusion) if self.confusion is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: naming the unknown or missing field.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            msg = f"unknown Thresholds field(s): {', '.join(unknown)}"
            raise ValueError(msg)
        values = dict(data)
        if values.get("confusion") is not None:
            values["confusion"] = tuple(int(v) for v in values["confusion"])
        try:
            return cls(**values)
        except TypeError as exc:
            msg = f"Thresholds fields incomplete: {exc}"
            raise ValueError(msg) from exc


def auroc(good_scores: np.ndarray, defect_scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U): P(defect score > good score), ties count half.

    Args:
        good_scores: (N,) float scores of good images (negatives).
        defect_scores: (M,) float scores of defect images (positives).
    """
    good = np.asarray(good_scores, dtype=np.float64).ravel()
    bad = np.asarray(defect_scores, dtype=np.float64).ravel()
    if good.size == 0 or bad.size == 0:
        msg = "AUROC needs at least one good and one defect score"
        raise ValueError(msg)
    good_sorted = np.sort(good)
    below = np.searchsorted(good_sorted, bad, side="left")
    not_above = np.searchsorted(good_sorted, bad, side="right")
    return float((below.sum() + 0.5 * (not_above - below).sum()) / (good.size * bad.size))


def calibrate(
    good_scores: np.ndarray | Sequence[float],
    *,
    good_maps: np.ndarray | Sequence[np.ndarray] | None = None,
    defect_scores: np.ndarray | Sequence[float] | None = None,
    defect_maps: np.ndarray | Sequence[np.ndarray] | None = None,
    defect_masks: np.ndarray | Sequence[np.ndarray] | None = None,
    target_false_reject: float | None = None,
    fail_margin: float = 1.0,
    review_quantile: float = 0.90,
    pixel_quantile: float = 0.999,
) -> Thresholds:
    """Choose review, fail and pixel thresholds.

    Args:
        good_scores: (N,) image scores of good images not in the bank (leave-one-out or held out);
            at least 2.
        good_maps: their anomaly maps, each (H, W) float32 (any sizes), for the pixel threshold.
        defect_scores: (M,) image scores of defect images, if any.
        defect_maps: the defect images' anomaly maps, each (H, W) float32.
        defect_masks: ground-truth masks for ``defect_maps``, each (H, W) bool (same sizes).
        target_false_reject: accepted share of good images at or above ``fail`` (e.g. 0.01);
            None picks ``fail`` by the margin rule (good only) or by best F1 (with defects).
        fail_margin: good-only rule: ``fail = max + fail_margin * spread``.
        review_quantile: ``review`` = this quantile of the good scores.
        pixel_quantile: good-only pixel rule: this quantile of the pooled good map pixels.

    Returns:
        The thresholds, the rule used and the score statistics.

    Raises:
        ValueError: fewer than 2 good scores, non-finite scores, or inconsistent maps/masks.
    """
    good = _scores("good_scores", good_scores)
    if good.size < 2:
        msg = (f"calibration needs the scores of at least 2 good images, got {good.size}; fit on 2 or more "
               "good images (leave-one-out scoring needs a second image) or pass held-out good scores")
        raise ValueError(msg)
    if target_false_reject is not None and not 0.0 <= target_false_reject < 1.0:
        msg = f"target_false_reject must be in [0, 1), got {target_false_reject}"
        raise ValueError(msg)
    for name, q in (("review_quantile", review_quantile), ("pixel_quantile", pixel_quantile)):
        if not 0.0 <= q <= 1.0:
            msg = f"{name} must be in [0, 1], got {q}"
            raise ValueError(msg)
    if fail_margin < 0:
        msg = f"fail_margin must be >= 0, got {fail_margin}"
        raise ValueError(msg)
    defects = _scores("defect_scores", defect_scores) if defect_scores is not None else np.empty(0)

    mean, std, top = float(good.mean()), float(good.std(ddof=1)), float(good.max())
    median = float(np.median(good))
    mad_spread = 1.4826 * float(np.median(np.abs(good - median)))  # = std for normally spread scores
    spread = max(mad_spread, MIN_RELATIVE_SPREAD * abs(median))
    review = float(np.quantile(good, review_quantile))
    auc = f1 = None
    confusion = None
    if target_false_reject is not None:
        fail = _fail_for_false_reject(good, target_false_reject)
        fail_rule = (f"fail = lowest score with at most {100 * target_false_reject:g} % of good scores "
                     "at or above it")
    elif defects.size:
        fail, best_f1 = _best_f1_threshold(good, defects)
        fail_rule = f"fail = best-F1 threshold over the good and defect scores (F1 {best_f1:.3f})"
    else:
        fail = top + fail_margin * spread
        fail_rule = (f"fail = highest good score {top:.4g} + {fail_margin:g} x spread {spread:.3g} "
                     f"(1.4826 x MAD, at least {100 * MIN_RELATIVE_SPREAD:g} % of the median)")
        if fail > MAX_SCORE:     # widely spread good scores: no cosine distance reaches the margin
            fail = MAX_SCORE
            fail_rule += f", at most {MAX_SCORE:g} (the largest cosine distance)"
    review = min(review, fail)
    review_rule = f"review = {100 * review_quantile:g}th percentile of good scores (at most fail)"
    if defects.size:
        auc = auroc(good, defects)
        tn, fp = int((good < fail).sum()), int((good >= fail).sum())
        fn, tp = int((defects < fail).sum()), int((defects >= fail).sum())
        confusion = (tn, fp, fn, tp)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0

    pixel, pixel_rule, pixel_f1 = _pixel_threshold(
        good_maps, defect_maps, defect_masks, fallback=fail, pixel_quantile=pixel_quantile
    )
    region_peak, peak_rule = _region_peak(good_maps)
    source = f"{good.size} good" + (f" and {defects.size} defect" if defects.size else "") + " image scores"
    rule = f"{fail_rule}; {review_rule}; {pixel_rule}{peak_rule} ({source})."
    return Thresholds(
        review=float(review), fail=float(fail), pixel=float(pixel), rule=rule,
        good_mean=mean, good_std=std, good_max=top, n_good=int(good.size), n_defect=int(defects.size),
        expected_false_reject=float((good >= fail).mean()), expected_review=float((good >= review).mean()),
        auroc=auc, f1=f1, confusion=confusion, pixel_f1=pixel_f1, region_peak=region_peak,
    )


@dataclass(frozen=True, kw_only=True)
class FlagRateOutlook:
    """The share of new good parts a threshold will stop, from n good (leave-one-out) scores.

    ``expected`` is the conformal rate: exact when the threshold equals one of the good scores, an
    upper bound (by at most 1 / (n + 1)) when it lies between two. ``upper`` is the ``confidence``
    quantile of the true rate over the draw of the good images (a one-sided bound).
    """

    threshold: float
    n_good: int            # good scores the threshold was set from
    n_at_or_above: int     # of them, at or above the threshold
    expected: float        # conformal expected share of new good parts at or above the threshold
    exact: bool            # True: the threshold is a good score, ``expected`` is exact; False: an upper bound
    upper: float           # one-sided ``confidence`` bound on the true share
    confidence: float

    def sentence(self, what: str) -> str:
        """One line for the teach report, e.g. ``what="go to REVIEW or FAIL"``."""
        parts = max(1, round(1 / self.expected)) if self.expected > 0 else 0
        about = f"about 1 good part in {parts} will {what}" if parts else f"almost no good part will {what}"
        share = f"{100 * self.expected:.1f} %" if self.exact else f"at most {100 * self.expected:.1f} %"
        return (f"{about} ({share}, conformal); with {self.n_good} good images the true share "
                f"could be as high as {100 * self.upper:.1f} % ({100 * self.confidence:g} % bound)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return dataclasses.asdict(self)


def good_flag_outlook(
    good_scores: np.ndarray | Sequence[float], threshold: float, *, confidence: float = 0.90
) -> FlagRateOutlook:
    """Expected and worst-case (one-sided bound) share of new good parts at or above ``threshold``.

    Args:
        good_scores: (N,) leave-one-out scores of the good images the threshold was set from; N >= 1.
        threshold: the REVIEW or FAIL threshold.
        confidence: level of the one-sided upper bound, in (0, 1).

    Raises:
        ValueError: no scores, non-finite scores, or a confidence outside (0, 1).
    """
    good = _scores("good_scores", good_scores)
    if good.size == 0:
        msg = "good_flag_outlook needs at least one good score"
        raise ValueError(msg)
    if not 0.0 < confidence < 1.0:
        msg = f"confidence must be in (0, 1), got {confidence}"
        raise ValueError(msg)
    n = int(good.size)
    above = int((good >= threshold).sum())
    on_a_score = bool(np.any(good == threshold))
    # Gaps of the n + 1 sorted values that a new score must land in to be >= threshold: `above` when
    # the threshold is a good score, one more (part of the gap holding it) when it lies between two.
    gaps = above if on_a_score else min(n + 1, above + 1)
    expected = gaps / (n + 1)
    # True rate p = 1 - F(x_(j)) with j = n + 1 - gaps the order statistic at or below the threshold:
    # p ~ Beta(gaps, n + 1 - gaps). gaps = n + 1 (threshold below every good score): p = 1.
    upper = 1.0 if gaps >= n + 1 else (0.0 if gaps == 0 else beta_quantile(confidence, gaps, n + 1 - gaps))
    return FlagRateOutlook(threshold=float(threshold), n_good=n, n_at_or_above=above, expected=float(expected),
                           exact=on_a_score or gaps in (0, n + 1), upper=float(upper), confidence=float(confidence))


@dataclass(frozen=True, kw_only=True)
class HeldOutDefectRates:
    """Known-bad images, each judged by the thresholds ``calibrate`` sets from the others (leave-one-out)."""

    n_defect: int
    flagged: int     # REVIEW or FAIL
    failed: int      # FAIL

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.n_defect if self.n_defect else 0.0

    @property
    def fail_rate(self) -> float:
        return self.failed / self.n_defect if self.n_defect else 0.0

    def sentence(self) -> str:
        """One line for the teach report."""
        return (f"known-bad images, each judged by thresholds set without it (leave-one-out): "
                f"{100 * self.flag_rate:.0f} % flagged (REVIEW or FAIL), {100 * self.fail_rate:.0f} % FAIL "
                f"of {self.n_defect}")


def held_out_defect_rates(
    good_scores: np.ndarray | Sequence[float],
    defect_scores: np.ndarray | Sequence[float],
    **calibrate_options: Any,
) -> HeldOutDefectRates:
    """How many known-bad images the calibration would stop had it not seen them.

    For each defect score, ``calibrate`` runs on the good scores and the other defect scores (with one
    defect image, on the good scores alone) and the held-out score is compared with its review and fail
    thresholds. The thresholds the recipe keeps are set from all of them; these rates are what a
    defect the teaching never saw can expect, which the in-sample rates overstate.

    Args:
        calibrate_options: ``calibrate``'s score options (``target_false_reject``, ``fail_margin``,
            ``review_quantile``) as teaching used them.

    Raises:
        ValueError: non-finite scores or bad options (from ``calibrate``).
    """
    good = _scores("good_scores", good_scores)
    defects = _scores("defect_scores", defect_scores)
    flagged = failed = 0
    for i in range(defects.size):
        rest = np.delete(defects, i)
        t = calibrate(good, defect_scores=rest if rest.size else None, **calibrate_options)
        flagged += int(defects[i] >= t.review)
        failed += int(defects[i] >= t.fail)
    return HeldOutDefectRates(n_defect=int(defects.size), flagged=flagged, failed=failed)


def operating_point(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    defect_types: Sequence[str],
    *,
    review: float,
    fail: float,
) -> dict[str, Any]:
    """Shares of good and defect images stopped at a recipe's thresholds, overall and per defect type.

    The verdict rule is ``inspector.results.verdict_for``'s (``score >= fail`` FAIL, else ``>= review``
    REVIEW, else PASS; models/ cannot import it, a test checks that the two agree). "Flagged" means
    REVIEW or FAIL: the part leaves the line either way.

    Args:
        scores: (N,) finite image scores.
        labels: (N,) 0 good / 1 defective.
        defect_types: (N,) the defect type of each image (the test folder's subfolder; ignored for goods).
        review: the REVIEW threshold.
        fail: the FAIL threshold.

    Returns:
        ``defect_flag_rate``, ``good_flag_rate``, ``defect_fail_rate``, ``good_fail_rate`` (NaN when
        there are no images of that kind), ``n_good``, ``n_defect`` and ``per_defect_type``: for each
        type ``{"n", "flag_rate", "fail_rate"}``.

    Raises:
        ValueError: lengths differ or a score is not finite.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(labels).reshape(-1)
    if not values.size == truth.size == len(defect_types):
        msg = (f"operating_point: {values.size} scores, {truth.size} labels and {len(defect_types)} defect "
               "types; give one of each per test image")
        raise ValueError(msg)
    if not np.isfinite(values).all():
        msg = "operating_point: a score is NaN or infinite; score the test images again"
        raise ValueError(msg)
    failed = values >= fail
    flagged = failed | (values >= review)
    good, bad = truth == 0, truth == 1

    def share(hit: np.ndarray, chosen: np.ndarray) -> float:
        return float(hit[chosen].mean()) if chosen.any() else math.nan

    types = np.asarray(list(defect_types), dtype=object)
    per_type = {
        str(name): {"n": int((bad & (types == name)).sum()), "flag_rate": share(flagged, bad & (types == name)),
                    "fail_rate": share(failed, bad & (types == name))}
        for name in sorted({str(t) for t in types[bad]})
    }
    return {
        "review": float(review), "fail": float(fail),
        "defect_flag_rate": share(flagged, bad), "good_flag_rate": share(flagged, good),
        "defect_fail_rate": share(failed, bad), "good_fail_rate": share(failed, good),
        "n_good": int(good.sum()), "n_defect": int(bad.sum()), "per_defect_type": per_type,
    }


def beta_quantile(q: float, a: int, b: int) -> float:
    """The ``q`` quantile of Beta(a, b) for integer a, b >= 1 (bisection on the binomial identity).

    P(Beta(a, b) <= x) = P(Binomial(a + b - 1, x) >= a), so no special-function library is needed.
    """
    if a < 1 or b < 1:
        msg = f"beta_quantile needs integer a, b >= 1, got a={a}, b={b}"
        raise ValueError(msg)
    trials = a + b - 1
    coefficients = [math.comb(trials, k) for k in range(a, trials + 1)]

    def cdf(x: float) -> float:
        return sum(c * x**k * (1 - x) ** (trials - k) for c, k in zip(coefficients, range(a, trials + 1), strict=True))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------------------------------- helpers


def _scores(name: str, values: np.ndarray | Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(arr).all():
        msg = f"{name} contains non-finite values (NaN or inf); score the images again"
        raise ValueError(msg)
    return arr


def _fail_for_false_reject(good: np.ndarray, target: float) -> float:
    """Lowest threshold with at most ``target`` of the good scores at or above it."""
    desc = np.sort(good)[::-1]
    allowed = int(np.floor(target * good.size + 1e-9))  # good scores that may be rejected
    if allowed >= good.size:
        return float(desc[-1])
    return float(np.nextafter(desc[allowed], np.inf))


def _best_f1_threshold(good: np.ndarray, defects: np.ndarray) -> tuple[float, float]:
    """Threshold with the best F1 (defect = positive); midpoints between sorted scores.

    Among equal F1 the lowest threshold wins: fewer escaped defects.
    """
    values = np.unique(np.concatenate([good, defects]))
    candidates = np.concatenate([(values[:-1] + values[1:]) / 2, [np.nextafter(values[-1], np.inf)]])
    candidates = np.concatenate([[values[0]], candidates])
    good_sorted, bad_sorted = np.sort(good), np.sort(defects)
    fp = good.size - np.searchsorted(good_sorted, candidates, side="left")
    tp = defects.size - np.searchsorted(bad_sorted, candidates, side="left")
    fn = defects.size - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = int(np.argmax(f1))  # argmax returns the first, i.e. the lowest threshold
    return float(candidates[best]), float(f1[best])


def _as_maps(name: str, maps: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(m) for m in maps]
    for i, m in enumerate(out):
        if m.ndim != 2 or m.size == 0:
            msg = f"{name}[{i}] must be a non-empty (H, W) array, got shape {m.shape}"
            raise ValueError(msg)
    return out


def _pixel_threshold(
    good_maps: np.ndarray | Sequence[np.ndarray] | None,
    defect_maps: np.ndarray | Sequence[np.ndarray] | None,
    defect_masks: np.ndarray | Sequence[np.ndarray] | None,
    *,
    fallback: float,
    pixel_quantile: float,
) -> tuple[float, str, float | None]:
    goods = _as_maps("good_maps", good_maps) if good_maps is not None else []
    if defect_masks is not None:
        if defect_maps is None:
            msg = "defect_masks were given without defect_maps; pass the defect images' anomaly maps too"
            raise ValueError(msg)
        maps = _as_maps("defect_maps", defect_maps)
        masks = _as_maps("defect_masks", defect_masks)
        if len(maps) != len(masks):
            msg = f"{len(maps)} defect_maps but {len(masks)} defect_masks; give one mask per map"
            raise ValueError(msg)
        for i, (m, k) in enumerate(zip(maps, masks, strict=True)):
            if m.shape != k.shape:
                msg = f"defect_masks[{i}] has shape {k.shape} but defect_maps[{i}] has {m.shape}"
                raise ValueError(msg)
        positives = np.concatenate([m[k.astype(bool)].ravel() for m, k in zip(maps, masks, strict=True)])
        negatives = np.concatenate([m[~k.astype(bool)].ravel() for m, k in zip(maps, masks, strict=True)]
                                   + [g.ravel() for g in goods])
        if positives.size:
            pixel, f1 = _best_pixel_f1(positives.astype(np.float64), negatives.astype(np.float64))
            return pixel, f"pixel = best pixel-F1 threshold over {len(maps)} defect masks (F1 {f1:.3f})", f1
    if goods:
        pooled = np.concatenate([g.ravel() for g in goods]).astype(np.float64)
        if not np.isfinite(pooled).all():
            msg = "good_maps contain non-finite values (NaN or inf); score the images again"
            raise ValueError(msg)
        if pooled.size > MAX_POOLED_PIXELS:
            pooled = np.random.default_rng(0).choice(pooled, MAX_POOLED_PIXELS, replace=False)
        pixel = float(np.quantile(pooled, pixel_quantile))
        return pixel, f"pixel = {100 * pixel_quantile:g}th percentile of {len(goods)} good anomaly maps", None
    return float(fallback), "pixel = fail (no anomaly maps given)", None


def _region_peak(good_maps: np.ndarray | Sequence[np.ndarray] | None) -> tuple[float | None, str]:
    """The highest value of the good maps and its clause of the rule (None and "" without good maps)."""
    goods = _as_maps("good_maps", good_maps) if good_maps is not None else []
    if not goods:
        return None, ""
    peak = max(float(np.max(g)) for g in goods)
    if not math.isfinite(peak):
        msg = "good_maps contain non-finite values (NaN or inf); score the images again"
        raise ValueError(msg)
    return peak, (f"; a region is shown when its peak reaches the highest good map value {peak:.4g} "
                  "(or is the frame's strongest)")


def _best_pixel_f1(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """Best-F1 pixel threshold on a histogram of ``PIXEL_BINS`` edges (exact counts per edge)."""
    lo = min(positives.min(), negatives.min()) if negatives.size else positives.min()
    hi = max(positives.max(), negatives.max()) if negatives.size else positives.max()
    if not hi > lo:
        return float(lo), 0.0
    edges = np.linspace(lo, hi, PIXEL_BINS + 1)
    pos_hist, _ = np.histogram(positives, bins=edges)
    neg_hist, _ = np.histogram(negatives, bins=edges)
    # Pixels >= edges[i] are those in bins i.. (the last bin includes hi).
    tp = np.cumsum(pos_hist[::-1])[::-1]
    fp = np.cumsum(neg_hist[::-1])[::-1]
    fn = positives.size - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = int(np.argmax(f1))
    return float(edges[best]), float(f1[best])
