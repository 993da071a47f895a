"""calibrate: good images only (no F1 on normals), and with defect scores and masks."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import Thresholds, auroc, calibrate, check_thresholds, held_out_defect_rates


def good_scores(n: int = 20) -> np.ndarray:
    return np.random.default_rng(0).normal(0.20, 0.02, n).astype(np.float32)


def test_good_only_puts_fail_above_every_good_score() -> None:
    scores = good_scores()
    t = calibrate(scores)
    assert t.fail > scores.max() and t.review <= t.fail
    assert t.expected_false_reject == 0.0
    assert not (scores >= t.fail).any(), "no good image may be flagged FAIL"
    assert t.n_good == 20 and t.n_defect == 0
    assert t.good_max == pytest.approx(float(scores.max()))
    assert t.good_mean == pytest.approx(float(scores.mean()), rel=1e-6)
    assert t.auroc is None and t.f1 is None and t.confusion is None
    assert "highest good score" in t.rule and "pixel = fail" in t.rule
    # the REVIEW band starts at the 90th percentile of the good scores: about one good part in ten
    assert t.review == pytest.approx(float(np.quantile(scores, 0.90)))
    assert "review = 90th percentile" in t.rule


def test_identical_good_scores_still_get_a_margin() -> None:
    t = calibrate([0.3, 0.3, 0.3])
    assert t.fail == pytest.approx(0.3 * 1.05)


def test_good_maps_give_a_pixel_threshold_that_leaves_good_maps_almost_clean() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.gamma(2.0, 0.05, (56, 56)).astype(np.float32) for _ in range(10)]
    t = calibrate(good_scores(10), good_maps=maps)
    above = np.mean([float((m >= t.pixel).mean()) for m in maps])
    assert above <= 0.0011
    assert "99.9th percentile of 10 good anomaly maps" in t.rule


def test_good_maps_give_the_region_peak_no_good_map_exceeds() -> None:
    rng = np.random.default_rng(2)
    maps = [rng.gamma(2.0, 0.05, (56, 56)).astype(np.float32) for _ in range(10)]
    t = calibrate(good_scores(10), good_maps=maps)
    assert t.region_peak == pytest.approx(max(float(m.max()) for m in maps))
    assert t.region_peak > t.pixel            # the high threshold of the two
    assert f"highest good map value {t.region_peak:.4g}" in t.rule
    assert calibrate(good_scores(10)).region_peak is None       # no maps: every region is shown
    with pytest.raises(ValueError, match="good_maps contain non-finite values"):
        calibrate(good_scores(10), good_maps=[*maps[:9], np.full((56, 56), np.inf, np.float32)])


def test_a_model_saved_before_the_region_peak_shows_every_region() -> None:
    old = calibrate(good_scores(), good_maps=[np.full((8, 8), 0.1, np.float32)] * 3).to_dict()
    del old["region_peak"]
    assert Thresholds.from_dict(old).region_peak is None


@pytest.mark.parametrize("peak", [-0.1, float("nan"), float("inf"), True, "0.5"])
def test_check_thresholds_refuses_a_region_peak_no_model_has(peak: object) -> None:
    with pytest.raises(ValueError, match=r"model\.region_peak is .*finite number >= 0 or null"):
        check_thresholds(0.2, 0.3, 0.25, prefix="model", region_peak=peak)
    check_thresholds(0.2, 0.3, 0.25, region_peak=None)
    check_thresholds(0.2, 0.3, 0.25, region_peak=2.5)      # a map in units of the bank's spread


def test_defects_choose_fail_by_best_f1_and_report_metrics() -> None:
    good = good_scores()
    defects = np.array([0.5, 0.6, 0.45, 0.21], np.float32)  # one defect hides among the goods
    t = calibrate(good, defect_scores=defects)
    assert t.n_defect == 4
    assert good.max() < t.fail <= 0.45
    assert t.confusion == (20, 0, 1, 3)
    assert t.f1 == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
    assert t.auroc == pytest.approx(auroc(good, defects))
    assert "best-F1" in t.rule


def test_target_false_reject_rate() -> None:
    good = np.arange(1, 101, dtype=np.float64) / 100  # 0.01 .. 1.00
    t = calibrate(good, target_false_reject=0.05)
    assert t.expected_false_reject == pytest.approx(0.05)
    assert 0.95 < t.fail < 0.96


def test_pixel_threshold_by_best_pixel_f1_over_masks() -> None:
    rng = np.random.default_rng(1)
    maps, masks = [], []
    for _ in range(3):
        m = rng.uniform(0.0, 0.3, (56, 56)).astype(np.float32)
        mask = np.zeros((56, 56), bool)
        mask[20:30, 20:30] = True
        m[mask] = rng.uniform(0.6, 0.9, int(mask.sum()))
        maps.append(m)
        masks.append(mask)
    t = calibrate(good_scores(), defect_scores=[0.6, 0.7, 0.8], defect_maps=maps, defect_masks=masks)
    assert 0.3 <= t.pixel <= 0.6
    assert t.pixel_f1 == pytest.approx(1.0)


def test_auroc_matches_definition() -> None:
    assert auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert auroc([0.1, 0.3], [0.2, 0.3]) == pytest.approx((1 + 0 + 1 + 0.5) / 4)


def test_round_trip_through_dict() -> None:
    t = calibrate(good_scores(), defect_scores=[0.5, 0.6])
    assert Thresholds.from_dict(t.to_dict()) == t


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([0.2],), {}, "at least 2 good images, got 1"),
        (([0.2, float("nan")],), {}, "good_scores contains non-finite values"),
        (([0.2, 0.3],), {"target_false_reject": 1.5}, r"target_false_reject must be in \[0, 1\)"),
        (([0.2, 0.3],), {"defect_masks": [np.zeros((4, 4), bool)]},
         "defect_masks were given without defect_maps"),
        (([0.2, 0.3],), {"defect_maps": [np.zeros((4, 4))], "defect_masks": [np.zeros((5, 4), bool)]},
         r"defect_masks\[0\] has shape \(5, 4\)"),
    ],
)
def test_bad_input_is_named(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(*args, **kwargs)


def test_one_odd_good_image_does_not_widen_the_margin() -> None:
    scores = np.array([0.20, 0.21, 0.19, 0.20, 0.22, 0.40])  # the last good image looks unusual
    t = calibrate(scores)
    assert 0.40 < t.fail < 0.40 + 0.05, t.rule  # std (0.08) would have added 0.08


# ------------------------------------------------------------------------ operating-point outlook


def test_beta_quantile_matches_the_closed_form_and_scipy() -> None:
    from models.calibration import beta_quantile

    # Beta(1, n): P(p <= x) = 1 - (1 - x)^n, so the 90 % quantile is 1 - 0.1^(1/n)
    assert beta_quantile(0.9, 1, 16) == pytest.approx(1 - 0.1 ** (1 / 16), abs=1e-9)
    stats = pytest.importorskip("scipy.stats")
    for a, b in ((3, 14), (2, 15), (8, 9)):
        assert beta_quantile(0.9, a, b) == pytest.approx(float(stats.beta.ppf(0.9, a, b)), abs=1e-7)


def test_good_flag_outlook_counts_the_gaps() -> None:
    from models.calibration import good_flag_outlook

    good = np.arange(1.0, 17.0)                         # 16 good scores 1..16
    on_score = good_flag_outlook(good, 15.0)            # 15 and 16 at or above: 2 of 17 gaps
    assert (on_score.n_at_or_above, on_score.exact) == (2, True)
    assert on_score.expected == pytest.approx(2 / 17)
    between = good_flag_outlook(good, 14.5)             # interpolated quantile: at most 3 of 17 gaps
    assert (between.n_at_or_above, between.exact, between.expected) == (2, False, pytest.approx(3 / 17))
    above_all = good_flag_outlook(good, 99.0)           # a fail threshold above every good score
    assert above_all.expected == pytest.approx(1 / 17)
    assert above_all.upper == pytest.approx(1 - 0.1 ** (1 / 16))
    assert "1 good part in 17" in above_all.sentence("FAIL") and "16 good images" in above_all.sentence("FAIL")
    with pytest.raises(ValueError, match="confidence"):
        good_flag_outlook(good, 1.0, confidence=1.0)


@pytest.mark.parametrize(("review_quantile", "exact"), [(14 / 15, True), (0.90, False)])
def test_conformal_figure_matches_a_simulation(review_quantile: float, exact: bool) -> None:
    """Calibrate on 16 exchangeable good scores, then score new good parts: the share flagged matches."""
    from models.calibration import good_flag_outlook

    rng = np.random.default_rng(0)
    trials, n = 8_000, 16
    draws = rng.gamma(2.0, 1.0, size=(trials, n + 1))   # skewed, like anomaly scores
    flagged = np.empty(trials, bool)
    uppers_hit = np.empty(trials, bool)
    outlook = None
    for i in range(trials):
        good, new = draws[i, :n], draws[i, n]
        review = float(np.quantile(good, review_quantile))    # calibrate()'s review rule
        flagged[i] = new >= review
        if i < 2000:   # the bound's coverage: the true rate 1 - F(review) below `upper` in >= 90 % of draws
            outlook = good_flag_outlook(good, review)
            true_rate = float(np.exp(-review) * (1 + review))  # Gamma(2, 1) survival function
            uppers_hit[i] = true_rate <= outlook.upper
    assert outlook is not None and outlook.exact is exact
    rate = float(flagged.mean())
    if exact:
        assert rate == pytest.approx(outlook.expected, abs=0.01)       # 2/17 = 0.118
    else:   # between the two order statistics: m / (n + 1) <= rate <= (m + 1) / (n + 1)
        assert outlook.n_at_or_above / (n + 1) - 0.01 <= rate <= outlook.expected + 0.01
    assert uppers_hit[:2000].mean() >= 0.88


def test_held_out_defect_rates_judge_each_defect_without_it() -> None:
    good = np.linspace(1.0, 2.0, 16)
    # two clear defects and one among the top goods: in sample, best F1 puts FAIL under all three
    defects = np.array([3.0, 3.1, 1.99])
    in_sample = calibrate(good, defect_scores=defects)
    assert (defects >= in_sample.fail).all()
    rates = held_out_defect_rates(good, defects)
    # held out, 1.99 is judged by a FAIL threshold set between the goods and 3.0: it escapes FAIL
    # (REVIEW still stops it: the 90th percentile of the goods is 1.9)
    assert (rates.n_defect, rates.flagged, rates.failed) == (3, 3, 2)
    assert rates.fail_rate == pytest.approx(2 / 3)
    assert "leave-one-out" in rates.sentence() and "67 % FAIL of 3" in rates.sentence()


def test_held_out_with_one_defect_falls_back_to_the_good_only_rule() -> None:
    good = np.linspace(1.0, 2.0, 16)
    alone = calibrate(good)
    rates = held_out_defect_rates(good, [alone.fail - 1e-6])
    assert (rates.flagged, rates.failed) == (1, 0)
    with pytest.raises(ValueError, match="defect_scores"):
        held_out_defect_rates(good, [float("nan")])
