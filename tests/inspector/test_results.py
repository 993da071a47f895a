"""The shared rules of `inspector.results`: score -> verdict, and the one yield definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inspector.results import Verdict, VerdictCounts, verdict_for


@pytest.mark.parametrize(("score", "expected"), [
    (None, Verdict.ERROR), (math.nan, Verdict.ERROR), (math.inf, Verdict.ERROR), (-math.inf, Verdict.ERROR),
    (0.1, Verdict.PASS), (0.25, Verdict.REVIEW), (0.49, Verdict.REVIEW), (0.5, Verdict.FAIL), (9.0, Verdict.FAIL),
])
def test_verdict_for_thresholds_are_inclusive_and_broken_scores_are_errors(score, expected) -> None:
    assert verdict_for(score, 0.25, 0.5) is expected


def test_yield_leaves_errors_out_and_counts_review_against_it() -> None:
    counts = VerdictCounts.from_verdicts(["PASS", Verdict.PASS, Verdict.REVIEW, Verdict.FAIL, Verdict.ERROR])
    assert (counts.passed, counts.review, counts.failed, counts.errors) == (2, 1, 1, 1)
    assert (counts.inspected, counts.judged) == (5, 4)
    assert counts.yield_pct == 50.0
    assert VerdictCounts().yield_pct is None
    assert VerdictCounts(errors=3).yield_pct is None          # no part judged: no yield, not 0 %


def test_add_and_plus_agree_with_counting_at_once() -> None:
    verdicts = [Verdict.PASS, Verdict.ERROR, Verdict.FAIL, Verdict.PASS, Verdict.REVIEW]
    one_by_one = VerdictCounts()
    for verdict in verdicts:
        one_by_one = one_by_one.add(verdict)
    assert one_by_one == VerdictCounts.from_verdicts(verdicts)
    assert VerdictCounts.from_verdicts(verdicts[:2]) + VerdictCounts.from_verdicts(verdicts[2:]) == one_by_one
    assert one_by_one.count(Verdict.PASS) == 2 and one_by_one.count("ERROR") == 1


@given(
    st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(0.25), st.just(0.5)),
             max_size=40),
    st.floats(0.0, 1.0), st.floats(0.0, 1.0),
)
def test_vectorised_counts_equal_the_rule_applied_one_by_one(scores, review, fail) -> None:
    fast = VerdictCounts.from_scores(np.asarray(scores, np.float64), review, fail)
    assert fast == VerdictCounts.from_verdicts(verdict_for(s, review, fail) for s in scores)
