"""Teaching reports and hand-set thresholds: the expected shares of good parts come from the real scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.recipe import load_recipe
from inspector.station import Station
from inspector.teach import run_to_end, save_thresholds, teach
from tests.helpers.images import textured_part, write_images


def test_the_report_says_how_many_good_parts_go_to_review(tmp_path: Path, taught_recipe: Path) -> None:
    rng = np.random.default_rng(5)
    good = write_images(tmp_path / "good", [textured_part(rng) for _ in range(10)])[0].parent
    report = run_to_end(teach(load_recipe(taught_recipe), good))
    t = report.thresholds
    share = float((report.good_scores >= t.review).mean())
    assert t.expected_review == pytest.approx(share)
    assert 0.0 < share <= 0.2, "the 90th percentile: one or two of ten good images at REVIEW or above"
    line = next(s for s in report.summary_lines() if "sent to REVIEW or FAIL" in s)
    assert f"{100 * share:.1f} %" in line


def test_hand_set_thresholds_recompute_the_expected_shares(taught_recipe: Path) -> None:
    recipe = load_recipe(taught_recipe)
    before = Station.load(recipe, device="cpu")
    good = np.asarray(before.detector.train_scores, np.float64)
    review, fail = float(good.min()), float(np.median(good))    # everything to REVIEW, half to FAIL

    version = save_thresholds(recipe, review=review, fail=fail)

    after = Station.load(recipe, version=version, device="cpu").model_thresholds
    assert (after.review, after.fail) == (pytest.approx(review), pytest.approx(fail))
    assert after.expected_review == pytest.approx(1.0)
    assert after.expected_false_reject == pytest.approx(float((good >= fail).mean()))
    assert after.expected_false_reject >= 0.5
    assert "set by hand" in after.rule
