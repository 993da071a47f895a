"""SPC: control limits, run rules on series with known shifts, false alarms in control, drift, alarm events."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from inspector.spc import (
    Alarm,
    AlarmBus,
    individuals_chart,
    ks_two_sample,
    p_chart,
    run_rules,
    score_drift,
)

# In-control false-alarm rates per point of normal data (Montgomery; Champ & Woodall 1987 for runs):
# beyond 3 sigma 0.0027 (ARL 370); 8 on one side about 1/255 after a restart; a trend of 6 about 1/360.
EXPECTED_PER_10000 = {"beyond_3sigma": 27.0, "run_of_8": 39.2, "trend_of_6": 27.8}


def test_in_control_points_raise_no_more_alarms_than_the_false_alarm_rate() -> None:
    z = np.random.default_rng(0).standard_normal(10_000)
    counts = Counter(rule for rule, _ in run_rules(z))
    for rule, expected in EXPECTED_PER_10000.items():
        # a Poisson count above expected + 4 sqrt(expected) happens less than once in 10,000 seeds
        assert counts[rule] <= expected + 4 * math.sqrt(expected), (rule, counts[rule])
        assert counts[rule] >= 1, f"{rule} never fires in 10,000 points: the rule is dead"


def test_a_3_sigma_shift_is_caught_at_once_by_the_limit() -> None:
    z = np.random.default_rng(1).standard_normal(100)
    z[50:] += 3.5
    first = min(i for rule, i in run_rules(z) if rule == "beyond_3sigma" and i >= 50)
    assert first - 50 < 3        # textbook ARL for a 3.5-sigma shift is about 1.5 points


def test_a_1_sigma_shift_is_caught_by_the_run_of_8() -> None:
    z = np.random.default_rng(2).standard_normal(200)
    z[100:] += 1.0
    before = [i for _, i in run_rules(z) if i < 100]
    after = [i for rule, i in run_rules(z) if rule == "run_of_8" and i >= 100]
    assert not before
    # with the mean 1 sigma up, 84 % of points are above: a run of 8 takes about 19 points (ARL);
    # the rule cannot fire before the 8th shifted point
    assert after and 107 <= after[0] < 100 + 40


def test_a_slow_drift_is_caught_by_the_trend_of_6() -> None:
    values = np.linspace(0.0, 2.5, 6)
    assert run_rules(values) == [("trend_of_6", 5)]
    assert run_rules(values[:5]) == []
    assert run_rules(values[::-1]) == [("trend_of_6", 5)]
    # a flat step breaks the trend; a NaN breaks every run
    assert run_rules([0, 0.1, 0.2, 0.2, 0.3, 0.4, 0.5]) == []
    assert run_rules([1, 1, 1, 1, float("nan"), 1, 1, 1, 1]) == []


def test_one_long_run_alarms_once_per_8_points() -> None:
    assert [i for rule, i in run_rules(np.full(16, 0.5)) if rule == "run_of_8"] == [7, 15]


def test_p_chart_limits_follow_the_group_size() -> None:
    chart = p_chart([("lot 1", 100, 5), ("lot 2", 400, 20), ("lot 3", 0, 0)])
    assert chart.centre == pytest.approx(0.05)
    assert [p.key for p in chart.points] == ["lot 1", "lot 2"]       # an empty group has no point
    small, large = chart.points
    assert small.ucl == pytest.approx(0.05 + 3 * math.sqrt(0.05 * 0.95 / 100))
    assert large.ucl == pytest.approx(0.05 + 3 * math.sqrt(0.05 * 0.95 / 400))
    assert small.lcl == 0.0 and large.lcl > 0.0


def test_p_chart_alarms_when_a_lot_fails_far_more_often() -> None:
    groups = [(f"lot {i}", 200, 10) for i in range(10)] + [("lot 10", 200, 40)]
    chart = p_chart(groups, centre=0.05, recipe="fryum")
    assert [(a.rule, a.key, a.chart) for a in chart.alarms] == [("beyond_3sigma", "lot 10", "fail_rate")]
    assert "FAIL rate high at lot 10" in chart.alarms[0].message and "fryum" in chart.alarms[0].message


def test_binomial_in_control_p_chart_stays_within_the_false_alarm_rate() -> None:
    rng = np.random.default_rng(0)
    failed = rng.binomial(200, 0.05, 10_000)
    chart = p_chart([(str(i), 200, int(d)) for i, d in enumerate(failed)], centre=0.05)
    counts = Counter(a.rule for a in chart.alarms)
    for rule, expected in EXPECTED_PER_10000.items():
        # binomial counts are skewed: the upper 3-sigma tail holds a little more than the normal's
        assert counts[rule] <= 1.5 * expected + 4 * math.sqrt(expected), (rule, counts[rule])


@pytest.mark.parametrize(("groups", "match"),
                         [([("a", 10, 11)], "11 failed of 10"), ([("b", -1, 0)], "0 failed of -1")])
def test_p_chart_refuses_impossible_counts(groups: list[tuple[str, int, int]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        p_chart(groups)


def test_individuals_chart_of_scores_against_the_taught_statistics() -> None:
    scores = [0.10, 0.11, 0.09, 0.30]
    chart = individuals_chart(scores, mean=0.10, sigma=0.02, recipe="part")
    assert chart.points[0].ucl == pytest.approx(0.16)
    assert [(a.rule, a.index) for a in chart.alarms] == [("beyond_3sigma", 3)]
    with pytest.raises(ValueError, match="sigma > 0"):
        individuals_chart(scores, mean=0.1, sigma=0.0)


def test_ks_matches_the_textbook_values() -> None:
    rng = np.random.default_rng(4)
    same = ks_two_sample(rng.normal(size=500), rng.normal(size=500))
    moved = ks_two_sample(rng.normal(size=500), rng.normal(0.5, size=500))
    assert same[1] > 0.01 and moved[1] < 1e-6
    # D is the largest CDF gap: disjoint samples are 1 apart
    assert ks_two_sample(np.arange(10.0), np.arange(10.0) + 100)[0] == 1.0


def test_drift_of_good_scores_is_reported_with_its_evidence() -> None:
    rng = np.random.default_rng(5)
    taught = rng.normal(0.20, 0.02, 64)
    steady = score_drift(taught, rng.normal(0.20, 0.02, 500))
    assert steady is not None and not steady.drifted and steady.message.startswith("no drift")
    # "no drift (KS ... p=0.0039 ...)" read as a contradiction on the Statistics screen: the levels are named
    assert "alarm below 0.001" in steady.message and "alarm from 1.0" in steady.message
    drifted = score_drift(taught, rng.normal(0.25, 0.02, 500))     # e.g. the light got dimmer
    assert drifted is not None and drifted.drifted
    assert drifted.mean_shift_sigma == pytest.approx(2.5, abs=0.6)
    assert drifted.recent_quantiles[1] > drifted.reference_quantiles[2]
    assert "DRIFT" in drifted.message and "light" in drifted.message
    assert score_drift(taught, taught[:10]) is None                  # too few recent scores: no verdict
    # another spread at the same level (p tiny, mean moved < 1 sigma): calm, and the sentence says why
    wider = score_drift(taught, rng.normal(0.20, 0.06, 500))
    assert wider is not None and not wider.drifted and wider.p_value < 1e-3
    assert wider.message.startswith("no drift alarm: the spread differs from teaching, but the mean moved less")


def test_alarm_bus_sends_each_alarm_once_and_survives_a_failing_subscriber() -> None:
    bus = AlarmBus()
    got: list[Alarm] = []

    def broken(alarm: Alarm) -> None:
        msg = "publisher down"
        raise RuntimeError(msg)

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(got.append)
    chart = p_chart([(f"lot {i}", 200, 10) for i in range(5)] + [("lot 5", 200, 40)], centre=0.05)
    assert len(bus.publish(chart.alarms)) == 1
    assert bus.publish(chart.alarms) == []          # recomputed chart: not sent again
    assert [a.key for a in got] == ["lot 5"]
    unsubscribe()
    bus.publish([Alarm(rule="run_of_8", chart="score", key="x", index=0, message="m")])
    assert len(got) == 1
