"""Self-tuning teach: `inspector train` chooses the configuration, saves it and says why (random-init ViT)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from inspector.cli import EXIT_OK, main
from inspector.errors import RecipeError
from inspector.recipe import load_recipe
from inspector.station import Station
from inspector.teach import run_to_end, teach
from tests.conftest import write_recipe
from tests.helpers.images import textured_part, write_images


def _tunable_recipe(folder: Path, weights: Path, *, extra: str = "") -> Path:
    """The tests' recipe without ``whitening`` and ``patch_pooling`` in its options, so teaching may choose them."""
    path = write_recipe(folder, weights, extra=extra)
    written = path.read_text(encoding="utf-8")
    text = re.sub(r",\s*patch_pooling: 1}", "}", written.replace("{whitening: false, ", "{"))
    assert text != written, "the recipe's options were not found"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    return write_images(tmp_path / "good", [textured_part(rng) for _ in range(6)])[0].parent


def test_teach_chooses_saves_and_reports_the_configuration(tmp_path: Path, tiny_weights_file: Path,
                                                             good: Path) -> None:
    recipe = load_recipe(_tunable_recipe(tmp_path / "r", tiny_weights_file))
    ticks = []
    job = teach(recipe, good, device="cpu")
    while True:
        try:
            tick = next(job)
            ticks.append((tick.message, tick.unit))
        except StopIteration as stop:
            report = stop.value
            break
    assert any(m.startswith("self-tuning") for m, _ in ticks), "teaching shows the self-check's progress"
    # the self-check counts its fits, not images: a progress bar must not call them images
    assert {u for m, u in ticks if m.startswith("self-tuning: scoring")} == {"fit"}
    assert {u for m, u in ticks if m == "learning good patches"} == {"img"}
    tuned = report.self_tune
    assert tuned is not None and [c.candidate.name for c in tuned.checks] == [
        "default (pooling r=1, + r=5 image score)", "pooling r=3", "whitened"]
    best = max(tuned.checks, key=lambda c: c.synthetic_auroc)
    assert tuned.chosen == best.candidate or best.synthetic_auroc == tuned.checks[0].synthetic_auroc
    lines = report.summary_lines()
    assert any(line.startswith(f"self-tuning: chose {tuned.chosen.name}") for line in lines), lines
    assert sum("synthetic AUROC" in line and "ms per part" in line for line in lines) == 3, lines
    # saved with the model, and the model loads with the chosen configuration
    manifest = json.loads((report.model_dir / "model.json").read_text(encoding="utf-8"))
    assert manifest["metadata"]["self_tune"]["chosen"] == tuned.chosen.name
    pooling = tuned.chosen.options.get("patch_pooling", 1)
    assert manifest["config"]["patch_pooling"] == pooling
    station = Station.load(recipe, device="cpu")
    assert station.detector.config.patch_pooling == pooling


def test_a_cycle_time_below_every_candidate_takes_the_fastest_and_says_so(tmp_path: Path, tiny_weights_file: Path,
                                                                          good: Path) -> None:
    recipe = load_recipe(_tunable_recipe(tmp_path / "r", tiny_weights_file, extra="cycle_time_ms: 0.001\n"))
    assert recipe.cycle_time_ms == pytest.approx(0.001)
    report = run_to_end(teach(recipe, good, device="cpu"))
    assert report.self_tune is not None and all(c.over_budget for c in report.self_tune.checks)
    assert any("no candidate fits the 0.001 ms cycle-time budget" in line for line in report.summary_lines())


def test_options_written_in_the_recipe_are_kept(tmp_path: Path, tiny_weights_file: Path, good: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file))        # whitening, patch_pooling written
    report = run_to_end(teach(recipe, good, device="cpu"))
    assert report.self_tune is None
    assert "self-tuning: skipped: the recipe's detector.options fix every option it would choose" in (
        report.summary_lines())


def test_train_fixed_config_turns_self_tuning_off(tmp_path: Path, tiny_weights_file: Path, good: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _tunable_recipe(tmp_path / "r", tiny_weights_file)
    assert main(["train", str(path), "--good", str(good), "--device", "cpu", "--fixed-config"]) == EXIT_OK
    assert "self-tuning: off (fixed configuration as the recipe writes it)" in capsys.readouterr().out
    manifest = json.loads((load_recipe(path).model_dir() / "v1" / "model.json").read_text(encoding="utf-8"))
    assert manifest["metadata"]["self_tune"] == {"note": "off (fixed configuration as the recipe writes it)"}


@pytest.mark.parametrize(("value", "message"), [("-5", "must be a number > 0"), ("fast", "must be a number")])
def test_a_bad_cycle_time_names_the_file_and_field(tmp_path: Path, tiny_weights_file: Path, value: str,
                                                    message: str) -> None:
    path = _tunable_recipe(tmp_path / "r", tiny_weights_file, extra=f"cycle_time_ms: {value}\n")
    with pytest.raises(RecipeError, match=f"{path.name}: cycle_time_ms {message}"):
        load_recipe(path)


def test_teaching_from_many_images_says_which_candidate_needs_a_plain_background(tmp_path: Path,
                                                                                 tiny_weights_file: Path) -> None:
    rng = np.random.default_rng(5)
    good = write_images(tmp_path / "good", [textured_part(rng) for _ in range(9)])[0].parent   # above 8: no auto turns
    path = write_recipe(tmp_path / "r", tiny_weights_file)        # patch_pooling and masking "off" written
    path.write_text(path.read_text(encoding="utf-8").replace("augment_rotations: false, ", ""), encoding="utf-8")
    messages = []
    job = teach(load_recipe(path), good, device="cpu")
    while True:
        try:
            messages.append(next(job).message)
        except StopIteration as stop:
            report = stop.value
            break
    # the count is known before the first fit; whether the turned views are checked, only after it
    assert "self-tuning: checking 2 configurations (turned views only for a part on a plain background)" in messages
    assert report.self_tune is not None and [name for name, _ in report.self_tune.not_checked] == ["turned views"]
    assert f"self-tuning: {report.self_tune.reason}" in messages, "the train log says what was chosen, and why"
