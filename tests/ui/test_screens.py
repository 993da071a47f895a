"""Statistics and review screens on a real SQLite store in tmp_path, filled with stand-in results."""

from __future__ import annotations

import csv
import gc
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.results import Verdict
from inspector.store import Store
from tests.ui.conftest import FAIL, REVIEW, DarkSpotInspector
from ui.review_view import ModelVersionOps, ReviewView
from ui.stats_view import StatisticsView, control_limits, score_chart_data
from ui.workers import JobRunner


@pytest.fixture
def store(tmp_path: Path, part_images) -> Store:
    """A store with the six parts inspected twice by recipe "demo" (lot A) and once by "other" (lot B)."""
    db = Store(tmp_path / "stats.db", flush_interval=0.0)
    inspector = DarkSpotInspector("demo")
    other = DarkSpotInspector("other")
    images = tmp_path / "archive"
    images.mkdir()
    frame_id = 0
    for rounds, insp, lot in ((2, inspector, "A"), (1, other, "B")):
        for _ in range(rounds):
            for name, image in part_images:
                path = images / f"{frame_id:03d}_{name}"
                cv2.imwrite(str(path), image)
                result = insp.inspect_image(image, path=str(path), frame_id=frame_id)
                from dataclasses import replace

                db.record(replace(result, lot=lot), image_path=str(path))
                frame_id += 1
    db.flush()
    yield db
    db.close()


def test_control_limits() -> None:
    assert control_limits(np.array([1.0])) is None
    mean, low, high = control_limits(np.array([1.0, 2.0, 3.0, np.nan]))
    assert mean == pytest.approx(2.0)
    assert (high - mean) == pytest.approx(3.0) and (mean - low) == pytest.approx(3.0)


def test_score_chart_data_splits_by_verdict_and_limits_follow_the_pass_scores() -> None:
    from inspector.store import ScorePoint

    rows = [(0.1, Verdict.PASS), (0.9, Verdict.FAIL), (0.2, Verdict.PASS), (0.3, Verdict.REVIEW), (0.15, Verdict.PASS)]
    points = [ScorePoint(100.0 + i, score, verdict) for i, (score, verdict) in enumerate(rows)]
    data = score_chart_data(points)
    assert data.count == 5 and data.scores.tolist() == [0.1, 0.9, 0.2, 0.3, 0.15]
    assert data.by_verdict[Verdict.PASS][0].tolist() == [100.0, 102.0, 104.0]
    assert data.by_verdict[Verdict.FAIL][1].tolist() == [0.9] and data.by_verdict[Verdict.ERROR][0].size == 0
    assert data.limits == control_limits(np.array([0.1, 0.2, 0.15]))
    assert score_chart_data(points[1:2] + points[3:4]).limits == control_limits(np.array([0.9, 0.3])), \
        "fewer than 2 PASS parts: the limits of every score"
    empty = score_chart_data([])
    assert empty.count == 0 and empty.limits is None


def test_the_score_line_breaks_between_runs_not_within_one() -> None:
    """Two runs a night apart were joined by a straight line, drawing scores nobody measured; a pause of a
    minute inside a run is not a break."""
    from inspector.store import ScorePoint

    night = 100.0 + 9 * 3600
    times = [100.0, 101.0, 102.0, 162.0, 163.0, night, night + 1.0, night + 2.0]
    data = score_chart_data([ScorePoint(t, 0.1 + i / 100, Verdict.PASS) for i, t in enumerate(times)])
    line_times, line_scores = data.line
    assert line_times.size == len(times) + 1 and data.count == len(times)
    gap = int(np.flatnonzero(np.isnan(line_scores))[0])
    assert np.isnan(line_scores).sum() == 1 and line_times[gap - 1] == 163.0 and line_times[gap + 1] == night
    assert line_times[gap - 1] < line_times[gap] < line_times[gap + 1]
    assert np.array_equal(line_scores[~np.isnan(line_scores)], data.scores)
    steady = score_chart_data([ScorePoint(100.0 + 60 * i, 0.1, Verdict.PASS) for i in range(5)])
    assert not np.isnan(steady.line[1]).any()


def test_statistics_tables_chart_and_export(qtbot, tmp_path, store) -> None:
    view = StatisticsView(store)
    qtbot.addWidget(view)
    view.set_thresholds(REVIEW, FAIL)
    view.set_range(time.time() - 3600, time.time() + 3600)
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.refresh()
    table = view.yield_table
    rows = {table.item(r, 0).text(): [table.item(r, c).text() for c in range(1, 7)]
            for r in range(table.rowCount())}
    assert rows == {"demo": ["12", "8", "0", "4", "0", "66.7"], "other": ["6", "4", "0", "2", "0", "66.7"]}
    assert view.defect_table.item(0, 1).text() == "6"           # one region per FAIL, none classified yet
    assert view.points_drawn == 18
    items = list(view.chart.getPlotItem().items)        # made once: a refresh only sets their data
    assert view.limits == control_limits(view._verdict_points[Verdict.PASS].getData()[1])

    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.group_box.setCurrentIndex(view.group_box.findData("lot"))   # re-queries on change
    keys = [view.yield_table.item(r, 0).text() for r in range(view.yield_table.rowCount())]
    assert keys == ["A", "B"]
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.recipe_box.setCurrentIndex(view.recipe_box.findData("other"))
    assert view.points_drawn == 6
    assert list(view.chart.getPlotItem().items) == items

    out = view.export_csv(tmp_path / "export.csv")
    with out.open(encoding="utf-8") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == 6 and {row["recipe"] for row in exported} == {"other"}
    with qtbot.waitSignal(view.exported, timeout=10_000):
        view.export_in_background(tmp_path / "background.csv")     # the button's way: off the GUI thread
    assert "Exported to" in view.message.text() and (tmp_path / "background.csv").stat().st_size > 0


def test_the_score_chart_labels_its_lines_apart_when_they_lie_close(qtbot, store) -> None:
    view = StatisticsView(store)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    view.set_thresholds(0.50, 0.51)              # a review threshold just under the fail one
    view.set_range(time.time() - 3600, time.time() + 3600)
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.refresh()
    qtbot.wait(50)
    lines = [line for line in [*view._limit_lines.values(), *view._threshold_lines.values()] if line.isVisible()]
    assert len(lines) >= 4
    boxes = [line.label.sceneBoundingRect() for line in lines]
    overlapping = [(a.label.format, b.label.format) for i, a in enumerate(lines) for j, b in enumerate(lines)
                   if i < j and boxes[i].intersects(boxes[j])]
    assert not overlapping


def test_the_score_charts_time_axis_reads_clock_times_over_a_short_run(qtbot, store) -> None:
    """A run of 20 s read "19.000 20.000 ... 36.000" under the score chart (seconds and milliseconds: seen in
    the statistics screenshot), with no hour or minute to place it by."""
    import re

    view = StatisticsView(store)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    view.chart.grab()                                   # painted once: the axis knows its font
    axis = view.chart.getAxis("bottom")
    start = 1_796_000_000.0
    for span in (20.0, 4.0):
        labels = [text for spacing, values in axis.tickValues(start, start + span, 1100)
                  for text in axis.tickStrings(values, 1.0, spacing)]
        assert labels and all(re.fullmatch(r"\d\d:\d\d:\d\d", text) for text in labels), labels


def test_statistics_without_store_says_so(qtbot) -> None:
    view = StatisticsView(None)
    qtbot.addWidget(view)
    view.refresh()
    assert "--store" in view.message.text()
    with pytest.raises(RuntimeError, match="no statistics store"):
        view.export_csv("x.csv")


def test_review_filter_open_and_feedback(qtbot, tmp_path, store, monkeypatch) -> None:
    calls: list[tuple[Path, tuple[int, ...], str]] = []

    def good_feedback(recipe: Path, image: np.ndarray, note: str) -> str:
        calls.append((recipe, image.shape, note))       # stands in for teach.add_good_feedback (needs torch)
        return "v2"

    runner = JobRunner()
    questions: list[str] = []
    answers = [False, True, True]                        # No to the first question, then Yes
    done: list[tuple[str, Path, str]] = []
    versions = ModelVersionOps(next_version=lambda path: "v2",
                               make_active=lambda path, v: done.append(("active", path, v)),
                               undo=lambda path, v: done.append(("undo", path, v)))
    changed: list[Path] = []

    def confirm(title: str, text: str) -> bool:
        questions.append(text)
        return answers.pop(0)

    view = ReviewView(store, feedback_runner=lambda job: (runner.start(job, name="feedback"), True)[1],
                      recipe_lookup=lambda name: tmp_path / f"{name}.yaml", good_feedback=good_feedback,
                      versions=versions, confirm=confirm, on_model_changed=changed.append)
    runner.finished.connect(view.on_feedback_done)
    qtbot.addWidget(view)
    view.set_range(time.time() - 3600, time.time() + 3600)
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.refresh()
    assert len(view.records) == 18
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.verdict_box.setCurrentIndex(view.verdict_box.findData("FAIL"))
    assert len(view.records) == 6 and all(r.verdict == Verdict.FAIL for r in view.records)
    assert not view.table.item(0, 0).icon().isNull(), "thumbnail from the archived image"

    import threading

    import ui.review_reads
    read_on: list[str] = []
    decode = ui.review_reads._read_image

    def watched(path: str | None) -> np.ndarray | None:
        read_on.append(threading.current_thread().name)
        return decode(path)

    monkeypatch.setattr(ui.review_reads, "_read_image", watched)
    with qtbot.waitSignal(view.shown, timeout=10_000):
        view.select(0)
        record = view.current
        assert record is not None and f"#{record.id}" in view.details.text()
        assert record.path and f"file {record.path}" in view.details.text(), "which image the part was"
        assert "reading the image" in view.details.text() and not view.good_button.isEnabled()
    assert read_on and threading.main_thread().name not in read_on     # the picture is read off the GUI thread
    assert view.view.result is not None and view.view.result.regions and view.good_button.isEnabled()
    assert "reading the image" not in view.details.text()

    view.resize(1000, 700)
    view.show()
    qtbot.waitExposed(view)
    picture = view.view.geometry()
    view.assign_class("scratch")
    qtbot.wait(50)                                       # the layout settles
    assert view.view.geometry() == picture               # the label's line did not move the picture
    again = store.get_inspection(record.id)
    assert {r.defect_class for r in again.regions} == {"scratch"}
    assert again.label == "scratch"
    # one region set apart through the screen's own controls: the others keep their class
    assert view.region_box.count() == 1 + len(again.regions) and view.region_box.currentData() is None
    view.region_box.setCurrentIndex(len(again.regions))               # the last region
    one = again.regions[-1].id
    view.class_box.setCurrentIndex(view.class_box.findText("crack"))
    view.class_button.click()
    apart = store.get_inspection(record.id)
    assert {r.id: r.defect_class for r in apart.regions}[one] == "crack"
    assert [r.defect_class for r in apart.regions if r.id != one] == ["scratch"] * (len(apart.regions) - 1)
    assert f"region {len(apart.regions)}: class 'crack' recorded" in view.message.text()   # as the list numbers it
    assert view.region_box.currentData() == one and view.region_box.currentText().endswith(", crack")
    assert view.class_box.currentText() == "crack"      # the class chosen stays chosen: a run of one kind
    view.select(1)
    assert view.class_box.currentText() == "crack"      # on the next image too
    view.select(0)
    view.mark_good()
    assert "still being read" in view.message.text() and not questions   # nothing asked (the events wait)
    view.assign_class("crack", one)                     # a label given while the picture is read
    assert view.view.result is not None                 # the screen is not blanked meanwhile
    qtbot.waitUntil(view.good_button.isEnabled, timeout=10_000)         # the picture came
    assert view.view.result.image_bgr is not None and "crack" in {r.defect_class for r in view.view.result.regions}
    view.region_box.setCurrentIndex(0)

    view.mark_good()                                     # answered No: nothing recorded, no model
    assert "nothing changed" in view.message.text() and not calls and not runner.running
    assert store.get_inspection(record.id).label == "crack"        # the last label given
    assert "as model v2?" in questions[0] and "defect region" in questions[0]
    assert "not used on the line until you make it active" in questions[0]
    with qtbot.waitSignal(runner.stopped, timeout=10_000):
        view.mark_good()                                 # Yes
    assert store.get_inspection(record.id).label == "good"
    assert calls and calls[0][0] == tmp_path / f"{record.recipe}.yaml" and calls[0][1] == (112, 112, 3)
    assert "model v2 saved" in view.message.text() and "not used on the line" in view.message.text()
    assert view.table.item(0, 6).text() == "good"
    assert view.undo_button.isVisibleTo(view) and view.activate_button.text() == "Make v2 active"
    view.make_active()                                   # Yes
    recipe_file = tmp_path / f"{record.recipe}.yaml"
    assert done == [("active", recipe_file, "v2")] and changed == [recipe_file]
    assert not view.undo_button.isEnabled(), "an active version is not undone from here"
    view._pending_path = recipe_file
    view.on_feedback_done("v3")                          # another feedback version, then undone
    view.undo_good()
    assert done[-1] == ("undo", recipe_file, "v3") and "undone" in view.message.text()
    assert not view.undo_button.isVisibleTo(view)

    Path(record.image_path).unlink()       # the archive's size cap removed it
    view.select(1)
    with qtbot.waitSignal(view.shown, timeout=10_000):
        view.select(0)
    assert "is gone" in view.details.text() and record.image_path in view.details.text()


def _showing_the_first(qtbot, tmp_path: Path, store: Store, verdict: str) -> ReviewView:
    """A Review screen over the last hour's ``verdict`` rows of ``store``, the newest selected and shown."""
    store.flush()
    view = ReviewView(store, recipe_lookup=lambda name: tmp_path / f"{name}.yaml")
    qtbot.addWidget(view)
    view.set_range(time.time() - 3600, time.time() + 3600)
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.verdict_box.setCurrentIndex(view.verdict_box.findData(verdict))
    with qtbot.waitSignal(view.shown, timeout=10_000):
        view.select(0)
    return view


def test_an_error_inspection_shows_why_it_has_no_image_and_cannot_be_judged(qtbot, tmp_path, store) -> None:
    """An unreadable file's ERROR row (under Xvfb): the picture's place said "Select an inspection to see it" beside
    the one selected, the details blamed the archive policy, and "Actually good" and "Assign class" were offered
    for a frame that was never judged and has no region."""
    from inspector.results import InspectionResult

    error = "parts/003.png: not a decodable image (13 bytes)"
    store.record(InspectionResult(frame_id=99, timestamp=time.time(), source="parts", recipe="demo",
                                  model_version="v1", verdict=Verdict.ERROR, score=None, error=error))
    view = _showing_the_first(qtbot, tmp_path, store, "ERROR")
    assert [r.verdict for r in view.records] == [Verdict.ERROR]
    record = view.current
    assert record is not None
    assert view.view.empty_text() == f"No image of inspection #{record.id}: its details below say why"
    assert error in view.details.text() and "no image: there was none to keep" in view.details.text()
    assert not any(w.isEnabled() for w in (view.good_button, view.class_button, view.class_box, view.region_box))
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.verdict_box.setCurrentIndex(view.verdict_box.findData("FAIL"))
    with qtbot.waitSignal(view.shown, timeout=10_000):
        view.select(0)
    assert view.good_button.isEnabled() and view.class_button.isEnabled()
    view.table.clearSelection()
    assert view.view.empty_text() == "Select an inspection to see it"


def test_an_error_frame_the_model_failed_on_is_shown_but_not_judged(qtbot, tmp_path, store) -> None:
    """A frame the model failed on (a broken score, a GPU fault) is archived with its picture now: the reviewer sees
    what it failed on and the error, and still cannot call it good or give it a class (it was never judged)."""
    from inspector.results import InspectionResult

    picture = tmp_path / "frames" / "120000-000_demo_000007_error.jpg"
    picture.parent.mkdir()
    cv2.imwrite(str(picture), np.full((64, 64, 3), 120, np.uint8))
    error = "the anomaly score is not a finite number (nan)"
    store.record(InspectionResult(frame_id=7, timestamp=time.time(), source="camera 0", recipe="demo",
                                  model_version="v1", verdict=Verdict.ERROR, score=None, error=error),
                 image_path=str(picture))
    view = _showing_the_first(qtbot, tmp_path, store, "ERROR")
    assert view._image is not None and view._image.shape == (64, 64, 3)
    assert error in view.details.text() and "no image" not in view.details.text()
    assert not any(w.isEnabled() for w in (view.good_button, view.class_button, view.class_box, view.region_box))


def test_a_frame_without_an_image_says_why_by_its_verdict(qtbot, tmp_path) -> None:
    """A PASS is kept only every Nth where the recipe asks; a FAIL without an image was recorded while archiving
    was off or paused (it read "only FAIL/REVIEW frames are kept by default" for both)."""
    from inspector.results import InspectionResult

    store = Store(tmp_path / "solo.db", flush_interval=0.0)
    for frame_id, verdict in ((1, Verdict.PASS), (2, Verdict.FAIL)):
        store.record(InspectionResult(frame_id=frame_id, timestamp=time.time() + frame_id, source="camera 0",
                                      recipe="demo", model_version="v1", verdict=verdict, score=0.5))
    store.flush()
    view = ReviewView(store, recipe_lookup=lambda name: tmp_path / f"{name}.yaml")
    qtbot.addWidget(view)
    view.set_range(time.time() - 3600, time.time() + 3600)
    for verdict, why in (("PASS", "a PASS frame is kept only where the recipe's archive.save_pass_every asks"),
                         ("FAIL", "archiving was off for this run, or paused")):
        with qtbot.waitSignal(view.refreshed, timeout=10_000):
            view.verdict_box.setCurrentIndex(view.verdict_box.findData(verdict))
        assert [r.verdict.value for r in view.records] == [verdict]
        with qtbot.waitSignal(view.shown, timeout=10_000):
            view.select(0)
        assert why in view.details.text(), view.details.text()
    view.shutdown()
    store.close()


def test_batch_review_runs_in_a_worker_and_can_be_cancelled(qtbot, tmp_path, part_folder) -> None:
    from types import SimpleNamespace

    from inspector.results import Progress
    from ui.review_view import ZERO_SHOT, BatchReviewPanel

    calls: list[tuple] = []
    endless = {"on": False}

    def fake_review(folder, out, *, recipe, zero_shot):
        """Stands in for inspector.review.review (torch): ticks per file, then a summary."""
        calls.append((folder, out, recipe, zero_shot))
        files = sorted(folder.glob("*.png"))
        for i, _ in enumerate(files, 1):
            yield Progress(done=i, total=len(files), message=f"{i}/{len(files)} images")
        while endless["on"]:
            yield Progress(done=0, total=0, message="scoring")
            threading.Event().wait(0.005)
        return SimpleNamespace(report=out / "index.html",
                               summary_lines=lambda: [f"reviewed {len(files)} file(s)", "PASS 4, FAIL 2"])

    recipe = tmp_path / "demo.yaml"
    panel = BatchReviewPanel(recipes=lambda: [recipe], run_review=fake_review)
    qtbot.addWidget(panel)
    assert [panel.recipe_box.itemText(i) for i in range(panel.recipe_box.count())] == ["demo", ZERO_SHOT]
    panel.run()
    assert "Choose the folder" in panel.message.text()
    panel.folder_edit.setText(str(part_folder))
    with qtbot.waitSignal(panel.jobs.stopped, timeout=10_000):
        panel.run()
    assert calls == [(part_folder, tmp_path / "parts-review", recipe, False)]
    assert "reviewed 6 file(s)" in panel.message.text() and panel.open_button.isEnabled()

    endless["on"] = True
    panel.recipe_box.setCurrentIndex(1)                     # zero-shot
    panel.run()
    qtbot.waitUntil(lambda: panel.message.text() == "scoring", timeout=10_000)
    with qtbot.waitSignal(panel.jobs.stopped, timeout=10_000):
        panel.cancel_button.click()
    assert calls[-1][2:] == (None, True)
    assert "cancelled" in panel.message.text() and panel.run_button.isEnabled()


def test_batch_review_takes_the_reviewers_zero_shot_thresholds(qtbot, tmp_path, part_folder) -> None:
    from types import SimpleNamespace

    from ui.review_view import BatchReviewPanel

    calls: list[dict] = []

    def fake_review(folder, out, *, recipe, zero_shot, **extra):
        calls.append({"recipe": recipe, "zero_shot": zero_shot, **extra})
        return SimpleNamespace(report=out / "index.html", summary_lines=lambda: ["PASS 4, REVIEW 2"])
        yield                                               # a generator, as the review is

    recipe = tmp_path / "demo.yaml"
    panel = BatchReviewPanel(recipes=lambda: [recipe], run_review=fake_review)
    qtbot.addWidget(panel)
    panel.folder_edit.setText(str(part_folder))
    assert not panel.thresholds_edit.isEnabled(), "a recipe flags at its calibrated thresholds"
    panel.recipe_box.setCurrentIndex(1)                     # zero-shot
    assert panel.thresholds_edit.isEnabled()
    panel.thresholds_edit.setText("0.3,0.2")
    panel.run()
    assert calls == [] and panel.message.text().startswith("Invalid thresholds '0.3,0.2': give two scores")
    panel.thresholds_edit.setText(" 0.085, 0.12 ")
    with qtbot.waitSignal(panel.jobs.stopped, timeout=10_000):
        panel.run()
    assert calls == [{"recipe": None, "zero_shot": True, "zero_shot_thresholds": (0.085, 0.12)}]
    panel.thresholds_edit.clear()                           # empty: the batch's own rule
    with qtbot.waitSignal(panel.jobs.stopped, timeout=10_000):
        panel.run()
    assert calls[-1] == {"recipe": None, "zero_shot": True}
    panel.thresholds_edit.setText("0.085,0.12")
    panel.recipe_box.setCurrentIndex(0)                     # back to the recipe: the text is not used
    with qtbot.waitSignal(panel.jobs.stopped, timeout=10_000):
        panel.run()
    assert calls[-1] == {"recipe": recipe, "zero_shot": False}


def test_date_filters_follow_now_until_someone_sets_them(qtbot, monkeypatch) -> None:
    from PySide6.QtWidgets import QDateTimeEdit

    from ui import date_range

    since_edit, until_edit = QDateTimeEdit(), QDateTimeEdit()
    clock = [1_800_000_000.0]
    monkeypatch.setattr(date_range.time, "time", lambda: clock[0])
    following = date_range.FollowingRange(since_edit, until_edit)
    since, until = following.bounds()
    assert until >= clock[0] and since == pytest.approx(clock[0] - 7 * 86400, abs=1)
    clock[0] += 2 * 86400                               # the station stays open two days
    since, until = following.bounds()
    assert until >= clock[0], "an inspection recorded now is inside the range"
    until_edit.setDateTime(until_edit.dateTime().addDays(-1))    # someone picks a date: it stays
    fixed = following.bounds()
    clock[0] += 86400
    assert following.bounds() == fixed and not following.following


class BusyMeter:
    """The longest gap between 5 ms heartbeats of the GUI thread's event loop, in wall time and in the
    GUI thread's own CPU time (`time.thread_time`).

    The wall figure is what an operator feels, but on a loaded machine it also counts the time the OS
    gave the CPU to other processes; the CPU figure is the work the GUI thread did without returning
    to the event loop, which is what the code decides.
    """

    def __init__(self) -> None:
        from PySide6.QtCore import QElapsedTimer, QTimer

        self.longest_s = 0.0
        self.longest_cpu_s = 0.0
        self._clock = QElapsedTimer()
        self._cpu = 0.0
        self._timer = QTimer()
        self._timer.setInterval(5)
        self._timer.timeout.connect(self._beat)

    def start(self) -> None:
        self._clock.start()
        self._cpu = time.thread_time()
        self._timer.start()

    def _beat(self) -> None:
        cpu = time.thread_time()
        self.longest_s = max(self.longest_s, self._clock.restart() / 1000)
        self.longest_cpu_s = max(self.longest_cpu_s, cpu - self._cpu)
        self._cpu = cpu

    def stop(self) -> None:
        self._timer.stop()
        self._beat()


def test_review_and_statistics_clicks_stay_under_0_3_s_at_10000_rows(qtbot, tmp_path, part_images) -> None:
    """10,000 inspections with archived images: every refresh and selection returns to the event loop fast."""
    from dataclasses import replace

    GOAL_S = 0.3                # noqa: N806  (issue 13: no click above 0.3 s)
    GENEROUS_STALL_S = 1.0      # noqa: N806  (wall time on a loaded CI machine, other processes included)

    db = Store(tmp_path / "big.db", flush_interval=0.0)
    inspector = DarkSpotInspector("demo")
    archive = tmp_path / "archive"
    archive.mkdir()
    results = []
    for name, image in part_images:
        path = archive / name
        cv2.imwrite(str(path), image)
        results.append((inspector.inspect_image(image, path=str(path)), str(path)))
    start = time.time() - 3600
    for i in range(10_000):
        result, path = results[i % len(results)]
        db.record(replace(result, frame_id=i, timestamp=start + i * 0.3), image_path=path)
    db.flush(timeout=120)
    review = ReviewView(db)
    review.resize(1400, 800)
    stats = StatisticsView(db)
    for view in (review, stats):
        qtbot.addWidget(view)
        view.show()
    stalls, busy = {}, {}
    for name, view in (("review", review), ("statistics", stats)):
        # A full garbage collection walks every object of the process (torch, imported by this test session,
        # included) with the GIL held: 0.23-0.29 s here, and it fell inside the statistics click when the setup's
        # garbage (10,000 results) was still pending. Collected now, the meter times the screen, not the setup.
        gc.collect()
        meter = BusyMeter()
        meter.start()
        for _ in range(2):
            with qtbot.waitSignal(view.refreshed, timeout=60_000):
                view.refresh()
        if view is review:
            for row in (0, 50, 199):
                review.select(row)
                qtbot.wait(20)
        else:
            qtbot.waitUntil(lambda: stats.insights.last is not None, timeout=60_000)   # the insights drawn too
        qtbot.wait(100)                                  # the answer is painted
        meter.stop()
        stalls[name], busy[name] = meter.longest_s, meter.longest_cpu_s
    print("longest GUI stall at 10,000 inspections (2 refreshes; review also 3 selections): "
          + ", ".join(f"{name} {stalls[name]:.3f} s wall, {busy[name]:.3f} s GUI-thread CPU" for name in stalls))
    review.shutdown()
    stats.shutdown()
    db.close()
    assert len(review.records) == 200
    assert stats.points_drawn == 5000 and stats.insights.last is not None and stats.insights.pareto.rows
    # Issue 13's goal is 0.3 s. Statistics, busiest gap in GUI-thread CPU: 0.07-0.11 s with the chart items made
    # once and their arrays prepared on the query thread, 0.13-0.22 s before (wall 0.16-0.28 s against 0.25-0.55 s,
    # shared 2-core machine at load 6-7). Wall time follows the machine's load, hence the generous wall bound.
    assert max(busy.values()) < GOAL_S
    assert max(stalls.values()) < GENEROUS_STALL_S


def test_a_recipe_picked_while_stopped_gives_the_location_map_its_taught_picture(qtbot, taught_recipe, store) -> None:
    from inspector.recipe import load_recipe
    from inspector.station import line_thresholds
    from inspector.versions import reference_image, resolve_version

    view = StatisticsView(store)
    qtbot.addWidget(view)
    assert view.insights.reference_bgr is None
    with qtbot.waitSignal(view.recipe_shown, timeout=30_000):
        view.show_recipe_file(taught_recipe)          # read on a worker thread: it imports the engine
    taught = resolve_version(load_recipe(taught_recipe)).path
    qtbot.waitUntil(lambda: view.insights.reference_bgr is not None, timeout=10_000)    # decoded off the GUI thread
    assert np.array_equal(view.insights.reference_bgr, reference_image(taught))
    assert view.insights.model_dir == taught           # the drift's teaching scores too
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.refresh()
    review, fail, _ = line_thresholds(load_recipe(taught_recipe), taught)      # and its thresholds on the chart
    lines = view._threshold_lines
    assert lines["review"].isVisible() and lines["review"].value() == pytest.approx(review)
    assert lines["fail"].isVisible() and lines["fail"].value() == pytest.approx(fail)

    # the station started (set_recipe) before a slow read came back: the running recipe stays the screen's
    view.set_recipe(None)
    view.show_recipe_file(taught_recipe)
    view.set_recipe(None)
    with qtbot.assertNotEmitted(view.recipe_shown, wait=3_000):
        pass
    assert view.insights.reference_bgr is None and view.insights.model_dir is None
    view.set_thresholds(0.5, 0.6)
    with qtbot.waitSignal(view.recipe_shown, timeout=30_000):   # unreadable: said in the log, nothing of another
        view.show_recipe_file(taught_recipe.parent / "missing.yaml")
    with qtbot.waitSignal(view.refreshed, timeout=10_000):
        view.refresh()
    assert view.insights.reference_bgr is None and not lines["review"].isVisible() and not lines["fail"].isVisible()


def test_batch_review_keeps_the_keyboard_on_its_own_buttons(qtbot, tmp_path, part_folder) -> None:
    """Review went off under the reviewer's click and Qt gave the focus to the window's first widget (the toolbar's
    source box), where typing went; Cancel takes it while the review runs, Open report when it is done."""
    from types import SimpleNamespace

    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication, QLineEdit, QVBoxLayout, QWidget

    from inspector.results import Progress
    from ui.review_view import BatchReviewPanel

    release = threading.Event()

    def fake_review(folder, out, *, recipe, zero_shot):
        while not release.is_set():
            yield Progress(done=0, total=0, message="scoring")
            release.wait(0.005)
        return SimpleNamespace(report=out / "index.html", summary_lines=lambda: ["reviewed"])

    window = QWidget()
    toolbar_box = QLineEdit()                                   # stands in for the toolbar's source box
    panel = BatchReviewPanel(recipes=lambda: [tmp_path / "demo.yaml"], run_review=fake_review)
    layout = QVBoxLayout(window)
    layout.addWidget(toolbar_box)
    layout.addWidget(panel)
    qtbot.addWidget(window)
    with qtbot.waitActive(window):
        window.show()
        window.activateWindow()
    panel.folder_edit.setText(str(part_folder))
    try:
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
        assert QApplication.focusWidget() is panel.cancel_button
    finally:
        with qtbot.waitSignal(panel.jobs.stopped, timeout=10_000):
            release.set()
    assert QApplication.focusWidget() is panel.open_button
    qtbot.keyClicks(QApplication.focusWidget(), "x")
    assert toolbar_box.text() == ""
