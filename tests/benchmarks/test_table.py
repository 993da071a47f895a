"""The accuracy benchmark's summary table: mean and spread over shot seeds, dev mean, operating point."""

from __future__ import annotations

import math

import pytest

from benchmarks._table import markdown_table, summarise


def _result(category: str, detector: str, seed: int, auroc: float, flag: float | None) -> dict:
    point = {} if flag is None else {"defect_flag_rate": flag, "good_flag_rate": 0.1, "defect_fail_rate": 0.5,
                                     "good_fail_rate": 0.0}
    report = {"seed": seed, "image_auroc": auroc, "aupro": auroc - 0.1, "operating_point": point}
    return {"category": category, "setting": "16-shot", "detector": detector, "seed": seed, "report": report}


def test_summary_gives_mean_and_sample_spread_over_seeds_and_a_dev_mean_row() -> None:
    results = [_result("a", "ours", s, v, 0.6 + 0.1 * s) for s, v in enumerate((0.90, 0.92, 0.94))]
    results += [_result("b", "ours", s, 0.80, 0.9) for s in range(3)]
    results += [_result("a", "peer b12", s, 0.70, None) for s in range(3)]
    summary = {(r["category"], r["detector"]): r for r in summarise(results)}
    assert summary[("a", "ours")]["image_auroc"] == pytest.approx([0.92, 0.02])
    assert summary[("a", "ours")]["defect_flag_rate"] == pytest.approx([0.7, 0.1])
    assert summary[("a", "ours")]["seeds"] == [0, 1, 2]
    assert math.isnan(summary[("a", "peer b12")]["defect_flag_rate"][0]), "the peer has no operating point"

    table = markdown_table(summarise(results), detectors=["ours", "peer b12"]).splitlines()
    assert table[0].startswith("| category | shots | ours img AUROC | ours AUPRO | peer b12 img AUROC")
    row_a = next(line for line in table if line.startswith("| a |"))
    assert "0.920 +- 0.020" in row_a and "| 70 % | 10 % | 50 % | 0 % |" in row_a
    dev = next(line for line in table if line.startswith("| dev mean |"))
    # ours on both categories: (0.92 + 0.80) / 2; the peer ran on one only: no mean
    assert "| 0.860 | 0.760 | - | - | 80 % |" in dev, dev
