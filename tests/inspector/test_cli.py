"""The ``inspector`` command end to end: train, run, stats, feedback, info, and its exit codes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from inspector.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from models.defect_types import COLOUR_DIMS
from tests.conftest import write_recipe
from tests.helpers.images import textured_part, with_defect, write_images


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """Six frames: four good parts and two with a drawn defect (the 3rd and 6th)."""
    rng = np.random.default_rng(11)
    images = []
    for i in range(6):
        part = textured_part(rng)
        images.append(with_defect(part, rng)[0] if i % 3 == 2 else part)
    return write_images(tmp_path / "frames", images)[0].parent


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "train", "evaluate", "review", "stats", "feedback", "info", "demo", "export"):
        assert command in out


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == EXIT_USAGE
    assert "recipe" in capsys.readouterr().err


def test_train_prints_the_calibration_report(
    tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    good = write_images(tmp_path / "good", [textured_part(rng) for _ in range(6)])[0].parent
    bad_images = [with_defect(textured_part(rng), rng)[0] for _ in range(3)]
    bad = write_images(tmp_path / "bad", bad_images)[0].parent
    recipe = write_recipe(tmp_path / "r", tiny_weights_file)

    assert main(["train", str(recipe), "--good", str(good), "--defects", str(bad)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "saved model v1" in out and "thresholds: review" in out
    assert "AUROC 1.000" in out, out
    # the operating point in words: 6 good images, fail above all 6: at most 1 gap of 7
    assert "on the line: about 1 good part in 7 will FAIL (at most 14.3 %, conformal)" in out, out
    assert "with 6 good images the true share could be as high as" in out
    assert "known-bad images: 100 % flagged (REVIEW or FAIL)" in out and "set on these same images" in out, out
    assert "known-bad images, each judged by thresholds set without it (leave-one-out):" in out, out
    assert "expected share of good parts" not in out     # the in-sample share: the conformal lines replace it
    assert (tmp_path / "r" / "models" / "v1" / "model.json").is_file()


def test_run_stores_every_frame_then_stats_and_feedback(
    taught_recipe: Path, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "station.db"
    code = main(["run", str(taught_recipe), "--source", str(frames), "--store", str(db), "--lot", "LOT-7"])
    assert code == EXIT_OK
    out = capsys.readouterr().out
    assert "inspected 6 frame(s)" in out and "recorded 6" in out, out
    assert out.count("FAIL") >= 2

    rows = sqlite3.connect(db).execute("SELECT verdict, lot, path FROM inspections ORDER BY id").fetchall()
    assert len(rows) == 6 and {lot for _, lot, _ in rows} == {"LOT-7"}
    assert [v for v, _, _ in rows][2] == "FAIL" and [v for v, _, _ in rows][5] == "FAIL"

    assert main(["stats", "--store", str(db), "--by", "lot", "--csv", str(tmp_path / "x.csv")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "LOT-7" in out and "wrote 6 inspection(s)" in out
    assert len((tmp_path / "x.csv").read_text().splitlines()) == 7

    first_fail = 3
    assert main(["feedback", str(first_fail), "scratch", "--store", str(db), "--user", "qa"]) == EXIT_OK
    # as on the Review screen, the regions take the class: the defect typer learns from them
    classes = sqlite3.connect(db).execute("SELECT DISTINCT defect_class, classified_by FROM regions "
                                          "WHERE inspection_id = ?", (first_fail,)).fetchall()
    assert classes == [("scratch", "qa")]
    assert "region(s) classified" in capsys.readouterr().out
    # one region set apart: a second kind of defect on the same part
    region_ids = [r for (r,) in sqlite3.connect(db).execute(
        "SELECT id FROM regions WHERE inspection_id = ? ORDER BY id", (first_fail,))]
    assert main(["feedback", str(first_fail), "dent", "--region", str(region_ids[-1]), "--store", str(db),
                 "--user", "qa"]) == EXIT_OK
    assert f"region {region_ids[-1]} recorded as dent" in capsys.readouterr().out
    by_region = dict(sqlite3.connect(db).execute("SELECT id, defect_class FROM regions WHERE inspection_id = ?",
                                                 (first_fail,)).fetchall())
    assert by_region[region_ids[-1]] == "dent" and set(by_region.values()) == ({"scratch", "dent"}
                                                                                if len(region_ids) > 1 else {"dent"})
    assert main(["feedback", str(first_fail), "dent", "--region", "999999", "--store", str(db)]) == EXIT_ERROR
    assert f"inspection {first_fail} has no region 999999 (its regions: " in capsys.readouterr().err
    assert main(["feedback", str(first_fail), "good", "--region", str(region_ids[0]), "--store", str(db)]) == \
        EXIT_ERROR
    assert "--region takes a defect class" in capsys.readouterr().err
    assert main(["feedback", str(first_fail), "good", "--store", str(db), "--user", "qa",
                 "--recipe", str(taught_recipe)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "now uses model v2" in out
    labels = sqlite3.connect(db).execute("SELECT label, user FROM feedback ORDER BY id").fetchall()
    assert labels == [("scratch", "qa"), ("dent", "qa"), ("good", "qa")]


def test_broken_recipe_exits_1_naming_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nname: x\nsource: {type: folder, path: .}\nthresholds: {fail: high}\n")
    assert main(["run", str(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "thresholds.fail" in err


def test_run_without_a_model_says_how_to_teach(
    tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, tiny_weights_file)
    assert main(["run", str(recipe)]) == EXIT_ERROR
    assert "inspector train" in capsys.readouterr().err


def test_info_reports_the_weights_source(tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--weights", str(tiny_weights_file)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "torch" in out and "weights: file" in out and "device:" in out


# ---- inspector run: the smaller findings of issue 12 ----


@pytest.mark.parametrize("n", [1, 4])
def test_max_frames_inspects_and_records_exactly_n(
    taught_recipe: Path, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int
) -> None:
    db = tmp_path / "station.db"
    assert main(["run", str(taught_recipe), "--source", str(frames), "--store", str(db), "--max-frames", str(n),
                 "--no-archive"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count(".png") == n and f"inspected {n} frame(s)" in out and f"recorded {n}" in out, out
    assert sqlite3.connect(db).execute("SELECT count(*) FROM inspections").fetchone()[0] == n
    if n == 4:    # the defect of the 3rd frame: typed without an archive too (the recipe's full descriptor)
        lengths = {row[0] for row in sqlite3.connect(db).execute("SELECT length(vector) FROM region_embeddings")}
        assert lengths == {4 * (6 * 384 + COLOUR_DIMS)}, lengths


def test_run_with_stdout_closed_still_stops_at_max_frames(taught_recipe: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    rng = np.random.default_rng(2)
    many = write_images(tmp_path / "many", [textured_part(rng) for _ in range(30)])[0].parent
    db = tmp_path / "station.db"
    command = (f"{sys.executable} -m inspector run {taught_recipe} --source {many} --store {db} --no-archive "
               "--max-frames 3 | head -1")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=repo, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.stdout.count("\n") == 1 and ".png" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert sqlite3.connect(db).execute("SELECT count(*) FROM inspections").fetchone()[0] == 3


def test_run_exits_1_when_its_source_cannot_be_opened(
    taught_recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    code = main(["run", str(taught_recipe), "--source", str(broken), "--store", str(tmp_path / "s.db")])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and "the source failed" in err, err


def test_run_refuses_detector_options_that_train_refuses(
    taught_recipe: Path, frames: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = taught_recipe.read_text()
    taught_recipe.write_text(text.replace("blur_sigma: 1.0", "blur_sigma: 1.0, no_such_option: 3"))
    assert main(["run", str(taught_recipe), "--source", str(frames)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "detector.options are not valid" in err and "no_such_option" in err, err


def test_a_store_file_outside_the_allowed_folders_is_refused(
    taught_recipe: Path, frames: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INSPECTOR_ALLOWED_DIRS", str(taught_recipe.parent))
    assert main(["run", str(taught_recipe), "--source", str(frames), "--store", "/etc/inspector.db"]) == EXIT_ERROR
    assert "--store: /etc/inspector.db is outside the folders" in capsys.readouterr().err


def test_feedback_refuses_a_label_the_recipe_does_not_have(
    taught_recipe: Path, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "station.db"
    taught_recipe.write_text(taught_recipe.read_text() + "defect_classes: [scratch, dent]\n")
    assert main(["run", str(taught_recipe), "--source", str(frames), "--store", str(db), "--max-frames", "1",
                 "--no-archive"]) == EXIT_OK
    capsys.readouterr()
    args = ["feedback", "1", "--store", str(db), "--recipe", str(taught_recipe), "--user", "qa"]
    assert main([args[0], args[1], "=HYPERLINK(1)", *args[2:]]) == EXIT_ERROR
    assert "label '=HYPERLINK(1)' is neither 'good' nor a defect class" in capsys.readouterr().err
    assert main([args[0], args[1], "dent", *args[2:]]) == EXIT_OK
    assert sqlite3.connect(db).execute("SELECT label FROM feedback").fetchall() == [("dent",)]
    # without --recipe (its file not found): a class's form at least, never text a spreadsheet runs
    assert main([args[0], args[1], "=HYPERLINK(1)", *args[2:4], "--user", "qa"]) == EXIT_ERROR
    assert "label '=HYPERLINK(1)' is neither 'good' nor a defect class name" in capsys.readouterr().err
    assert main([args[0], args[1], "scratch", *args[2:4], "--user", "qa"]) == EXIT_OK
    assert "is not checked against its defect classes" in capsys.readouterr().err
    assert sqlite3.connect(db).execute("SELECT label FROM feedback").fetchall() == [("dent",), ("scratch",)]


def test_feedback_refuses_an_error_inspection(taught_recipe: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable file's ERROR was "recorded as burnt" (no region took it) and "good" failed on reading the
    file: it was never judged, so neither label means anything; the Review screen offers neither."""
    db, folder = tmp_path / "station.db", tmp_path / "parts"
    folder.mkdir()
    (folder / "003.png").write_text("not an image", encoding="utf-8")
    taught_recipe.write_text(taught_recipe.read_text() + "defect_classes: [scratch, dent]\n")
    assert main(["run", str(taught_recipe), "--source", str(folder), "--store", str(db), "--no-archive"]) == EXIT_OK
    assert sqlite3.connect(db).execute("SELECT verdict FROM inspections").fetchall() == [("ERROR",)]
    capsys.readouterr()
    for label in ("good", "dent"):
        assert main(["feedback", "1", label, "--store", str(db), "--recipe", str(taught_recipe)]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert "inspection 1 is an ERROR (" in err and "003.png" in err and "nothing recorded" in err
    assert sqlite3.connect(db).execute("SELECT count(*) FROM feedback").fetchone() == (0,)


@pytest.mark.parametrize(("extra", "match"), [
    (["--zero-shot", "--ray"], "--ray needs --recipe"),
    (["--zero-shot", "--workers", "2"], "review workers (--workers) work with a recipe only"),
    (["--recipe", "part.yaml", "--ray", "--runtime", "onnx"], "--runtime works without --ray only"),
    (["--recipe", "part.yaml", "--references", "8"], "--references works with --zero-shot only"),
    (["--zero-shot", "--references", "0"], "--references must be at least 1, got 0"),
    (["--recipe", "part.yaml", "--thresholds", "0.1,0.2"], "--thresholds works with --zero-shot only"),
])
def test_review_on_ray_options_that_cannot_work_exit_1(
    frames: Path, extra: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["review", str(frames), *extra]) == EXIT_ERROR
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0.3,0.2", "0.1", "a,b", "-0.1,0.2", "0.1,inf"])
def test_zero_shot_thresholds_that_cannot_work_exit_2(
    frames: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["review", str(frames), "--zero-shot", f"--thresholds={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --thresholds: invalid thresholds '{value}': give two scores REVIEW,FAIL" in err


def test_zero_shot_review_compares_each_image_with_at_most_references_images(
    frames: Path, tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    out = tmp_path / "review"
    assert main(["review", str(frames), "--zero-shot", "--references", "3", "--out", str(out),
                 "--weights", str(tiny_weights_file), "--device", "cpu"]) == EXIT_OK
    header = json.loads((out / "progress.jsonl").read_text().splitlines()[0])
    assert header["mode"] == "zero-shot" and header["config"]["max_references"] == 3
    records = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()[1:]]
    assert sorted(r["file"] for r in records) == sorted(p.name for p in frames.iterdir())
    # the same folder again with another number of references is another review, refused in that folder
    assert main(["review", str(frames), "--zero-shot", "--references", "4", "--out", str(out),
                 "--weights", str(tiny_weights_file), "--device", "cpu"]) == EXIT_ERROR
    assert "config" in capsys.readouterr().err


def test_train_from_the_lowest_scoring_pass_images_of_a_zero_shot_review(
    frames: Path, tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    out = tmp_path / "review"
    assert main(["review", str(frames), "--zero-shot", "--out", str(out), "--weights", str(tiny_weights_file),
                 "--device", "cpu"]) == EXIT_OK
    records = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()[1:]]
    lowest = sorted((r["score"], r["file"]) for r in records if r["verdict"] == "PASS")[:3]
    capsys.readouterr()
    recipe = write_recipe(tmp_path / "r", tiny_weights_file)
    assert main(["train", str(recipe), "--good-from-review", str(out), "--count", "3"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "teaching from the 3 lowest-scoring PASS image(s) of the zero-shot review" in printed
    listed = [line.split()[-1] for line in printed.splitlines() if line.startswith("  ")][:3]
    assert [Path(p).name for p in listed] == [name for _, name in lowest]
    assert "trained on 3 good image(s)" in printed and "saved model v1" in printed
    # --count belongs to --good-from-review; one source of good images
    assert main(["train", str(recipe), "--good", str(frames), "--count", "3"]) == EXIT_ERROR
    assert "--count works with --good-from-review only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(recipe), "--good", str(frames), "--good-from-review", str(out)])
    assert exit_info.value.code == EXIT_USAGE


def test_the_count_of_good_images_from_a_review_has_one_default(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's help states the default that `inspector train` and the Teach screen use (inspector.teach)."""
    from inspector.teach import GOOD_FROM_REVIEW_COUNT

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"(default {GOOD_FROM_REVIEW_COUNT})" in " ".join(capsys.readouterr().out.split())


def write_tiny_category(root: Path, rng: np.random.Generator, *, test_good: int, per_type: int) -> None:
    """An MVTec-AD-layout category: 4 good shots, ``test_good`` good test images and ``per_type`` images of two
    defect types ("blob", "scratch") with their masks."""
    import cv2

    write_images(root / "train" / "good", [textured_part(rng) for _ in range(4)])
    write_images(root / "test" / "good", [textured_part(rng) for _ in range(test_good)])
    for kind in ("blob", "scratch"):
        made = [with_defect(textured_part(rng), rng) for _ in range(per_type)]
        write_images(root / "test" / kind, [image for image, _ in made])
        (root / "ground_truth" / kind).mkdir(parents=True)
        for i, (_, mask) in enumerate(made):
            cv2.imwrite(str(root / "ground_truth" / kind / f"img_{i:03d}_mask.png"), mask.astype(np.uint8) * 255)


def test_evaluate_json_has_the_operating_point(
    tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`inspector evaluate --json` on a tiny MVTec-layout category: the rates at the calibrated thresholds."""
    import json

    root = tmp_path / "tiny_category"
    write_tiny_category(root, np.random.default_rng(5), test_good=2, per_type=1)
    out_json, cache = tmp_path / "eval.json", tmp_path / "cache"
    code = main(["evaluate", str(root), "--shots", "4", "--weights", str(tiny_weights_file), "--device", "cpu",
                 "--json", str(out_json), "--cache", str(cache)])
    assert code == EXIT_OK
    out = capsys.readouterr().out
    assert "at the calibrated thresholds: defects flagged" in out and "blob" in out, out
    data = json.loads(out_json.read_text(encoding="utf-8"))
    for key in ("defect_flag_rate", "good_flag_rate", "defect_fail_rate", "good_fail_rate"):
        assert 0.0 <= data[key] <= 1.0 and data[key] == data["operating_point"][key], key
    assert set(data["operating_point"]["per_defect_type"]) == {"blob", "scratch"}
    assert data["operating_point"]["per_defect_type"]["blob"]["n"] == 1
    outlook = data["operating_point"]["expected_good_flag"]
    assert outlook["n_good"] == 4 and outlook["expected"] <= outlook["upper"] <= 1.0
    # taught as `inspector train` teaches: the configuration chosen from the good shots, said and kept
    assert "as taught: chose " in out and data["self_tune"]["reason"].startswith("chose ")
    assert data["self_tune"]["chosen"] in out

    assert len(list(cache.glob("tiny_category-taught-*.json"))) == 1
    for extra in (["--cache", str(cache)], ["--fixed-config"]):
        assert main(["evaluate", str(root), "--shots", "4", "--weights", str(tiny_weights_file), "--device", "cpu",
                     "--json", str(out_json), *extra]) == EXIT_OK
        again, said = json.loads(out_json.read_text(encoding="utf-8")), capsys.readouterr().out
        if extra[0] == "--cache":      # the kept choice is read back: the same model, the same numbers
            assert again["self_tune"] == data["self_tune"] and again["image_auroc"] == data["image_auroc"]
        else:                          # the recipe defaults as written: nothing chosen, nothing said
            assert "self_tune" not in again and "as taught" not in said


def test_evaluate_with_too_few_good_shots_to_self_tune_measures_the_defaults_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from inspector._evaluate_commands import _taught_config
    from models.self_tune import MIN_IMAGES

    shots = [tmp_path / f"good_{i}.png" for i in range(MIN_IMAGES - 1)]
    args = argparse.Namespace(fixed_config=False, shots=0, seed=0, cache=tmp_path, category=tmp_path / "cat")

    def no_backbone() -> None:
        msg = "nothing to self-tune: no backbone needed"
        raise AssertionError(msg)

    config, said = _taught_config(args, shots, "the defaults", no_backbone, key="k")
    assert config == "the defaults" and said is not None
    assert said["note"] == f"not self-tuned: it needs at least {MIN_IMAGES} good images, got {MIN_IMAGES - 1}"
    assert said["note"] in capsys.readouterr().out and list(tmp_path.glob("*.json")) == []


def test_a_damaged_or_outdated_kept_choice_is_tuned_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--cache`` keeps the self-tuned choice; a damaged file there is named, tuned again and rewritten; the same
    shots offered another list of candidates (a new version's) are tuned again, not read back."""
    import argparse
    import dataclasses
    import json

    import torch

    import models.self_tune
    from inspector._evaluate_commands import _taught_config
    from models.backbone import create_backbone
    from models.detectors import PatchKNNConfig

    rng = np.random.default_rng(8)
    write_images(tmp_path / "cat" / "train" / "good", [textured_part(rng) for _ in range(4)])
    shots = sorted((tmp_path / "cat" / "train" / "good").iterdir())
    args = argparse.Namespace(fixed_config=False, shots=0, seed=0, cache=tmp_path / "cache", category=tmp_path / "cat")
    config = PatchKNNConfig(shorter_side=56, masking="off", augment_rotations=False)
    torch.manual_seed(0)
    tiny = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    _, first = _taught_config(args, shots, config, lambda: tiny, key="k")
    (memo,) = (tmp_path / "cache").glob("cat-taught-*.json")
    memo.write_text("{ not json", encoding="utf-8")
    capsys.readouterr()
    chosen, again = _taught_config(args, shots, config, lambda: tiny, key="k")
    assert f"{memo}: not a kept self-tuning choice (damaged?); tuning again" in capsys.readouterr().err
    assert first is not None and again == first and json.loads(memo.read_text(encoding="utf-8")) == first
    assert chosen == dataclasses.replace(config, **first["options"])
    offered = models.self_tune.candidates_for
    monkeypatch.setattr(models.self_tune, "candidates_for", lambda *a, **k: offered(*a, **k)[:1])
    _, only_default = _taught_config(args, shots, config, lambda: tiny, key="k")
    assert only_default is not None and only_default["options"] == {}       # the one candidate left: the default
    assert len(list((tmp_path / "cache").glob("cat-taught-*.json"))) == 2


def test_evaluate_types_writes_the_typing_accuracy(
    tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`inspector evaluate --types 1` on a tiny category with two defect types, the recipe defaults as written."""
    import json

    root = tmp_path / "tiny_types"
    write_tiny_category(root, np.random.default_rng(6), test_good=1, per_type=2)
    out_json, cache = tmp_path / "types.json", tmp_path / "cache"
    assert main(["evaluate", str(root), "--types", "1", "--type-repeats", "1", "--shots", "4", "--fixed-config",
                 "--weights", str(tiny_weights_file), "--device", "cpu", "--cache", str(cache),
                 "--json", str(out_json)]) == EXIT_OK
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert 0.0 <= data["defect_type_accuracy"] <= 1.0 and data["n_types"] == 2 and data["n_typed_per_draw"] == 2
    assert data["self_tune"] is None and "defect type accuracy" in capsys.readouterr().out
    assert [f.name for f in cache.iterdir() if f.is_dir()] != []        # the features kept for a rerun


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_fifo_as_recipe_is_refused_before_the_command_loads(tmp_path: Path, kind: str) -> None:
    """The check comes before OpenCV, torch and the command's own imports: the answer is immediate."""
    import os
    import subprocess
    import sys

    if kind == "device":
        recipe = "/dev/zero"
    else:
        recipe = str(tmp_path / "recipe.yaml")
        os.mkfifo(recipe)
    code = ("import sys\nfrom inspector.cli import main\nrc = main(['run', sys.argv[1], '--max-frames', '1'])\n"
            "print(sorted(m for m in ('cv2', 'torch', 'inspector._commands') if m in sys.modules))\nsys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, recipe], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == EXIT_ERROR
    what = "a device" if kind == "device" else "a FIFO"
    assert f"RecipeError: {recipe}: {recipe} is {what}, not a regular recipe file" in done.stderr
    assert done.stdout.strip() == "[]"


def test_train_from_another_recipe_writes_a_new_product_and_teaches_it(
    tmp_path: Path, tiny_weights_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recipe engineer on a station without the app: a new product's recipe from another's, in one command."""
    from inspector.recipe import ModelSettings, Thresholds, load_recipe

    rng = np.random.default_rng(0)
    good = write_images(tmp_path / "good", [textured_part(rng) for _ in range(6)])[0].parent
    other = write_recipe(tmp_path / "r", tiny_weights_file, name="part_a")
    other.write_text(other.read_text(encoding="utf-8").replace(
        "model: {directory: models}", "model: {directory: models, version: v2}   # pinned\nthresholds: {fail: 0.9}"),
        encoding="utf-8")
    new = tmp_path / "r" / "part_b.yaml"
    assert main(["train", str(new), "--good", str(good)]) == EXIT_ERROR             # no such file: says how
    assert "--from recipes/OTHER.yaml" in capsys.readouterr().err

    assert main(["train", str(other), "--product", "Part A", "--good", str(good)]) == EXIT_ERROR
    assert "--product works with --from only" in capsys.readouterr().err
    assert main(["train", str(new), "--from", str(other), "--good", str(good), "--fixed-config",
                 "--product", "Part B (4711-300)"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"wrote {new}" in out and "saved model v1" in out
    b = load_recipe(new)
    assert b.name == "part_b" and b.model == ModelSettings() and b.thresholds == Thresholds()
    assert b.product == "Part B (4711-300)", "the operator's name for the new product, not the other's"
    assert (b.model_dir() / "v1" / "model.json").is_file() and b.model_dir() != load_recipe(other).model_dir()
    assert main(["train", str(new), "--from", str(other), "--good", str(good)]) == EXIT_ERROR   # exists: refused
    assert "exists" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    c = tmp_path / "r" / "part_c.yaml"
    assert main(["train", str(c), "--from", str(other), "--good", str(empty)]) == EXIT_ERROR
    assert not c.exists(), "teaching failed: the new file is removed, and the same command can run again"
    assert "removed again" in capsys.readouterr().err
