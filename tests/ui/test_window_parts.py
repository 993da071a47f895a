"""The parts the main window is built from, on their own: run toolbar settings, footer line, messages."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QWidget

from inspector.controller import RunState, StartFailed, StationSnapshot
from inspector.errors import CaptureError, ModelError, RecipeError, WeightsNotFound
from ui.footer import run_info
from ui.run_toolbar import DEFAULT_OPACITY, RunActions, RunToolbar, make_action
from ui.station_messages import idle_banner, sentence, split_warnings, start_failure


def _toolbar(qtbot, recipes: list[Path], owner: QWidget) -> tuple[RunToolbar, RunActions]:
    """A toolbar whose actions belong to ``owner`` (the window's part; the caller keeps it alive)."""
    qtbot.addWidget(owner)
    toggled: list[bool] = []
    act = {name: make_action(owner, name, None, lambda *args: None) for name in
           ("start", "pause", "stop", "kiosk", "new_lot", "open_folder", "open_video")}
    heatmap = make_action(owner, "Heatmap", "H", toggled.append, checkable=True)
    actions = RunActions(heatmap=heatmap, **act)
    bar = RunToolbar(actions, recipes, owner)
    return bar, actions


def test_toolbar_settings_round_trip_and_survive_a_bad_file(qtbot, tmp_path: Path) -> None:
    recipes = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    owners = [QWidget(), QWidget(), QWidget()]
    bar, actions = _toolbar(qtbot, recipes, owners[0])
    bar.set_source_text("0")
    bar.set_source_text(str(tmp_path / "parts"))
    bar.recipe_box.setCurrentIndex(1)
    bar.opacity_slider.setValue(35)
    actions.heatmap.setChecked(False)
    bar.save(settings)
    settings.sync()

    again, again_actions = _toolbar(qtbot, recipes, owners[1])
    again.restore(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), None)
    assert [again.source_box.itemText(i) for i in range(again.source_box.count())] == ["0", str(tmp_path / "parts")]
    assert again.source_text == str(tmp_path / "parts")
    assert again.current_recipe == recipes[1]
    assert again.opacity_slider.value() == 35 and not again_actions.heatmap.isChecked()

    settings.setValue("station/opacity", "loud")      # a hand-edited file: the default, not a crash
    settings.setValue("station/sources", "1")         # one remembered source comes back as a string
    settings.sync()
    third, _ = _toolbar(qtbot, recipes, owners[2])
    third.restore(settings, "rtsp://cam/1")           # a source given on the command line wins
    assert third.opacity_slider.value() == DEFAULT_OPACITY
    assert third.source_text == "rtsp://cam/1" and third.source_box.findText("1") >= 0
    assert third.current_recipe == recipes[0]         # the remembered recipe applies only without a source


def test_toolbar_recipe_helpers(qtbot, tmp_path: Path) -> None:
    owner = QWidget()
    bar, _ = _toolbar(qtbot, [tmp_path / "a.yaml"], owner)
    changes: list[int] = []
    bar.recipe_box.currentIndexChanged.connect(changes.append)
    assert bar.recipe_index(tmp_path / "b.yaml") == 1 and bar.recipe_box.count() == 2
    bar.select_quietly(tmp_path / "b.yaml")
    assert bar.current_recipe == tmp_path / "b.yaml" and changes == []
    bar.next_recipe()
    assert bar.current_recipe == tmp_path / "a.yaml" and changes == [0]


def test_footer_names_what_runs_or_what_is_selected(tmp_path: Path) -> None:
    running = StationSnapshot(state=RunState.RUNNING, recipe=tmp_path / "bracket.yaml", model_version="v3",
                              device="cpu", source="folder parts")
    text = run_info(running, selected=tmp_path / "other.yaml", source_text="")
    assert text.startswith("Recipe: bracket   ·   model v3   ·   on cpu   ·   Source: ")
    assert text.endswith("State: running")
    stopped = StationSnapshot(state=RunState.STOPPED, recipe=tmp_path / "bracket.yaml")
    assert run_info(stopped, selected=tmp_path / "other.yaml", source_text="") == (
        "Recipe: other (selected)   ·   Source: of the recipe   ·   State: stopped")


def test_an_inspection_names_its_file_or_its_frame(tmp_path: Path) -> None:
    from ui.live_view import frame_origin

    folder = tmp_path / "lot7"
    assert frame_origin(str(folder), 21, str(folder / "burnt" / "050.jpg")) == f"file {Path('burnt', '050.jpg')}"
    assert frame_origin(str(folder), 3, str(tmp_path / "elsewhere.png")).endswith("elsewhere.png")
    assert frame_origin("camera 0", 1234, None) == "frame 1234"


def test_messages_name_the_failure_and_the_state(tmp_path: Path) -> None:
    recipe = tmp_path / "bracket.yaml"
    cases = [(WeightsNotFound("no weights"), "model", "DINOv2 weights missing"),
             (ModelError("no model"), "model", "Model missing for recipe bracket"),
             (RecipeError("bad key"), "recipe", "Recipe problem: bad key"),
             (CaptureError("camera 0 busy"), "camera", "Cannot open the source: camera 0 busy"),
             (OSError("disk"), "source", "Cannot start: OSError: disk")]
    for error, key, start in cases:
        line = start_failure(StartFailed(recipe=recipe, error=error))
        assert line.key == key and line.text.startswith(start), line
    ended = StationSnapshot(state=RunState.SOURCE_ENDED, message="source ended: 6 frames")
    assert idle_banner(ended) == ("SOURCE ENDED", "source ended: 6 frames; F5 to run again")
    assert idle_banner(StationSnapshot(state=RunState.STARTING, message="loading")) == ("STARTING", "loading")
    assert split_warnings(["GPU unavailable: running on CPU", "ROI clipped"]) == (
        "GPU unavailable: running on CPU", "ROI clipped")
    # the fault banner read "... not used by another program?. Check the camera"
    assert sentence("camera 7 could not be opened; is it free?") == "camera 7 could not be opened; is it free?"
    assert sentence("folder gone ") == "folder gone." and sentence("done.") == "done."


def test_region_labels_take_free_places_and_the_worst_defects_keep_theirs() -> None:
    from PySide6.QtCore import QRectF, QSizeF

    from ui.live_view import place_label

    bounds, size = QRectF(0, 0, 400, 300), QSizeF(50, 16)
    first = QRectF(100, 100, 20, 20)
    below = place_label(first, size, [], bounds)
    assert below == QRectF(100, 122, 50, 16)                        # under its box
    near = QRectF(110, 104, 20, 20)                                  # a neighbour: below is taken, above is free
    above = place_label(near, size, [below], bounds)
    assert above is not None and above.bottom() <= near.top() and not above.intersects(below)
    at_edge = place_label(QRectF(390, 290, 8, 8), size, [], bounds)  # pulled back inside the image
    assert at_edge is not None and bounds.contains(at_edge)
    crowd = [QRectF(x, y, 50, 16) for x in range(0, 400, 50) for y in range(0, 300, 16)]
    assert place_label(QRectF(200, 150, 10, 10), size, crowd, bounds) is None   # no free place: no label


def test_a_frames_shared_type_guess_is_written_once_and_a_confirmed_class_always() -> None:
    from inspector.results import DefectRegion
    from ui.live_view import region_labels

    def region(area: int, *, guess: str | None = None, confirmed: str | None = None) -> DefectRegion:
        return DefectRegion(x=0, y=0, width=4, height=4, area_px=area, area_mm2=None, max_score=1.0, mean_score=1.0,
                            defect_class=confirmed, predicted_class=guess, type_confidence=0.8 if guess else None)

    regions = [region(300, guess="burnt"), region(40, guess="burnt"), region(12, guess="unknown"),
               region(9, guess="unknown"), region(30, guess="burnt", confirmed="crack"),
               region(30, guess="burnt", confirmed="crack"), region(20, confirmed=""), region(5)]
    assert region_labels(regions) == ["burnt 80 %", "40 px", "unknown type", "9 px", "crack", "crack", "20 px",
                                      "5 px"]


def test_a_reviewer_picks_from_the_recipes_own_defect_classes(tmp_path: Path) -> None:
    import dataclasses
    import shutil

    from inspector.recipe import load_recipe
    from ui.review_reads import DEFAULT_DEFECT_CLASSES, recipe_defect_classes

    repo = Path(__file__).resolve().parents[2]
    recipe_file = Path(shutil.copy(repo / "recipes" / "fryum_demo.yaml", tmp_path / "fryum_demo.yaml"))
    assert recipe_defect_classes(recipe_file, None) == ("burnt", "crack", "spot", "stuck_together", "other")
    loaded = dataclasses.replace(load_recipe(recipe_file), defect_classes=("chip",))
    assert recipe_defect_classes(recipe_file, loaded) == ("chip",)      # the running model's recipe first
    assert recipe_defect_classes(None, None) == DEFAULT_DEFECT_CLASSES    # a recipe name no file answers to
    recipe_file.write_text("name: [unclosed\n")
    assert recipe_defect_classes(recipe_file, None) == DEFAULT_DEFECT_CLASSES   # broken: the generic classes
    assert recipe_defect_classes(recipe_file, dataclasses.replace(loaded, defect_classes=())) == DEFAULT_DEFECT_CLASSES


def test_the_lot_counter_keeps_an_unnumbered_runs_parts_and_counts_the_next_lot_apart(tmp_path: Path) -> None:
    """An operator who types the lot number after the first parts keeps them in the lot (they were its parts,
    recorded without a number); typing the next lot's number starts its counters afresh and says how the last
    one ended; the number is on disk as soon as it is typed; the same number again changes nothing."""
    from inspector.recording import ResultRecorder
    from inspector.results import Verdict
    from ui.lot import LotCounter

    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    counter = LotCounter(ResultRecorder(None, count_lot=True), settings)
    assert counter.restore("") == ("", "") and counter.counts.inspected == 0
    for verdict in (Verdict.PASS, Verdict.PASS, Verdict.FAIL):
        counter.add(verdict)
    assert counter.set_number(" A-1 ") == ("Lot A-1: the counters go on from 3 inspected (recorded without a lot "
                                          "number); New lot (Ctrl+N) starts them afresh")
    assert counter.counts.inspected == 3 and "lot=A-1" in (tmp_path / "s.ini").read_text()
    assert counter.set_number("A-1") is None
    counter.add(Verdict.REVIEW)
    told = counter.set_number("A-2")
    assert told == "Lot A-2: the counters start afresh (lot A-1 ended at 4 inspected, 50.0 % yield)"
    assert counter.counts.inspected == 0 and counter.number == "A-2"
    assert counter.set_number("") == "Lot: (none)"
