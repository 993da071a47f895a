"""Teach-then-check (`inspector.teach.teach_and_check`) without Qt: the real engine, a random-weights ViT-S/14."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.recipe import load_recipe
from inspector.results import Progress, Verdict
from inspector.teach import TeachEngine, TeachOutcome, teach_and_check
from tests.conftest import write_recipe
from tests.helpers.images import textured_part, with_defect, write_images


def _drive(job) -> tuple[list[Progress], TeachOutcome]:
    ticks: list[Progress] = []
    while True:
        try:
            ticks.append(next(job))
        except StopIteration as stop:
            return ticks, stop.value


def test_teach_then_check_scores_the_held_out_and_known_bad_images_with_the_new_version(
    tmp_path: Path, tiny_weights_file: Path
) -> None:
    rng = np.random.default_rng(3)
    good_files = write_images(tmp_path / "good", [textured_part(rng) for _ in range(7)])
    bad_files = write_images(tmp_path / "bad", [with_defect(textured_part(rng), rng)[0] for _ in range(2)])
    captured = [textured_part(rng)]            # a frame captured live comes first in the good set
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file))
    engine = TeachEngine.default()

    ticks, outcome = _drive(teach_and_check(
        engine, recipe, good_files=good_files, captured=captured, holdout=2, bad_files=bad_files,
        defects=bad_files[0].parent, roi=(4, 4, 76, 76), recipe_file=recipe.path))

    report = outcome.report
    assert report.version == "v1" and report.n_good == 6, "8 good images, the last 2 held out"
    assert (tmp_path / "r" / "models" / "v1" / "model.json").is_file()
    assert outcome.recipe.roi.rect == (4, 4, 76, 76) and recipe.roi is None, "taught with the ROI drawn"
    assert len(outcome.held_out) == 2 and len(outcome.known_bad) == 2
    assert all(r.model_version == "v1" and r.verdict is not Verdict.ERROR for r in outcome.held_out + outcome.known_bad)
    assert [r.path for r in outcome.known_bad] == [str(p) for p in bad_files]
    held_scores = [r.score for r in outcome.held_out]
    assert outcome.good_scores.shape == (8,)
    np.testing.assert_allclose(outcome.good_scores[:6], report.good_scores)
    np.testing.assert_allclose(outcome.good_scores[6:], held_scores, rtol=1e-6)
    np.testing.assert_allclose(outcome.bad_scores, report.defect_scores)

    messages = [t.message for t in ticks]
    assert messages[0] == f"reading good image {good_files[0].name}"
    assert f"the ROI is written into {recipe.path.name} on Save" in messages
    checks = [t for t in ticks if t.message.startswith("checking")]
    assert [(t.done, t.total) for t in checks] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_closing_teach_then_check_while_reading_saves_no_model(tmp_path: Path, tiny_weights_file: Path) -> None:
    rng = np.random.default_rng(4)
    good_files = write_images(tmp_path / "good", [textured_part(rng) for _ in range(4)])
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file))
    job = teach_and_check(TeachEngine.default(), recipe, good_files=good_files, roi=None)
    assert next(job).message.startswith("reading good image")
    job.close()                                # what the wizard's Cancel does at the next tick
    assert not (tmp_path / "r" / "models").exists() or not any((tmp_path / "r" / "models").iterdir())
    with pytest.raises(StopIteration):
        next(job)
