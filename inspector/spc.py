"""Statistical process control: p-chart of the defect rate, individuals chart of the score, run rules, drift.

Pure numpy, no database and no Qt: `inspector.statistics` feeds it counts and scores from the store,
the CLI prints it and the app draws it.

- **p-chart** (Shewhart; Montgomery, "Introduction to Statistical Quality Control", ch. 7): per
  group (lot or hour) the share of FAIL parts ``p_i = d_i / n_i``; centre ``p̄ = Σd / Σn``;
  limits ``p̄ ± 3 sqrt(p̄ (1 - p̄) / n_i)`` (per group, as group sizes differ; the lower is cut at 0).
- **individuals chart** of a score series with a known (taught) mean and sigma.
- **run rules** on the standardised points ``z_i`` (for a p-chart ``(p_i - p̄) / sigma_i``):
  ``beyond_3sigma`` (Western Electric rule 1, Nelson 1), ``run_of_8`` (8 points in a row on one side
  of the centre line: Western Electric rule 4; Nelson uses 9) and ``trend_of_6`` (6 points in a row
  steadily increasing or decreasing: Nelson rule 3). A rule that fires starts counting afresh, so
  one long run raises one alarm, not one per point.
- **drift** of the good parts' scores against the teaching distribution: two-sample
  Kolmogorov-Smirnov test and the shift of the mean in teaching standard deviations.

In-control false alarms per point, for reference (normal data): beyond 3 sigma 0.27 % (ARL 370),
run of 8 about 1/255 once the counting restarts, trend of 6 about 1/360.

Alarms are events (`AlarmBus`): a screen, the CLI or an MQTT publisher subscribes.

Example:
    >>> chart = p_chart([("lot 1", 200, 9), ("lot 2", 200, 31)])
    >>> [a.rule for a in chart.alarms]
    ['beyond_3sigma']
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

__all__ = [
    "RULES",
    "Alarm",
    "AlarmBus",
    "ControlChart",
    "ChartPoint",
    "DriftReport",
    "Rule",
    "individuals_chart",
    "ks_two_sample",
    "p_chart",
    "run_rules",
    "score_drift",
]

logger = logging.getLogger(__name__)

Rule = Literal["beyond_3sigma", "run_of_8", "trend_of_6"]
RULES: Final[tuple[Rule, ...]] = ("beyond_3sigma", "run_of_8", "trend_of_6")
SIGMA_LIMIT: Final = 3.0   # Shewhart's 3-sigma limits
RUN_LENGTH: Final = 8      # Western Electric rule 4: 8 in a row on one side of the centre line
TREND_LENGTH: Final = 6    # Nelson rule 3: 6 in a row steadily increasing or decreasing
DRIFT_P_VALUE: Final = 0.001     # ours: KS p-value below this is drift (few false warnings at a station)
DRIFT_MEAN_SHIFT: Final = 1.0    # ours: and the mean moved by at least 1 teaching sigma (an effect that matters)
MIN_DRIFT_SAMPLES: Final = 30    # ours: fewer recent good scores give no verdict


@dataclass(frozen=True, kw_only=True)
class ChartPoint:
    """One point of a control chart."""

    key: str            # group: lot, local hour, or the index of a score
    value: float        # p_i for a p-chart, the score for an individuals chart
    n: int              # parts in the group (1 for an individuals chart)
    centre: float
    ucl: float          # upper control limit
    lcl: float          # lower control limit (>= 0 for a p-chart)


@dataclass(frozen=True, kw_only=True)
class Alarm:
    """A run rule that fired: an event for the screen, the log and (when configured) MQTT."""

    rule: Rule
    chart: str          # "fail_rate" or "score"
    key: str            # the group where it fired
    index: int          # position of that point in the chart
    message: str        # one sentence for an operator
    recipe: str = ""
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class ControlChart:
    """Points, the centre line and the alarms of one chart."""

    name: str
    points: tuple[ChartPoint, ...]
    centre: float
    alarms: tuple[Alarm, ...]


def run_rules(z: Sequence[float] | np.ndarray) -> list[tuple[Rule, int]]:
    """Apply the run rules to standardised points (centre 0, sigma 1).

    Returns:
        ``(rule, index)`` for each time a rule fires, in order; after firing, that rule counts afresh.
        A non-finite point breaks runs and trends and never fires.
    """
    fired: list[tuple[Rule, int]] = []
    side_run = 0
    side = 0
    trend_run = 1          # points in the current monotone sequence
    direction = 0
    previous: float | None = None
    for i, value in enumerate(np.asarray(z, dtype=np.float64)):
        if not math.isfinite(value):
            side_run, side, trend_run, direction, previous = 0, 0, 1, 0, None
            continue
        if abs(value) > SIGMA_LIMIT:
            fired.append(("beyond_3sigma", i))
        s = 1 if value > 0 else -1 if value < 0 else 0
        if s != 0 and s == side:
            side_run += 1
        else:
            side, side_run = s, 1 if s != 0 else 0
        if side_run >= RUN_LENGTH:
            fired.append(("run_of_8", i))
            side_run = 0
        if previous is not None:
            step = 1 if value > previous else -1 if value < previous else 0
            if step != 0 and step == direction:
                trend_run += 1
            else:
                direction, trend_run = step, 2 if step != 0 else 1
            if trend_run >= TREND_LENGTH:
                fired.append(("trend_of_6", i))
                trend_run, direction = 1, 0
        previous = float(value)
    return fired


_RULE_TEXT: Final[dict[Rule, str]] = {
    "beyond_3sigma": "beyond the 3-sigma limit",
    "run_of_8": f"{RUN_LENGTH} points in a row on one side of the centre line",
    "trend_of_6": f"{TREND_LENGTH} points in a row steadily rising or falling",
}


def _alarms(chart: str, keys: Sequence[str], z: np.ndarray, values: Sequence[float], recipe: str,
            what: str) -> tuple[Alarm, ...]:
    out = []
    for rule, i in run_rules(z):
        direction = "high" if z[i] > 0 else "low"
        message = (f"{what} {direction} at {keys[i]} ({values[i]:.4g}): {_RULE_TEXT[rule]}"
                   + (f" (recipe {recipe})" if recipe else ""))
        out.append(Alarm(rule=rule, chart=chart, key=keys[i], index=i, message=message, recipe=recipe))
    return tuple(out)


def p_chart(groups: Sequence[tuple[str, int, int]], *, centre: float | None = None, recipe: str = "") -> ControlChart:
    """p-chart of the FAIL rate.

    Args:
        groups: ``(key, inspected, failed)`` per lot or hour, in time order; groups with no parts
            are skipped.
        centre: the in-control FAIL rate, when known (e.g. from a reference period); None estimates
            it from these groups (``Σ failed / Σ inspected``).
        recipe: named in the alarms.

    Raises:
        ValueError: a group with more failed than inspected parts, or negative counts.
    """
    rows = []
    for key, n, d in groups:
        if n < 0 or d < 0 or d > n:
            msg = f"p-chart group {key!r}: {d} failed of {n} inspected is not a valid count"
            raise ValueError(msg)
        if n:
            rows.append((key, int(n), int(d)))
    total_n = sum(n for _, n, _ in rows)
    p_bar = centre if centre is not None else (sum(d for _, _, d in rows) / total_n if total_n else 0.0)
    points = []
    z = np.empty(len(rows))
    for i, (key, n, d) in enumerate(rows):
        p = d / n
        sigma = math.sqrt(p_bar * (1 - p_bar) / n)
        points.append(ChartPoint(key=key, value=p, n=n, centre=p_bar, ucl=min(1.0, p_bar + SIGMA_LIMIT * sigma),
                                 lcl=max(0.0, p_bar - SIGMA_LIMIT * sigma)))
        # sigma 0 (p̄ of 0 or 1): any departure is infinitely far; no departure is on the line
        z[i] = (p - p_bar) / sigma if sigma > 0 else (0.0 if p == p_bar else math.copysign(math.inf, p - p_bar))
    finite_z = np.where(np.isinf(z), np.sign(z) * (SIGMA_LIMIT + 1), z)
    alarms = _alarms("fail_rate", [p.key for p in points], finite_z, [p.value for p in points], recipe,
                     "FAIL rate")
    return ControlChart(name="fail_rate", points=tuple(points), centre=p_bar, alarms=alarms)


def individuals_chart(scores: Sequence[float] | np.ndarray, *, mean: float, sigma: float,
                      keys: Sequence[str] | None = None, recipe: str = "") -> ControlChart:
    """Individuals chart of anomaly scores against a known mean and sigma (the teaching statistics).

    Raises:
        ValueError: a sigma that is not a positive number.
    """
    if not (math.isfinite(sigma) and sigma > 0) or not math.isfinite(mean):
        msg = f"individuals chart needs a finite mean and a sigma > 0, got mean {mean} and sigma {sigma}"
        raise ValueError(msg)
    values = np.asarray(scores, dtype=np.float64)
    names = list(keys) if keys is not None else [str(i) for i in range(len(values))]
    points = tuple(ChartPoint(key=k, value=float(v), n=1, centre=mean, ucl=mean + SIGMA_LIMIT * sigma,
                              lcl=mean - SIGMA_LIMIT * sigma) for k, v in zip(names, values, strict=True))
    alarms = _alarms("score", names, (values - mean) / sigma, values.tolist(), recipe, "anomaly score")
    return ControlChart(name="score", points=points, centre=mean, alarms=alarms)


# --------------------------------------------------------------------------------------------- drift


@dataclass(frozen=True, kw_only=True)
class DriftReport:
    """Good parts' recent scores against the teaching distribution, with the evidence."""

    n_reference: int
    n_recent: int
    ks_statistic: float           # largest gap between the two empirical CDFs, [0, 1]
    p_value: float                # asymptotic two-sample KS p-value
    mean_shift_sigma: float       # (recent mean - teaching mean) / teaching std
    reference_quantiles: tuple[float, float, float]   # 10th, 50th, 90th percentile
    recent_quantiles: tuple[float, float, float]
    drifted: bool                 # p < DRIFT_P_VALUE and |mean shift| >= DRIFT_MEAN_SHIFT
    message: str                  # one sentence: the verdict and its evidence


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value (Smirnov's series).

    The same as ``scipy.stats.ks_2samp(..., method="asymp")`` to a few decimals; written out so
    the engine needs no scipy.
    """
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    both = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, both, side="right") / a.size
    cdf_b = np.searchsorted(b, both, side="right") / b.size
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d          # Stephens' small-sample correction (Numerical Recipes)
    if lam < 1e-3:
        return d, 1.0
    p = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
    return d, float(min(1.0, max(0.0, p)))


def score_drift(reference: Sequence[float] | np.ndarray, recent: Sequence[float] | np.ndarray) -> DriftReport | None:
    """Compare recent good scores with the teaching (leave-one-out) scores.

    Args:
        reference: the teaching scores of good images (at least 2).
        recent: scores of recent parts judged good (PASS), in any order.

    Returns:
        The report, or None when there are fewer than ``MIN_DRIFT_SAMPLES`` recent scores or fewer
        than 2 reference scores (no verdict either way).
    """
    ref = np.asarray(reference, np.float64)
    new = np.asarray(recent, np.float64)
    ref, new = ref[np.isfinite(ref)], new[np.isfinite(new)]
    if ref.size < 2 or new.size < MIN_DRIFT_SAMPLES:
        return None
    d, p = ks_two_sample(ref, new)
    std = float(ref.std(ddof=1)) or 1e-12
    shift = (float(new.mean()) - float(ref.mean())) / std
    drifted = p < DRIFT_P_VALUE and abs(shift) >= DRIFT_MEAN_SHIFT
    q_ref = tuple(float(v) for v in np.quantile(ref, (0.1, 0.5, 0.9)))
    q_new = tuple(float(v) for v in np.quantile(new, (0.1, 0.5, 0.9)))
    if drifted:
        verdict = "DRIFT: good parts now score unlike the teaching images"
    elif p < DRIFT_P_VALUE:    # the shapes differ, the level has not moved enough to matter: say why it is calm
        verdict = (f"no drift alarm: the spread differs from teaching, but the mean moved less than "
                   f"{DRIFT_MEAN_SHIFT:.1f} teaching sigma")
    else:
        verdict = "no drift"
    message = (f"{verdict} (KS D={d:.3f}, p={p:.2g}, alarm below {DRIFT_P_VALUE:g}; mean moved {shift:+.1f} "
               f"teaching sigma, alarm from {DRIFT_MEAN_SHIFT:.1f}; "
               f"median {q_ref[1]:.4f} -> {q_new[1]:.4f}; {new.size} recent vs {ref.size} taught)")
    if drifted:
        message += "; check the product, the light and the camera before defects are missed"
    return DriftReport(n_reference=int(ref.size), n_recent=int(new.size), ks_statistic=d, p_value=p,
                       mean_shift_sigma=shift, reference_quantiles=q_ref,  # type: ignore[arg-type]
                       recent_quantiles=q_new, drifted=drifted, message=message)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- events


class AlarmBus:
    """Alarms as events: subscribers (a screen, the log, an MQTT publisher) get each new one.

    Each alarm is published once per (recipe, chart, rule, key): a chart recomputed every few seconds
    does not repeat it. Subscribers are called on the publishing thread; one that raises is logged
    and the others still get the alarm.

    Example:
        >>> bus = AlarmBus()
        >>> unsubscribe = bus.subscribe(lambda alarm: print(alarm.message))
        >>> bus.publish(chart.alarms)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Alarm], None]] = []
        self._seen: set[tuple[str, str, str, str]] = set()

    def subscribe(self, callback: Callable[[Alarm], None]) -> Callable[[], None]:
        """Call ``callback(alarm)`` for every new alarm; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, alarms: Sequence[Alarm]) -> list[Alarm]:
        """Send the alarms not sent before; returns those."""
        with self._lock:
            new = [a for a in alarms if (a.recipe, a.chart, a.rule, a.key) not in self._seen]
            self._seen.update((a.recipe, a.chart, a.rule, a.key) for a in new)
            subscribers = list(self._subscribers)
        for alarm in new:
            logger.warning("SPC alarm: %s", alarm.message)
            for callback in subscribers:
                try:
                    callback(alarm)
                except Exception:
                    logger.exception("an SPC alarm subscriber failed on %r", alarm.message)
        return new
