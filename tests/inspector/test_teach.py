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
    # the line states the conformal share of new good parts: the 90th percentile of 10 lies between
    # the 9th and 10th scores, so a new good part lands above it in at most 2 of the 11 gaps
    line = next(s for s in report.summary_lines() if "go to REVIEW or FAIL" in s)
    assert "(at most 18.2 %, conformal)" in line and "with 10 good images" in line, line
    assert not any("expected share" in s for s in report.summary_lines())


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


def test_actually_good_makes_a_version_that_is_not_active_until_made_active_and_can_be_undone(
        taught_recipe: Path) -> None:
    from inspector.errors import ModelError
    from inspector.recipe import set_active_model_version
    from inspector.station import resolve_version
    from inspector.teach import add_good_feedback, undo_good_feedback

    recipe = load_recipe(taught_recipe)
    assert resolve_version(recipe).name == "v1"
    image = textured_part(np.random.default_rng(9))
    new = add_good_feedback(recipe, [image], device="cpu", note="test")
    assert new == "v2" and recipe.model_versions() == ["v1", "v2"]
    assert resolve_version(recipe).name == "v1", "a feedback version is not used on the line by itself"
    assert Station.load(recipe, device="cpu").model_version == "v1"

    set_active_model_version(recipe, "v2")
    assert resolve_version(recipe).name == "v2"
    with pytest.raises(ModelError, match="active on the line"):
        undo_good_feedback(recipe, "v2")
    set_active_model_version(recipe, "v1")
    kept = undo_good_feedback(recipe, "v2")
    assert recipe.model_versions() == ["v1"] and kept.is_dir() and kept.name.startswith("v2.undone")
    with pytest.raises(ModelError, match="not made from 'actually good'"):
        undo_good_feedback(recipe, "v1")
    with pytest.raises(ModelError, match="has no model version v9"):
        set_active_model_version(recipe, "v9")


def test_a_recipe_taught_from_one_good_image_is_saved_and_says_how_it_set_its_thresholds(
    tmp_path: Path, tiny_weights_file: Path
) -> None:
    from tests.conftest import write_recipe

    rng = np.random.default_rng(11)
    good = write_images(tmp_path / "good", [textured_part(rng)])[0].parent
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file))
    report = run_to_end(teach(recipe, good))       # before: "calibration needs ... at least 2 good images"

    # 84 px at shorter_side 84: 6 x 6 patches, room to leave out radii 1 and 2 around each patch
    assert report.n_good == 1 and report.good_scores.shape == (2,), report.good_scores
    t = report.thresholds
    assert 0 < t.review <= t.fail <= 2.0
    assert t.rule.startswith("one good image: the good scores come from that image alone"), t.rule
    lines = report.summary_lines()
    assert any("not known how many good parts" in line and "taught from one image" in line for line in lines), lines
    assert not any("conformal" in line for line in lines), "no conformal share from one image"
    station = Station.load(load_recipe(recipe.path), device="cpu")
    assert station.model_version == report.version
    # random weights: whether a defect is flagged is checked with the real weights in
    # tests/models/test_patch_knn.py::test_one_good_image_real_weights_flags_a_seeded_defect


@pytest.mark.parametrize(("brightness", "said"), [("standardise", True), ("as_is", False)])
def test_the_report_says_when_frames_are_brightness_standardised(
    tmp_path: Path, tiny_weights_file: Path, brightness: str, said: bool
) -> None:
    from tests.conftest import write_recipe

    rng = np.random.default_rng(12)
    good = write_images(tmp_path / "good", [textured_part(rng) for _ in range(3)])[0].parent
    path = write_recipe(tmp_path / "r", tiny_weights_file)
    written = path.read_text(encoding="utf-8")
    path.write_text(written.replace("brightness: as_is", f"brightness: {brightness}"), encoding="utf-8")
    report = run_to_end(teach(load_recipe(path), good))
    lines = [line for line in report.summary_lines() if line.startswith("brightness: ")]
    assert len(lines) == int(said), report.summary_lines()
    station = Station.load(load_recipe(path), device="cpu")
    assert station.detector.brightness_active is said     # saved with the model


def test_a_taught_version_keeps_a_good_image_and_versions_made_from_it_take_it_along(taught_recipe: Path,
                                                                                    tmp_path: Path) -> None:
    """``reference.png``: the picture the Statistics screen draws where defects sit, there before any part passes."""
    from inspector.versions import REFERENCE_FILE, reference_image, resolve_version, write_reference

    recipe = load_recipe(taught_recipe)
    taught = resolve_version(recipe).path
    picture = reference_image(taught)
    assert picture is not None and picture.ndim == 3 and picture.dtype == np.uint8
    first_good = textured_part(np.random.default_rng(0))   # the template's first good part (tests/conftest.py)
    assert np.array_equal(picture, first_good)          # as taught (no ROI: the whole frame), in BGR

    version = save_thresholds(recipe, review=0.1, fail=0.2)
    derived = resolve_version(recipe, version).path
    assert (derived / REFERENCE_FILE).read_bytes() == (taught / REFERENCE_FILE).read_bytes()

    # the picture is a convenience: one that cannot be written or read is said, and nothing fails
    assert write_reference(tmp_path / "no such folder", picture) is None
    (tmp_path / REFERENCE_FILE).write_bytes(b"not a png")
    assert reference_image(tmp_path) is None and reference_image(tmp_path / "elsewhere") is None


def test_an_unreadable_good_image_is_skipped_and_named_once(tmp_path: Path, tiny_weights_file: Path) -> None:
    """A truncated file among the good images is skipped, and the report names it once (it read "skipped
    DIR/002.jpg: DIR/002.jpg: not a decodable image")."""
    from tests.conftest import write_recipe

    rng = np.random.default_rng(12)
    good = write_images(tmp_path / "good", [textured_part(rng) for _ in range(2)])[0].parent
    broken = good / "002_truncated.png"
    broken.write_bytes((good / sorted(p.name for p in good.iterdir())[0]).read_bytes()[:200])
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file))
    report = run_to_end(teach(recipe, good))
    assert report.n_good == 2
    lines = [line for line in report.summary_lines() if "002_truncated" in line]
    assert len(lines) == 1 and lines[0].count(str(broken)) == 1 and "not a decodable image" in lines[0], lines
