"""The main window end to end: real pipeline, real folder replay, a stand-in inspector (conftest.py)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt

from inspector.capture import ArraySource
from inspector.defect_typing import PendingTyping
from inspector.errors import ModelError
from inspector.results import Verdict
from tests.ui.conftest import DarkSpotInspector, FlakyCamera, open_window, stub_recipes
from ui.main_window import MainWindow, RunState

WAIT_MS = 15_000       # generous upper bound for a loaded 2-core CI machine; tests finish far sooner


_recipes = stub_recipes
_window = open_window


def test_folder_replay_updates_banner_counters_and_strip(qtbot, tmp_path, settings, part_folder) -> None:
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": DarkSpotInspector("demo")},
                     source=str(part_folder))
    window.start()
    qtbot.waitUntil(lambda: window.counts.inspected == 6 and window.state == RunState.SOURCE_ENDED,
                    timeout=WAIT_MS)

    assert (window.counts.passed, window.counts.failed, window.counts.review) == (4, 2, 0)
    strip = "".join(v.value[0] for v in window.station.strip.verdicts)
    assert strip == "PPFPFP"
    # the last part passed, but nothing is inspected now: no green PASS stays up
    assert window.station.banner.verdict_text == "SOURCE ENDED"
    assert window.station.banner.state == "IDLE"
    assert "6 frames inspected" in window.station.banner.detail_text
    # the last frame stays greyed out (or, when the end came before its result was painted, none is shown)
    heatmap = window.station.heatmap
    assert heatmap.result is None or heatmap.stale.startswith("SOURCE ENDED")
    qtbot.waitUntil(lambda: window.station.yield_panel.value("yield") == "66.7 %", timeout=WAIT_MS)
    assert window.station.yield_panel.value("failed") == "2"
    assert window.pipeline is None                                 # joined once the source drained
    window.close()


def test_fail_shows_regions_and_red_banner(qtbot, tmp_path, settings, part_images) -> None:
    bad = [image for name, image in part_images if "bad" in name][:1]
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": DarkSpotInspector("demo")},
                     source="memory", open_source=lambda text: ArraySource(bad, name="memory", loop=True, fps=20))
    window.start()
    qtbot.waitUntil(lambda: window.counts.inspected >= 1, timeout=WAIT_MS)
    assert window.station.banner.state == Verdict.FAIL
    assert "1 defect" in window.station.banner.detail_text
    assert window.station.heatmap.result.regions, "a FAIL of the stand-in inspector has a region"
    pixmap = window.station.heatmap.grab()                         # paints: converts the newest result
    assert not pixmap.isNull()
    window.close()


def test_switch_recipe_mid_run(qtbot, tmp_path, settings, part_images) -> None:
    images = [image for _, image in part_images]
    first, second = DarkSpotInspector("demo"), DarkSpotInspector("other", version="v7")
    window = _window(qtbot, settings, _recipes(tmp_path, "demo", "other"), {"demo": first, "other": second},
                     source="memory",
                     open_source=lambda text: ArraySource(images, name="memory", loop=True, fps=100))
    window.start()
    qtbot.waitUntil(lambda: window.counts.inspected >= 3, timeout=WAIT_MS)
    window.recipe_box.setCurrentIndex(1)
    qtbot.waitUntil(lambda: second.calls >= 2, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.station.heatmap.result.recipe == "other", timeout=WAIT_MS)
    assert window.state == RunState.RUNNING
    assert "model v7" in window.station.info.text()
    window.stop()
    qtbot.waitUntil(lambda: window.state == RunState.STOPPED, timeout=WAIT_MS)
    assert window.pipeline is None
    assert window.station.banner.verdict_text == "STOPPED"
    window.close()


def test_camera_lost_banner_and_reconnect(qtbot, tmp_path, settings, part_images) -> None:
    before = set(threading.enumerate())
    camera = FlakyCamera([image for _, image in part_images], good_frames=3)
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": DarkSpotInspector("demo")},
                     source="0", open_source=lambda text: camera)
    window.start()
    qtbot.waitUntil(lambda: "camera" in window.station.faults.faults(), timeout=WAIT_MS)
    assert "Camera lost" in window.station.faults.faults()["camera"]
    assert "reconnecting" in window.station.faults.faults()["camera"]
    assert window.station.faults.isVisible()
    assert window.state == RunState.RUNNING
    camera.replug()
    qtbot.waitUntil(lambda: "camera" not in window.station.faults.faults(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.counts.inspected >= 5, timeout=WAIT_MS)
    window.close()
    assert window.pipeline is None
    engine = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("inspector-")]
    assert engine == [], f"engine threads left after close: {engine}"


def test_model_missing_banner(qtbot, tmp_path, settings, part_folder) -> None:
    missing = ModelError("recipe 'demo' has no trained model in models/demo; run 'inspector train' first")
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": missing}, source=str(part_folder))
    window.start()
    qtbot.waitUntil(lambda: "model" in window.station.faults.faults(), timeout=WAIT_MS)
    assert "Model missing for recipe demo" in window.station.faults.faults()["model"]
    assert "Teach" in window.station.faults.faults()["model"]
    assert window.state == RunState.FAULT
    window.close()


def test_untaught_recipe_shows_model_missing_with_the_real_loader(qtbot, tmp_path, settings,
                                                                   part_folder) -> None:
    from tests.conftest import write_recipe

    recipe = write_recipe(tmp_path / "recipes", tmp_path / "weights.safetensors", name="untaught")
    window = MainWindow(recipes=[recipe], source=str(part_folder), settings=settings)   # real Station.load
    qtbot.addWidget(window)
    window.start()
    # the first Station.load imports torch on the job thread: slow on a busy 2-core machine
    qtbot.waitUntil(lambda: window.state == RunState.FAULT, timeout=90_000)
    faults = window.station.faults.faults()
    assert "Model missing for recipe untaught" in faults.get("model", ""), faults
    window.close()


def test_broken_recipe_file_is_named(qtbot, tmp_path, settings, part_folder) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nthresholds: {fail: high}\n", encoding="utf-8")
    window = MainWindow(recipes=[broken], source=str(part_folder), settings=settings)
    qtbot.addWidget(window)
    window.start()
    qtbot.waitUntil(lambda: window.state == RunState.FAULT, timeout=WAIT_MS)
    assert "broken.yaml" in window.station.faults.faults().get("recipe", ""), window.station.faults.faults()
    window.close()


def test_gpu_unavailable_banner(qtbot, tmp_path, settings, part_folder) -> None:
    inspector = DarkSpotInspector("demo", warnings=("GPU unavailable: running on CPU",))
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": inspector},
                     source=str(part_folder))
    with qtbot.waitSignal(window.engine_loaded, timeout=WAIT_MS):   # the app's collector freezes the engine then
        window.start()
    qtbot.waitUntil(lambda: "gpu" in window.station.faults.faults(), timeout=WAIT_MS)
    assert window.station.faults.faults()["gpu"] == "GPU unavailable: running on CPU"
    qtbot.waitUntil(lambda: window.state == RunState.SOURCE_ENDED, timeout=WAIT_MS)
    window.close()


def test_keyboard_shortcuts(qtbot, tmp_path, settings, part_images) -> None:
    images = [image for _, image in part_images]
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": DarkSpotInspector("demo")},
                     source="memory",
                     open_source=lambda text: ArraySource(images, name="memory", loop=True, fps=100))
    with qtbot.waitActive(window):
        window.activateWindow()
    qtbot.keyClick(window, Qt.Key.Key_F5)
    qtbot.waitUntil(lambda: window.state == RunState.RUNNING and window.counts.inspected > 0, timeout=WAIT_MS)
    qtbot.keyClick(window, Qt.Key.Key_Space)
    assert window.state == RunState.PAUSED
    assert window.station.banner.verdict_text == "PAUSED"
    qtbot.keyClick(window, Qt.Key.Key_Space)
    assert window.state == RunState.RUNNING
    assert window.station.heatmap.heatmap_visible
    qtbot.keyClick(window, Qt.Key.Key_H)
    assert not window.station.heatmap.heatmap_visible
    opacity = window.station.heatmap.opacity
    qtbot.keyClick(window, Qt.Key.Key_BracketLeft)
    assert window.station.heatmap.opacity == pytest.approx(opacity - 0.1)
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert window.state == RunState.RUNNING                  # the first Esc only asks
    assert "stop" in window.station.faults.faults()
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: window.state == RunState.STOPPED, timeout=WAIT_MS)
    qtbot.keyClick(window, Qt.Key.Key_F11)
    assert window.act_kiosk.isChecked() and not window.toolbar.isVisible()
    qtbot.keyClick(window, Qt.Key.Key_F11)
    assert not window.act_kiosk.isChecked() and window.toolbar.isVisible()
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.counts.inspected == 0
    window.close()


def test_window_layout_and_choices_are_remembered(qtbot, tmp_path, settings) -> None:
    recipes = _recipes(tmp_path, "demo", "other")
    inspectors = {"demo": DarkSpotInspector("demo"), "other": DarkSpotInspector("other")}
    window = _window(qtbot, settings, recipes, inspectors)
    window.resize(720, 540)
    window.set_source_text(str(tmp_path))
    window.recipe_box.setCurrentIndex(1)
    window.opacity_slider.setValue(30)
    window.act_heatmap.setChecked(False)
    size = window.size()                  # the toolbar may hold the width above what was asked
    window.close()

    again = _window(qtbot, QSettings(settings.fileName(), QSettings.Format.IniFormat), recipes, inspectors)
    assert again.source_box.currentText() == str(tmp_path)
    assert again.current_recipe == recipes[1]
    assert again.opacity_slider.value() == 30
    assert not again.act_heatmap.isChecked()
    assert again.size() == size
    again.close()


def test_start_without_source_says_what_to_do(qtbot, tmp_path, settings) -> None:
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": DarkSpotInspector("demo")})
    window.source_box.setCurrentText("")
    window.start()                       # empty: the recipe's source, but the stand-in has no recipe
    qtbot.waitUntil(lambda: "camera" in window.station.faults.faults(), timeout=WAIT_MS)
    assert window.state == RunState.FAULT
    assert "no source: type a camera index" in window.station.faults.faults()["camera"]
    window.close()


def test_bad_source_text_is_reported(qtbot, tmp_path, settings) -> None:
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": DarkSpotInspector("demo")},
                     source=str(tmp_path / "no-such-folder"))
    window.start()
    qtbot.waitUntil(lambda: "camera" in window.station.faults.faults(), timeout=WAIT_MS)
    assert "no-such-folder" in window.station.faults.faults()["camera"]
    assert window.state == RunState.FAULT
    window.close()


def test_heatmap_paints_overlay(qtbot, part_images) -> None:
    from ui.live_view import HeatmapView

    view = HeatmapView()
    qtbot.addWidget(view)
    view.resize(224, 224)
    inspector = DarkSpotInspector()
    bad = next(image for name, image in part_images if "bad" in name)
    view.set_heat_range(0.15, 0.45)
    view.show_result(inspector.inspect_image(bad))
    with_heat = view.grab().toImage()
    view.set_heatmap_visible(False)
    without = view.grab().toImage()
    assert with_heat != without
    arr = np.array([with_heat.pixelColor(x, 112).red() for x in range(224)])
    assert arr.max() > 0


def test_an_unreadable_part_says_so_where_its_image_would_be(qtbot, part_images) -> None:
    """An unreadable file mid-run left the image area saying "No image yet: choose a source and press Start
    (F5)" beside the ERROR banner (seen under Xvfb), as if the station had never run; so did a run waiting for
    its first part."""
    from inspector.results import InspectionResult, Verdict
    from ui.live_view import HeatmapView
    from ui.station_view import StationView

    station = StationView()
    qtbot.addWidget(station)
    station.show_idle("RUNNING", "waiting for the first part")    # it said "choose a source and press Start"
    assert station.heatmap.empty_text() == "No image yet: waiting for the first part"
    view = HeatmapView()
    qtbot.addWidget(view)
    assert view.empty_text().startswith("No image yet")
    view.show_result(DarkSpotInspector().inspect_image(part_images[0][1]))
    view.grab()
    error = "parts/003.png: not a decodable image (13 bytes)"
    view.show_result(InspectionResult(frame_id=3, timestamp=3.0, source="parts", recipe="demo", model_version="v1",
                                      verdict=Verdict.ERROR, score=None, error=error))
    view.grab()
    assert view.empty_text() == f"No image of this part: {error}"


class _Broken(DarkSpotInspector):
    """A stand-in inspector whose every third frame fails, as a model can (e.g. out of memory)."""

    def inspect(self, frame):
        if frame.frame_id % 3 == 2:
            msg = "CUDA out of memory (stand-in)"
            raise RuntimeError(msg)
        return super().inspect(frame)


def test_inspection_errors_show_an_error_banner_and_count(qtbot, tmp_path, settings, part_folder) -> None:
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": _Broken("demo")},
                     source=str(part_folder))
    window.start()
    qtbot.waitUntil(lambda: window.state == RunState.SOURCE_ENDED and window.counts.inspected == 6,
                    timeout=WAIT_MS)
    assert window.counts.errors == 2
    assert "E" in "".join(v.value[0] for v in window.station.strip.verdicts)
    qtbot.waitUntil(lambda: window.station.yield_panel.value("errors") == "2", timeout=WAIT_MS)
    window.close()


def test_error_banner_says_why(qtbot) -> None:
    from inspector.results import InspectionResult
    from ui.live_view import VerdictBanner

    banner = VerdictBanner()
    qtbot.addWidget(banner)
    banner.show_result(InspectionResult(
        frame_id=2, timestamp=0.0, source="x", recipe="demo", model_version="v1", verdict=Verdict.ERROR,
        score=None, error="inspection of frame 2 failed: CUDA out of memory",
    ))
    assert banner.verdict_text == "ERROR" and banner.state == "ERROR"
    assert banner.detail_text == "inspection of frame 2 failed: CUDA out of memory"


class _TypedLater(DarkSpotInspector):
    """A stand-in that, like `inspector.station.Station`, can leave a flagged frame's typing for after it is shown."""

    can_defer_typing = True

    def __init__(self) -> None:
        super().__init__("demo")
        self.release = threading.Event()      # the typer waits for the test

    def inspect(self, frame, *, defer_typing: bool = False):
        result = super().inspect(frame)
        if not defer_typing or not result.regions:
            return result

        def work():
            assert self.release.wait(WAIT_MS / 1000)
            return tuple(dataclasses.replace(r, predicted_class="burnt", type_confidence=0.9) for r in result.regions)

        return dataclasses.replace(result, typing=PendingTyping(work, result.regions))


def test_a_fail_is_shown_at_once_and_its_defect_types_follow(qtbot, tmp_path, settings, part_images) -> None:
    bad = [image for name, image in part_images if "bad" in name][:1]
    inspector = _TypedLater()
    window = _window(qtbot, settings, _recipes(tmp_path, "demo"), {"demo": inspector},
                     source="memory", open_source=lambda text: ArraySource(bad, name="memory"))
    window.start()
    qtbot.waitUntil(lambda: window.counts.inspected >= 1, timeout=WAIT_MS)
    heatmap = window.station.heatmap
    assert window.station.banner.state == Verdict.FAIL and heatmap.result.regions    # before the types
    assert {r.predicted_class for r in heatmap.result.regions} == {None}
    untyped = heatmap.grab().toImage()
    inspector.release.set()
    qtbot.waitUntil(lambda: {r.predicted_class for r in heatmap.result.regions} == {"burnt"}, timeout=WAIT_MS)
    assert heatmap.grab().toImage() != untyped            # the box's label now reads the type
    assert window.counts.inspected == 1 and window.counts.failed == 1       # counted once, not again when typed
    window.close()


def test_types_that_come_after_a_newer_frame_do_not_replace_it(qtbot, part_images) -> None:
    from ui.live_view import HeatmapView

    view = HeatmapView()
    qtbot.addWidget(view)
    bad = next(image for name, image in part_images if "bad" in name)
    old = DarkSpotInspector().inspect_image(bad, frame_id=1, timestamp=1.0)
    new = DarkSpotInspector().inspect_image(bad, frame_id=2, timestamp=2.0)
    typed = dataclasses.replace(old, regions=tuple(dataclasses.replace(r, predicted_class="burnt")
                                                   for r in old.regions))
    view.show_result(old)
    view.show_result(new)
    view.show_types(typed)
    assert view.result is not None and view.result.frame_id == 2
    assert {r.predicted_class for r in view.result.regions} == {None}
    view.grab()                                           # painted: the shown frame's types arrive after
    view.show_types(dataclasses.replace(new, regions=typed.regions))
    assert view.result.frame_id == 2 and {r.predicted_class for r in view.result.regions} == {"burnt"}


def test_picking_a_recipe_while_stopped_shows_its_location_picture_on_statistics(qtbot, tmp_path, settings,
                                                                                   taught_recipe) -> None:
    other = stub_recipes(tmp_path, "other")[0]
    window = MainWindow(recipes=[other, taught_recipe], settings=settings)
    qtbot.addWidget(window)
    window.show()
    assert window.state is RunState.READY and window.statistics.insights.reference_bgr is None
    with qtbot.waitSignal(window.statistics.recipe_shown, timeout=30_000):
        window.select_recipe(taught_recipe)
    qtbot.waitUntil(lambda: window.statistics.insights.reference_bgr is not None, timeout=10_000)
    window.close()

    alone = MainWindow(recipes=[taught_recipe], settings=settings)      # the one recipe, shown from the start
    qtbot.addWidget(alone)
    qtbot.waitUntil(lambda: alone.statistics.insights.reference_bgr is not None, timeout=30_000)
    alone.close()
