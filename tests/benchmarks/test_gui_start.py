"""benchmarks/gui_start.py: the medians per way over interleaved runs (the runs themselves need the app)."""

from __future__ import annotations

import pytest

from benchmarks.gui_start import summary


def _run(way: str, start: float, after: float, count: int) -> dict[str, object]:
    return {"way": way, "rc": 0, "start_to_running_s": start, "longest_gap_before_start_s": 0.02,
            "longest_gap_after_start_s": after, "gaps_over_0.1_s_after_start": count, "slow_collections_s": []}


def test_summary_is_the_median_of_each_way_and_leaves_out_ways_not_run() -> None:
    runs = [_run("today", 1.2, 0.04, 0), _run("before", 6.0, 0.3, 2), _run("today", 0.9, 0.9, 1),
            _run("before", 5.0, 0.4, 3), _run("today", 3.0, 0.05, 0)]
    out = summary(runs)
    assert set(out) == {"today", "before"}
    assert out["today"]["start_to_running_s"] == 1.2 and out["today"]["longest_gap_after_start_s"] == 0.05
    assert out["before"]["start_to_running_s"] == pytest.approx(5.5)
    assert out["before"]["gaps_over_0.1_s_after_start"] == pytest.approx(2.5)
