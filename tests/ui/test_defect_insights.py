"""Defect insights panel: queries off the GUI thread, Pareto and p-chart drawn, alarms raised, charts saved."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pytestqt.qtbot import QtBot

from inspector.results import DefectRegion, InspectionResult, Verdict
from inspector.spc import Alarm
from inspector.statistics import Filters
from inspector.store import Store
from ui.defect_insights import DefectInsightsPanel, save_plot

T0 = 1_790_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "stats.db")
    i = 0
    for lot, n_fail in (("A", 2), ("B", 2), ("C", 2), ("D", 2), ("E", 15)):
        for k in range(50):
            region = DefectRegion(x=10, y=10, width=5, height=5, area_px=20, area_mm2=None, max_score=0.9,
                                  mean_score=0.8, predicted_class="scratch" if k % 2 else "dent")
            failed = k < n_fail
            s.record(InspectionResult(frame_id=i, timestamp=T0 + i, source="cam", recipe="part", model_version="v1",
                                      verdict=Verdict.FAIL if failed else Verdict.PASS, score=0.9 if failed else 0.2,
                                      regions=(region,) if failed else (), lot=lot))
            i += 1
    s.flush()
    yield s
    s.close()


def test_insights_are_computed_off_the_gui_thread_and_raise_the_alarm(qtbot: QtBot, store: Store,
                                                                    tmp_path: Path) -> None:
    threads: list[str] = []
    original = store.engine.connect

    def spy() -> object:
        threads.append(threading.current_thread().name)
        return original()

    store.engine.connect = spy  # type: ignore[method-assign]   # only records which thread queries
    panel = DefectInsightsPanel(store)
    qtbot.addWidget(panel)
    panel.set_reference(np.full((40, 40, 3), 120, np.uint8), (0, 0, 40, 40))
    alarms: list[Alarm] = []
    panel.alarm_raised.connect(alarms.append)
    panel.refresh(Filters(recipe="part"))               # hidden: nothing runs until it is shown
    assert not threads and panel.last is None
    panel.show()
    qtbot.waitUntil(lambda: panel.last is not None, timeout=30_000)
    assert [a.key for a in alarms] == ["E"]
    threads.clear()
    start = time.perf_counter()
    with qtbot.waitSignal(panel.insights_ready, timeout=30_000):
        panel.refresh(Filters(recipe="part"))
        returned_s = time.perf_counter() - start
    assert threads and threading.main_thread().name not in threads     # every query ran on the worker
    assert returned_s < 1.0, "refresh must only start the worker"      # generous: a loaded CI machine
    assert [r.defect_type for r in panel.pareto.rows] == ["dent", "scratch"]
    assert panel.p_chart.chart is not None and [a.key for a in panel.p_chart.chart.alarms] == ["E"]
    assert [a.key for a in alarms] == ["E"] and panel.alarm_list.count() == 1
    assert panel.location.pixmap() is not None and not panel.location.pixmap().isNull()
    assert panel.location.source.size().toTuple() == (40, 40)      # the reference's size
    panel.resize(1200, 500)                      # the picture gets a third of the width, not a thumbnail's
    qtbot.waitUntil(lambda: panel.location.width() > 0.25 * panel.charts.width(), timeout=5_000)
    panel.location.resize(600, 200)              # wide and low: the whole picture, as high as the label
    assert panel.location.pixmap().size().toTuple() == (200, 200)
    panel.location.resize(180, 400)              # narrow and tall: the whole picture, as wide, not cut
    assert panel.location.pixmap().size().toTuple() == (180, 180)

    saved = panel.save_charts(tmp_path / "charts", fmt="svg") + panel.save_charts(tmp_path / "charts", fmt="png")
    assert all(p.stat().st_size > 100 for p in saved)
    assert sorted({p.name for p in saved}) == ["fail_rate.png", "fail_rate.svg", "locations.png", "pareto.png",
                                              "pareto.svg"]
    assert (tmp_path / "charts" / "pareto.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        save_plot(panel.pareto, tmp_path / "x.jpg")

    # a second refresh with the same data publishes no alarm twice
    with qtbot.waitSignal(panel.insights_ready, timeout=30_000):
        panel.refresh(Filters(recipe="part"))
    assert len(alarms) == 1
    panel.shutdown()


def test_the_running_recipe_gives_the_map_its_image_and_the_drift_its_teaching(
    qtbot: QtBot, store: Store, taught_recipe: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inspector.recipe import Roi, load_recipe
    from ui.stats_view import StatisticsView

    recipe = dataclasses.replace(load_recipe(taught_recipe), roi=Roi(rect=(20, 10, 40, 30)))
    view = StatisticsView(store)
    qtbot.addWidget(view)
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[10:40, 20:60] = 200                                   # the ROI's content
    result = InspectionResult(frame_id=1, timestamp=T0, source="cam", recipe="part", model_version="v1",
                              verdict=Verdict.FAIL, score=0.9, image_bgr=frame)
    import ui.stats_view

    decoded_on: list[str] = []
    decode = ui.stats_view.reference_image

    def watched(version_dir: Path) -> np.ndarray | None:       # the real decode, its thread noted
        decoded_on.append(threading.current_thread().name)
        return decode(version_dir)

    monkeypatch.setattr(ui.stats_view, "reference_image", watched)
    view.set_recipe(recipe, "v1")
    assert view.insights.model_dir is not None and view.insights.model_dir.name == "v1"
    view.offer_frame(dataclasses.replace(result, verdict=Verdict.PASS, score=0.1))   # while the picture decodes
    # the version's own picture (a good image it was taught on, reference.png) comes first, at the ROI's place,
    # decoded off the GUI thread
    qtbot.waitUntil(lambda: view.insights.reference_bgr is not None and view.insights.reference_bgr.shape[0] == 84,
                    timeout=10_000)
    assert decoded_on and threading.main_thread().name not in decoded_on
    assert view.insights.reference_bgr.shape == (84, 84, 3)
    assert view.insights.area == (20, 10, 84, 84)
    view.offer_frame(dataclasses.replace(result, verdict=Verdict.PASS, score=0.1))
    assert view.insights.reference_bgr.shape == (84, 84, 3)     # kept: no frame replaces it

    # a version taught before versions kept a picture: the first PASS frame's ROI instead
    (view.insights.model_dir / "reference.png").unlink()
    view.set_recipe(recipe, "v1")
    assert view.insights.reference_bgr is None
    view.offer_frame(result)                                    # a FAIL frame is no reference
    assert view.insights.reference_bgr is None
    view.offer_frame(dataclasses.replace(result, verdict=Verdict.PASS, score=0.1))
    assert view.insights.area == (20, 10, 40, 30)
    assert view.insights.reference_bgr is not None and view.insights.reference_bgr.shape == (30, 40, 3)
    assert int(view.insights.reference_bgr.min()) == 200        # the ROI, not the frame around it
    other = dataclasses.replace(result, verdict=Verdict.PASS, image_bgr=np.full((60, 80, 3), 7, np.uint8))
    view.offer_frame(other)                                     # once per recipe
    assert int(view.insights.reference_bgr.min()) == 200

    # the drift of the store's PASS scores against the taught model's good scores, on screen
    view.show()
    with qtbot.waitSignal(view.insights.insights_ready, timeout=60_000):
        view.insights.refresh(Filters(recipe="part"))
    assert view.insights.drift.text().startswith("good-score drift: "), view.insights.drift.text()
    assert not view.insights.location.pixmap().isNull()         # the map over the reference image

    view.set_recipe(None)                                       # a stand-in without a recipe: whole frame, anew
    assert view.insights.reference_bgr is None and view.insights.model_dir is None
    with qtbot.waitSignal(view.insights.insights_ready, timeout=60_000):
        view.insights.refresh(Filters(recipe="part"))
    assert view.insights.location.pixmap().isNull()             # the other recipe's map is not left on screen
    assert view.insights.location.text().startswith("Defect locations:")
    view.offer_frame(other)
    assert view.insights.area == (0, 0, 80, 60)
    view.close()


def test_choosing_another_p_chart_grouping_redraws_it(qtbot: QtBot, store: Store) -> None:
    panel = DefectInsightsPanel(store)
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.insights_ready, timeout=30_000):
        panel.refresh(Filters(recipe="part"))
    assert panel.p_chart.chart is not None and len(panel.p_chart.chart.points) == 5        # five lots
    with qtbot.waitSignal(panel.insights_ready, timeout=30_000):
        panel.by_box.setCurrentIndex(panel.by_box.findData("shift"))                     # no other click
    shifts = store.yield_summary(group_by="shift", recipe="part")
    assert panel.p_chart.chart is not None
    assert [p.key for p in panel.p_chart.chart.points] == [r.key for r in shifts]
    panel.close()


def test_the_location_map_says_when_its_positions_are_not_places_on_the_part(
    qtbot: QtBot, store: Store, taught_recipe: Path,
) -> None:
    import json

    from inspector.recipe import load_recipe
    from ui.stats_view import StatisticsView

    recipe = load_recipe(taught_recipe)
    view = StatisticsView(store)
    qtbot.addWidget(view)
    view.set_recipe(recipe, "v1")
    qtbot.waitUntil(lambda: view.insights.reference_bgr is not None, timeout=10_000)
    assert view.insights.location_note.isHidden()               # parts taught as they come: frame = part
    manifest_path = view.insights.model_dir / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["state"]["rotations_used"] = True                  # as when the teach step chose turned views
    manifest_path.write_text(json.dumps(manifest))
    view.set_recipe(recipe, "v1")
    qtbot.waitUntil(lambda: not view.insights.location_note.isHidden(), timeout=10_000)
    assert "not where on the part" in view.insights.location_note.text()
    view.set_recipe(None)
    assert view.insights.location_note.isHidden()


def test_the_p_charts_limits_are_steps_per_group_and_the_end_groups_keep_their_names(qtbot: QtBot) -> None:
    """Two lots drew their limits as sloped lines from one lot's to the next, and the view ended at the first and
    last points, where their names did not fit (no label on the axis: seen under Xvfb)."""
    from ui.defect_insights import ControlChartLines, ControlChartPlot

    plot = ControlChartPlot()
    qtbot.addWidget(plot)
    lines = ControlChartLines(value=np.array([0.43, 0.39]), centre=np.array([0.42, 0.42]),
                              ucl=np.array([0.56, 0.70]), lcl=np.array([0.28, 0.14]),
                              alarms=np.array([], np.int64), ticks=[(0, "(no lot)"), (1, "LOT-A7")])
    plot.show_chart(None, lines)
    xs, ys = plot._ucl.getData()
    assert xs.tolist() == [-0.5, 0.5, 1.5] and ys.tolist() == [0.56, 0.70]     # lot 0's limit up to 0.5, then 1's
    (left, right), _ = plot.getViewBox().viewRange()
    assert left <= -0.5 and right >= 1.5


def test_the_p_chart_reads_its_fail_rates_in_per_cent(qtbot: QtBot) -> None:
    """A FAIL rate of 0.6 read "600" on an axis labelled "FAIL rate (x0.001)" (pyqtgraph's own prefix; seen under
    Xvfb): the axis now says per cent, 60."""
    from ui.defect_insights import ControlChartLines, ControlChartPlot

    plot = ControlChartPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 250)
    lines = ControlChartLines(value=np.array([0.63, 0.57]), centre=np.array([0.58, 0.58]),
                              ucl=np.array([0.86, 0.71]), lcl=np.array([0.30, 0.45]),
                              alarms=np.array([], np.int64), ticks=[(0, "(no lot)"), (1, "LOT-A7")])
    plot.show_chart(None, lines)
    plot.show()
    qtbot.waitExposed(plot)
    axis = plot.getAxis("left")
    low, high = plot.getViewBox().viewRange()[1]
    labels = [text for spacing, values in axis.tickValues(low, high, 200)       # as the axis paints them
              for text in axis.tickStrings(values, axis.autoSIPrefixScale * axis.scale, spacing)]
    assert "%" in axis.labelString() and "x0.001" not in axis.labelString()
    assert {"40", "60", "80"} <= set(labels), labels
