"""Batch review: recipe and zero-shot modes, the report files, resuming, unreadable files.

A small synthetic folder (12 good textured 84x84 parts, 3 with a planted blob, 1 corrupt file, one
name with HTML-special characters, one sub-folder) is reviewed with a recipe taught in the test on a
random-init ViT-S/14 (weights written to a safetensors file once per module), and zero-shot.
"""

from __future__ import annotations

import csv
import html.parser
import json
import math
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
import torch

from inspector.errors import InspectorError
from inspector.recipe import load_recipe
from inspector.results import Progress
from inspector.review import JOURNAL_NAME, ReviewSummary, review
from inspector.teach import run_to_end, teach
from models.detectors.zero_shot import ZeroShotConfig, robust_thresholds
from tests.helpers.images import textured_part, with_defect, write_images

SIZE = 84                                  # 6 x 6 patches at shorter side 84
ZERO_SHOT = ZeroShotConfig(shorter_side=SIZE)
DEFECT_FILES = ("defects/img_000.png", "defects/img_001.png", "defects/img_002.png")
CORRUPT = "broken.png"
ODD = "odd & <name>.png"


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The review folder, a separate folder of good images to teach from, and random-init weights."""
    root = tmp_path_factory.mktemp("review-data")
    rng = np.random.default_rng(0)
    folder = root / "batch"
    write_images(folder / "good", [textured_part(rng, SIZE) for _ in range(11)])
    write_images(folder / "defects", [with_defect(textured_part(rng, SIZE), rng)[0] for _ in range(3)])
    write_images(root / "odd", [textured_part(rng, SIZE)])
    (root / "odd" / "img_000.png").rename(folder / ODD)
    (folder / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    write_images(root / "teach", [textured_part(rng, SIZE) for _ in range(6)])

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    weights = root / "random_vits14.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))

    recipe = root / "part.yaml"
    recipe.write_text(
        "schema_version: 1\nname: part\n"
        "source: {type: folder, path: batch}\n"
        f"preprocess: {{shorter_side: {SIZE}}}\n"
        "detector: {name: patch_knn, backbone: vit_small_patch14_dinov2, blocks: [8], "
        f"weights: {weights.name}, options: {{masking: 'off', patch_pooling: 1}}, device: cpu}}\n"
        "model: {directory: models, version: latest}\n"
        "min_defect_area_px: 4\n",
        encoding="utf-8",
    )
    run_to_end(teach(load_recipe(recipe), root / "teach"))
    return {"root": root, "folder": folder, "recipe": recipe, "weights": weights}


def _drive(job: Generator[Progress, None, ReviewSummary], *, stop_after: Any = None) -> ReviewSummary | None:
    """Run a review; with ``stop_after(tick, n)`` returning True, close it there (an interrupted run)."""
    n = 0
    try:
        while True:
            tick = next(job)
            n += 1
            if stop_after is not None and stop_after(tick, n):
                job.close()
                return None
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def recipe_review(data: dict[str, Path]) -> tuple[ReviewSummary, Path]:
    out = data["root"] / "recipe-review"
    summary = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu"))
    assert summary is not None
    return summary, out


@pytest.fixture(scope="module")
def zero_shot_review(data: dict[str, Path]) -> tuple[ReviewSummary, Path]:
    out = data["root"] / "zero-shot-review"
    summary = _drive(review(data["folder"], out, zero_shot=True, device="cpu", weights=data["weights"],
                            zero_shot_config=ZERO_SHOT))
    assert summary is not None
    return summary, out


# ------------------------------------------------------------------------------------------- helpers


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _check_report(out: Path, folder: Path) -> list[dict[str, str]]:
    """Every file listed once, the corrupt one with its reason, the page parses and links only existing files."""
    rows = _rows(out / "results.csv")
    expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert sorted(r["file"] for r in rows) == expected, "each image file exactly once, by its relative name"
    broken = next(r for r in rows if r["file"] == CORRUPT)
    assert broken["verdict"] == "ERROR"
    assert "not a decodable image" in broken["error"], broken
    assert str(folder) not in broken["error"], "reasons name files relative to the folder"

    page = (out / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    parser.close()
    assert parser.links, "the page shows thumbnails"
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), f"only relative links, got {link}"
        assert (out / unquote(link)).is_file(), f"index.html references {link}, which does not exist"
    assert "odd &amp; &lt;name&gt;.png" in page, "file names are HTML-escaped"
    assert "<name>" not in page
    text = " ".join(parser.text)
    assert CORRUPT in text and "not a decodable image" in text, "the unreadable file is listed with its reason"
    assert "<svg" in page and "review threshold" in page, "score histogram with the thresholds marked"
    for verdict_row in rows:
        if verdict_row["verdict"] in ("REVIEW", "FAIL"):
            assert (out / verdict_row["overlay"]).is_file(), "full-size overlays of REVIEW and FAIL images"
    return rows


def _planted_rank_first(rows: list[dict[str, str]]) -> None:
    scored = sorted((r for r in rows if r["verdict"] != "ERROR"), key=lambda r: -float(r["score"]))
    assert {r["file"] for r in scored[: len(DEFECT_FILES)]} == set(DEFECT_FILES), [
        (r["file"], r["score"]) for r in scored]


# ------------------------------------------------------------------------------------------- recipe mode


def test_recipe_review_writes_a_complete_report(recipe_review: tuple[ReviewSummary, Path],
                                                data: dict[str, Path]) -> None:
    summary, out = recipe_review
    rows = _check_report(out, data["folder"])
    _planted_rank_first(rows)
    assert summary.files == 16
    assert summary.counts["ERROR"] == 1
    assert sum(summary.counts.values()) == 16
    assert summary.mode == "recipe"
    assert any("broken.png" in line for line in summary.summary_lines())
    defects = _rows(out / "defects.csv")
    flagged = {r["file"] for r in rows if r["verdict"] in ("REVIEW", "FAIL")}
    assert {d["file"] for d in defects} <= flagged
    assert defects, "the planted defects give regions"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Where the defects are" in page and (out / "locations" / "map-0.png").is_file()
    # the rule says which regions are drawn: those reaching the model's region peak, and each image's strongest
    assert "shown where a region's peak reaches" in summary.rule and "strongest region" in page


def test_interrupted_recipe_review_resumes_to_the_same_report(
    recipe_review: tuple[ReviewSummary, Path], data: dict[str, Path]
) -> None:
    _, full = recipe_review
    out = data["root"] / "recipe-resumed"
    stopped = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu"),
                     stop_after=lambda tick, n: n == 7)      # the loading tick, then 6 images
    assert stopped is None
    journal = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    assert len(journal) == 1 + 6, "a header, then one line per finished image"
    summary = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu"))
    assert summary is not None
    assert summary.resumed == 6
    assert len((out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()) == 1 + 16, "nothing done twice"
    for name in ("results.csv", "defects.csv"):
        assert (out / name).read_text(encoding="utf-8") == (full / name).read_text(encoding="utf-8"), name
    _check_report(out, data["folder"])


def test_review_is_not_continued_after_the_recipe_changed_its_region_peak(data: dict[str, Path]) -> None:
    out = data["root"] / "recipe-peak-changed"
    assert _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu"),
                  stop_after=lambda tick, n: n == 3) is None
    header = json.loads((out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()[0])
    assert header["region_peak"] is not None and header["region_peak"] > 0, "the model's peak, recorded"
    every_region = data["root"] / "part-every-region.yaml"      # the same recipe, drawing every region
    every_region.write_text(data["recipe"].read_text(encoding="utf-8") + "thresholds: {region_peak: 0}\n",
                            encoding="utf-8")
    with pytest.raises(InspectorError, match=r"other settings \(region_peak differ"):
        _drive(review(data["folder"], out, recipe=every_region, device="cpu"))
    kept = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    assert len(kept) == 1 + 2 and json.loads(kept[0]) == header, "what was recorded is kept"


def test_report_folder_of_another_review_is_refused(
    recipe_review: tuple[ReviewSummary, Path], data: dict[str, Path]
) -> None:
    _, out = recipe_review
    with pytest.raises(InspectorError, match="other settings.*mode"):
        _drive(review(data["folder"], out, zero_shot=True, weights=data["weights"], zero_shot_config=ZERO_SHOT))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({}, "exactly one of a recipe"), ({"zero_shot": True, "recipe": Path("x.yaml")}, "exactly one of a recipe")],
)
def test_review_needs_exactly_one_mode(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InspectorError, match=match):
        _drive(review(tmp_path, tmp_path / "out", **kwargs))


def test_review_of_an_empty_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(InspectorError, match="holds no image files"):
        _drive(review(tmp_path, tmp_path / "out", zero_shot=True))


# ------------------------------------------------------------------------------------------- zero-shot


def test_zero_shot_review_ranks_planted_defects_first(zero_shot_review: tuple[ReviewSummary, Path],
                                                      data: dict[str, Path]) -> None:
    summary, out = zero_shot_review
    rows = _check_report(out, data["folder"])
    _planted_rank_first(rows)
    assert summary.mode == "zero-shot"
    assert "median" in summary.rule
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Zero-shot mode" in page and "median" in page, "the report says how images were flagged"
    assert summary.counts["PASS"] >= 8, summary.counts
    # Each image's score is its re-scored MuSc score, and its verdict the batch's median rule on those scores.
    with np.load(out / "zero_shot_scores.npz", allow_pickle=False) as saved:
        scores = dict(zip([str(f) for f in saved["files"]], saved["pred_score"].tolist(), strict=True))
        standardised = int(saved["brightness_active"])        # "auto": decided on the batch's first frames
    assert standardised in (0, 1)
    assert ("each frame brightness-standardised (auto: the scene fills the frame)" if standardised
            else "frames as they are (auto: a part on a plain background)") in page, "the report says which"
    review_t, fail_t, _ = robust_thresholds(list(scores.values()))
    for row in (r for r in rows if r["verdict"] != "ERROR"):
        score = scores[row["file"]]
        assert float(row["score"]) == pytest.approx(score, abs=1e-5), row["file"]
        assert row["verdict"] == ("FAIL" if score >= fail_t else "REVIEW" if score >= review_t else "PASS"), row


def test_interrupted_zero_shot_review_resumes_to_the_same_report(
    zero_shot_review: tuple[ReviewSummary, Path], data: dict[str, Path]
) -> None:
    _, full = zero_shot_review
    out = data["root"] / "zero-shot-resumed"
    reports = iter(range(100))
    # Stop after the batch was scored and 4 images were written into the report.
    stopped = _drive(review(data["folder"], out, zero_shot=True, device="cpu", weights=data["weights"],
                            zero_shot_config=ZERO_SHOT),
                     stop_after=lambda tick, n: tick.message.startswith("report") and next(reports) == 3)
    assert stopped is None
    assert (out / "zero_shot_scores.npz").is_file(), "the batch's scores are kept for the next run"
    summary = _drive(review(data["folder"], out, zero_shot=True, device="cpu", weights=data["weights"],
                            zero_shot_config=ZERO_SHOT))
    assert summary is not None
    for name in ("results.csv", "defects.csv"):
        assert (out / name).read_text(encoding="utf-8") == (full / name).read_text(encoding="utf-8"), name


def test_zero_shot_thresholds_set_by_hand_rewrite_the_report_from_the_kept_scores(
    zero_shot_review: tuple[ReviewSummary, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    _, full = zero_shot_review
    out = tmp_path / "rethresholded"
    shutil.copytree(full, out)
    with np.load(out / "zero_shot_scores.npz", allow_pickle=False) as saved:
        scores = dict(zip([str(f) for f in saved["files"]], saved["pred_score"].tolist(), strict=True))
    ranked = sorted(scores.values(), reverse=True)
    review_at, fail_at = ranked[5], ranked[1]            # 6 flagged, 2 of them FAIL: not what the rule says
    rule_review, rule_fail, _ = robust_thresholds(list(scores.values()))
    messages: list[str] = []
    job = review(data["folder"], out, zero_shot=True, device="cpu", weights=data["weights"],
                 zero_shot_config=ZERO_SHOT, zero_shot_thresholds=(review_at, fail_at))
    summary = _drive(job, stop_after=lambda tick, n: messages.append(tick.message) or False)
    assert summary is not None
    assert messages and all(m.startswith("report") for m in messages), "nothing scored again, only written"
    assert summary.resumed == 1, "every image written again; only the unreadable file's record kept"
    assert summary.thresholds == (review_at, fail_at, review_at)
    assert "set by the reviewer" in summary.rule and f"{rule_review:.4f} and {rule_fail:.4f}" in summary.rule
    rows = [r for r in _rows(out / "results.csv") if r["verdict"] != "ERROR"]
    assert sorted(r["verdict"] for r in rows).count("FAIL") == 2
    for row in rows:
        score = scores[row["file"]]
        assert row["verdict"] == ("FAIL" if score >= fail_at else "REVIEW" if score >= review_at else "PASS"), row
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "set by the reviewer" in page
    # the same thresholds again: nothing to do; the rule again: the report as the rule wrote it
    again = _drive(review(data["folder"], out, zero_shot=True, device="cpu", weights=data["weights"],
                          zero_shot_config=ZERO_SHOT, zero_shot_thresholds=(review_at, fail_at)))
    assert again is not None and again.resumed == len(scores) + 1        # and the unreadable file
    back = _drive(review(data["folder"], out, zero_shot=True, device="cpu", weights=data["weights"],
                         zero_shot_config=ZERO_SHOT))
    assert back is not None and "set by the reviewer" not in back.rule
    for name in ("results.csv", "defects.csv"):
        assert (out / name).read_text(encoding="utf-8") == (full / name).read_text(encoding="utf-8"), name


def test_good_candidates_are_the_lowest_scoring_pass_images_of_a_zero_shot_review(
    zero_shot_review: tuple[ReviewSummary, Path], recipe_review: tuple[ReviewSummary, Path], tmp_path: Path
) -> None:
    from inspector._review_zero_shot import good_candidates

    _, out = zero_shot_review
    rows = [r for r in _rows(out / "results.csv") if r["verdict"] == "PASS"]
    lowest = sorted(rows, key=lambda r: float(r["score"]))
    chosen = good_candidates(out, 4)
    assert [p.name for p, _ in chosen] == [Path(r["file"]).name for r in lowest[:4]]
    assert [s for _, s in chosen] == sorted(s for _, s in chosen) and all(p.is_file() for p, _ in chosen)
    assert not any(str(p).endswith(DEFECT_FILES) for p, _ in chosen), "the planted defects score highest"
    assert len(good_candidates(out, 99)) == len(rows), "at most every PASS image"
    with pytest.raises(InspectorError, match="not a zero-shot one"):
        good_candidates(recipe_review[1], 4)
    with pytest.raises(InspectorError, match="not a review folder"):
        good_candidates(tmp_path, 4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"recipe": Path("part.yaml"), "zero_shot_thresholds": (0.1, 0.2)}, "zero-shot mode only"),
    ({"zero_shot": True, "zero_shot_thresholds": (0.3, 0.2)}, "0 <= review <= fail"),
    ({"zero_shot": True, "zero_shot_thresholds": (math.nan, 0.2)}, "0 <= review <= fail"),
])
def test_review_thresholds_by_hand_that_cannot_work_are_refused(data: dict[str, Path], tmp_path: Path,
                                                                 kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InspectorError, match=match):
        _drive(review(data["folder"], tmp_path / "out", **kwargs))


def test_zero_shot_review_scores_the_batch_again_when_images_were_added(data: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    folder = tmp_path / "lot"
    write_images(folder, [textured_part(rng, SIZE) for _ in range(4)])
    out = tmp_path / "lot-review"
    first = _drive(review(folder, out, zero_shot=True, device="cpu", weights=data["weights"],
                          zero_shot_config=ZERO_SHOT))
    assert first is not None and first.files == 4
    write_images(folder, [with_defect(textured_part(rng, SIZE), rng)[0]], prefix="late")
    second = _drive(review(folder, out, zero_shot=True, device="cpu", weights=data["weights"],
                           zero_shot_config=ZERO_SHOT))
    assert second is not None and second.files == 5
    rows = _rows(out / "results.csv")
    assert [r["file"] for r in rows] == ["img_000.png", "img_001.png", "img_002.png", "img_003.png", "late_000.png"]
    top = max(rows, key=lambda r: float(r["score"]))
    assert top["file"] == "late_000.png", "the new image was scored with the rest"


def test_hostile_file_names_are_escaped_listed_or_not_followed(data: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    folder = tmp_path / "lot"
    write_images(folder, [textured_part(rng, SIZE) for _ in range(3)])
    (folder / "img_000.png").rename(folder / "=HYPERLINK(1).png")
    (folder / "img_001.png").rename(folder / ".hidden.png")
    secret = write_images(tmp_path / "elsewhere", [textured_part(rng, SIZE)])[0]
    (folder / "link.png").symlink_to(secret)
    (folder / ".thumbs").mkdir()                          # a hidden folder: not searched, and listed as such
    write_images(folder / ".thumbs", [textured_part(rng, SIZE)])
    (folder / "elsewhere").symlink_to(secret.parent, target_is_directory=True)
    out = tmp_path / "lot-review"
    summary = _drive(review(folder, out, zero_shot=True, device="cpu", weights=data["weights"],
                            zero_shot_config=ZERO_SHOT))
    assert summary is not None and summary.files == 2
    assert [r["file"] for r in _rows(out / "results.csv")] == ["'=HYPERLINK(1).png", "img_002.png"]
    assert any(s.startswith(".hidden.png: hidden") for s in summary.skipped), summary.skipped
    assert any(s.startswith("link.png: a link to") and "outside the reviewed folder" in s for s in summary.skipped)
    assert any(line.startswith("skipped: link.png") for line in summary.summary_lines())
    assert ".thumbs: a hidden folder (its name starts with '.'), not searched" in summary.skipped, summary.skipped
    assert f"elsewhere: a link to the folder {secret.parent.resolve()}, not followed" in summary.skipped


def test_batched_review_scores_like_one_image_at_a_time(recipe_review: tuple[ReviewSummary, Path],
                                                        data: dict[str, Path]) -> None:
    batched = data["root"] / "recipe-batched"
    _drive(review(data["folder"], batched, recipe=data["recipe"], device="cpu", batch_size=8))
    out = _one_at_a_time(data)
    one = {r["file"]: r for r in _rows(out / "results.csv")}
    many = {r["file"]: r for r in _rows(batched / "results.csv")}
    assert one.keys() == many.keys()
    for name, row in one.items():
        assert row["verdict"] == many[name]["verdict"], name
        if row["verdict"] != "ERROR":
            assert float(row["score"]) == pytest.approx(float(many[name]["score"]), abs=1e-4), name


def _one_at_a_time(data: dict[str, Path]) -> Path:
    """The path before batching and threads: one image per model call, one scoring thread (made once)."""
    out = data["root"] / "recipe-one-at-a-time"
    if not (out / "results.csv").is_file():
        summary = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", batch_size=1, workers=1))
        assert summary is not None and summary.counts["ERROR"] == 1
    return out


def _journal(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()[1:]]


@pytest.mark.parametrize("workers", [2, 5])
def test_review_on_scoring_threads_matches_one_at_a_time(data: dict[str, Path], workers: int) -> None:
    """N threads score whole images at once: same records in the same order, scores and verdicts as
    one image at a time, and the corrupt file is one ERROR row (the others are scored)."""
    one = _one_at_a_time(data)
    out = data["root"] / f"recipe-threads-{workers}"
    summary = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", workers=workers))
    assert summary is not None and summary.counts["ERROR"] == 1
    assert f"{workers} images at a time" in summary.model, summary.model
    serial, threaded = _journal(one), _journal(out)
    assert [r["file"] for r in threaded] == [r["file"] for r in serial], "journal in the files' order"
    for a, b in zip(serial, threaded, strict=True):
        assert (a["status"], a.get("verdict"), a.get("regions")) == (b["status"], b.get("verdict"), b.get("regions"))
        if a["status"] == "ok":
            assert b["score"] == pytest.approx(a["score"], abs=1e-6), a["file"]
    assert [r["file"] for r in _rows(out / "results.csv")] == [r["file"] for r in _rows(one / "results.csv")]
    _check_report(out, data["folder"])


def test_cancelled_threaded_review_stops_its_threads_and_resumes(data: dict[str, Path]) -> None:
    import threading

    out = data["root"] / "recipe-threads-cancelled"
    stopped = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", workers=3),
                     stop_after=lambda tick, n: n == 5)      # the loading tick, then 4 images
    assert stopped is None
    left = [t.name for t in threading.enumerate() if t.name.startswith(("review-score", "review-decode"))]
    assert not left, f"threads outlive the cancelled review: {left}"
    assert len(_journal(out)) == 4, "only the images handed back before the cancel are journaled"
    summary = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", workers=3))
    assert summary is not None and summary.resumed == 4
    assert len(_journal(out)) == 16, "nothing done twice"
    one = _one_at_a_time(data)
    assert [r["file"] for r in _rows(out / "results.csv")] == [r["file"] for r in _rows(one / "results.csv")]
    for a, b in zip(_rows(one / "results.csv"), _rows(out / "results.csv"), strict=True):
        assert a["verdict"] == b["verdict"], a["file"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workers": 0}, "review workers must be >= 1, got 0"),
    ({"workers": 2, "batch_size": 4}, "scores one image per thread; a batch size of 4 works with one worker"),
])
def test_review_workers_that_cannot_work_are_refused(data: dict[str, Path], tmp_path: Path,
                                                     kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InspectorError, match=match):
        _drive(review(data["folder"], tmp_path / "out", recipe=data["recipe"], **kwargs))


def test_cancelled_review_stops_its_decode_thread(data: dict[str, Path]) -> None:
    import threading

    out = data["root"] / "recipe-cancelled"
    stopped = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", batch_size=4),
                     stop_after=lambda tick, n: n == 3)
    assert stopped is None
    assert not [t for t in threading.enumerate() if t.name == "review-decode"], "the decode thread is left running"


def test_review_batch_size_below_one_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InspectorError, match="batch size must be >= 1"):
        _drive(review(data["folder"], tmp_path / "out", recipe=data["recipe"], batch_size=0))


def test_onnx_runtime_without_an_export_says_how_and_auto_falls_back_to_torch(data: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    from inspector.errors import ModelError

    models = data["root"] / "models" / "part"
    assert not list(models.glob("*/model.onnx")), "an earlier test left an export behind"
    with pytest.raises(ModelError, match="inspector export"):
        _drive(review(data["folder"], tmp_path / "onnx", recipe=data["recipe"], device="cpu", runtime="onnx"))
    out = tmp_path / "auto"
    summary = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", runtime="auto"))
    assert summary is not None
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "scored by torch (ONNX fallback)" in page
    assert "the ONNX model could not be used" in page


def test_onnx_review_scores_like_torch_and_says_so(recipe_review: tuple[ReviewSummary, Path],
                                                   data: dict[str, Path], tmp_path: Path) -> None:
    from inspector.station import Station
    from models.export import SCORE_ATOL, export_onnx

    station = Station.load(load_recipe(data["recipe"]), device="cpu", weights=data["weights"])
    assert station.version is not None
    onnx = station.version.path / "model.onnx"
    export_onnx(station.detector, onnx, input_hw=(SIZE, SIZE), weights=station.weights)
    try:
        out = tmp_path / "onnx"
        summary = _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", runtime="onnx"))
        assert summary is not None and summary.counts["ERROR"] == 1          # the corrupt file only
        assert "scored by onnxruntime (model.onnx)" in (out / "index.html").read_text(encoding="utf-8")
        # its report folder is not continued by torch: one report, one runtime
        with pytest.raises(InspectorError, match=r"other settings \(runtime differ.*'onnx'.*'torch'"):
            _drive(review(data["folder"], out, recipe=data["recipe"], device="cpu", runtime="torch"))
        torch_rows = {r["file"]: r for r in _rows(recipe_review[1] / "results.csv")}
        onnx_rows = {r["file"]: r for r in _rows(out / "results.csv")}
        assert torch_rows.keys() == onnx_rows.keys()
        for name, row in torch_rows.items():
            assert row["verdict"] == onnx_rows[name]["verdict"], name
            if row["verdict"] != "ERROR":
                assert float(row["score"]) == pytest.approx(float(onnx_rows[name]["score"]), abs=SCORE_ATOL), name
        # an export made with other weights is stale: auto scores with torch and says why
        described = onnx.with_name("model.onnx.json")
        description = json.loads(described.read_text(encoding="utf-8"))
        description["weights_sha256"] = "f" * 64
        described.write_text(json.dumps(description), encoding="utf-8")
        stale = tmp_path / "stale"
        assert _drive(review(data["folder"], stale, recipe=data["recipe"], device="cpu", runtime="auto")) is not None
        page = (stale / "index.html").read_text(encoding="utf-8")
        assert "scored by torch (ONNX fallback)" in page and "export it again" in page
    finally:
        for path in onnx.parent.glob("model.onnx*"):
            path.unlink()


def test_unknown_review_runtime_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InspectorError, match="review runtime must be one of torch, onnx, auto"):
        _drive(review(data["folder"], tmp_path / "out", recipe=data["recipe"], runtime="tensorflow"))


def test_zero_shot_scores_kept_before_the_brightness_option_still_load(tmp_path: Path) -> None:
    from inspector._review_zero_shot import _load_scores, _save_scores

    grids = [np.zeros((2, 3), np.float32), np.ones((3, 2), np.float32)]
    saved = {"files": ["a.png", "b.png"], "shapes": [(28, 42), (42, 28)], "pred_score": np.array([0.1, 0.2]),
             "patch_scores": grids, "patch_size": 14, "brightness_active": True}
    _save_scores(tmp_path / "new.npz", saved)
    assert _load_scores(tmp_path / "new.npz")["brightness_active"] is True          # type: ignore[index]
    with np.load(tmp_path / "new.npz", allow_pickle=False) as data:      # as written before the option
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "brightness_active"})
    old = _load_scores(tmp_path / "old.npz")
    assert old is not None and old["brightness_active"] is None and old["files"] == ["a.png", "b.png"]


def test_the_report_rule_names_where_the_region_peak_comes_from(taught_recipe: Path, tmp_path: Path) -> None:
    import dataclasses

    from inspector._review_records import ReviewRate
    from inspector.review import recipe_report_meta

    recipe = load_recipe(taught_recipe)

    def rule(region_peak: float | None, override: float | None = None) -> str:
        over = dataclasses.replace(recipe, thresholds=dataclasses.replace(recipe.thresholds, region_peak=override))
        return recipe_report_meta(tmp_path, over, model="m", thresholds=(0.1, 0.2, 0.05), total_files=1,
                                  complete=True, rate=ReviewRate(), notes=(), region_peak=region_peak).rule

    assert "reaches 0.0700 (the highest value of the good images' maps when taught)" in rule(0.07)
    assert "reaches 0.0900 (the recipe's)" in rule(0.09, override=0.09)
    assert "shown where" not in rule(None) and "shown where" not in rule(0.0, override=0.0)   # every region drawn


def test_the_log_names_an_unreadable_file_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warning read "review: 002.jpg: DIR/002.jpg: not a decodable image" (the decode error names the file)."""
    import logging

    from inspector.errors import FrameDecodeError
    from inspector.review import _Decoded, _inspect_one

    path = tmp_path / "002.jpg"
    error = FrameDecodeError(f"{path}: not a decodable image (13 bytes)")
    with caplog.at_level(logging.WARNING, logger="inspector.review"):
        record = _inspect_one(None, _Decoded(0, path, "002.jpg", None, error), tmp_path, (0.1, 0.2, 0.05))
    assert record == {"file": "002.jpg", "status": "error", "error": "not a decodable image (13 bytes)"}
    assert [r.getMessage() for r in caplog.records] == ["review: 002.jpg: not a decodable image (13 bytes)"]
