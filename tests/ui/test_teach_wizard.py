"""The teaching flow, page by page, on real recipe files with a stand-in engine (no torch here)."""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PySide6.QtCore import Qt

from inspector.capture import image_files, load_image
from inspector.recipe import edit_recipe_file, load_recipe, save_recipe
from inspector.results import Progress, Verdict
from tests.conftest import write_recipe
from tests.ui.conftest import FAIL, PIXEL, REVIEW, DarkSpotInspector, make_part
from ui.teach_wizard import TeachEngine, TeachWizard


def _folder(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return folder


@pytest.fixture
def teach_setup(tmp_path: Path):
    rng = np.random.default_rng(0)
    good = _folder(tmp_path / "good", [make_part(rng, defect=False) for _ in range(8)])
    bad = _folder(tmp_path / "bad", [make_part(rng, defect=True) for _ in range(3)])
    recipe = write_recipe(tmp_path / "recipes", tmp_path / "weights.safetensors", name="part")
    saved: list[tuple[str, float, float]] = []
    release = threading.Event()
    release.set()

    def fake_teach(recipe, good_images, *, defects=None) -> Generator[Progress, None, SimpleNamespace]:
        """Stands in for inspector.teach.teach: scores with the numpy stand-in inspector, saves nothing."""
        inspector = DarkSpotInspector(recipe.name)
        scores = []
        for i, image in enumerate(good_images, 1):
            scores.append(inspector.inspect_image(image).score)
            yield Progress(done=i, total=len(good_images), message="learning good parts")
        while not release.is_set():          # a long fit: each tick is a place to cancel
            yield Progress(done=0, total=0, message="fitting")
            release.wait(0.01)
        bad_files = image_files(defects) if defects else []
        bad_scores = [inspector.inspect_image(load_image(p)).score for p in bad_files]
        lines = [f"recipe {recipe.name}: saved model v1", f"roi {recipe.roi}"]
        return SimpleNamespace(
            recipe=recipe.name, version="v1",
            thresholds=SimpleNamespace(review=REVIEW, fail=FAIL, pixel=PIXEL),
            good_scores=np.array(scores, np.float32), defect_scores=np.array(bad_scores, np.float32),
            summary_lines=lambda: lines,
        )

    def fake_save_thresholds(recipe, version, *, review, fail) -> str:
        saved.append((version, review, fail))
        return "v2"

    engine = TeachEngine(
        load_recipe=load_recipe, save_recipe=save_recipe, edit_recipe_file=edit_recipe_file, teach=fake_teach,
        save_thresholds=fake_save_thresholds,
        load_station=lambda recipe, version: DarkSpotInspector(recipe.name, version=version),
        load_image=load_image, image_files=image_files,
    )
    return SimpleNamespace(good=good, bad=bad, recipe=recipe, engine=engine, saved=saved, release=release)


def test_teach_flow_roi_train_check_adjust_save(qtbot, teach_setup) -> None:
    s = teach_setup
    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
    qtbot.addWidget(wizard)
    wizard.show()
    taught: list[tuple[Path, str]] = []
    wizard.taught.connect(lambda path, version: taught.append((path, version)))

    wizard.next()                                           # recipe page -> images
    assert wizard.currentPage() is wizard.images_page
    wizard.next()                                           # nothing chosen: stays, says why
    assert wizard.currentPage() is wizard.images_page
    assert "Choose a folder" in wizard.images_page.summary.text()
    wizard.images_page.good_edit.setText(str(s.good))
    wizard.images_page.bad_edit.setText(str(s.bad))
    wizard.images_page.holdout.setValue(2)
    wizard.next()
    assert wizard.currentPage() is wizard.roi_page
    editor = wizard.roi_page.editor
    editor.resize(224, 224)
    editor.set_roi((8, 8, 96, 96))
    assert "96 × 96" in wizard.roi_page.label.text()
    wizard.next()                                           # train: runs in the worker thread
    assert wizard.currentPage() is wizard.train_page
    message = wizard.train_page.message
    qtbot.waitUntil(lambda: wizard.train_page.isComplete() or "failed" in message.text(), timeout=15_000)
    assert wizard.train_page.isComplete(), message.text()
    assert load_recipe(s.recipe).roi is None, "the recipe file is written on Save only"
    assert wizard.outcome.recipe.roi.rect == (8, 8, 96, 96), "taught with the ROI drawn"
    outcome = wizard.outcome
    assert len(outcome.held_out) == 2 and len(outcome.known_bad) == 3
    assert len(outcome.good_scores) == 8                    # 6 taught (leave-one-out) + 2 held out

    wizard.next()
    check = wizard.check_page
    assert check.count("good", Verdict.PASS) == 8 and check.count("bad", Verdict.FAIL) == 3
    assert len(check.tiles) == 5
    calls = DarkSpotInspector.total_calls
    check.fail_slider.setValue(check.fail_slider.maximum())  # nothing FAILs any more: all bad become REVIEW
    assert check.count("bad", Verdict.FAIL) == 0 and check.count("bad", Verdict.REVIEW) == 3
    check.review_slider.setValue(check.review_slider.maximum())
    assert check.count("bad", Verdict.PASS) == 3
    check.set_thresholds(0.3, 0.6)
    assert wizard.review == pytest.approx(0.3, abs=1e-9) and wizard.fail == pytest.approx(0.6, abs=1e-9)
    assert DarkSpotInspector.total_calls == calls                # re-scored from cached scores, no inference

    wizard.next()
    assert wizard.currentPage() is wizard.save_page and not wizard.save_page.isComplete()
    wizard.save_page.save()
    qtbot.waitUntil(wizard.save_page.isComplete, timeout=10_000)
    assert s.saved == [("v1", pytest.approx(0.3), pytest.approx(0.6))]
    assert load_recipe(s.recipe).roi.rect == (8, 8, 96, 96), "Save writes the ROI drawn into the recipe"
    wizard.accept()
    assert taught == [(s.recipe, "v2")]


def test_training_can_be_cancelled(qtbot, teach_setup) -> None:
    s = teach_setup
    s.release.clear()                                       # the fake fit runs until cancelled
    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.next()
    wizard.images_page.good_edit.setText(str(s.good))
    wizard.next()
    wizard.next()
    qtbot.waitUntil(lambda: "fitting" in wizard.train_page.message.text(), timeout=10_000)
    assert not wizard.back_allowed, "Back is hidden while training"
    with qtbot.waitSignal(wizard.jobs.stopped, timeout=10_000):
        wizard.train_page.cancel_button.click()
    assert "cancelled" in wizard.train_page.message.text()
    assert not wizard.train_page.isComplete() and wizard.outcome is None
    assert wizard.back_allowed


def test_new_recipe_needs_a_free_name(qtbot, teach_setup) -> None:
    s = teach_setup
    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
    qtbot.addWidget(wizard)
    page = wizard.recipe_page
    page.new_check.setChecked(True)
    page.new_name.setText("part")
    assert not page.validatePage()
    assert "part.yaml already exists" in page.error.text()
    page.new_name.setText("part_b")
    assert page.validatePage()
    assert not s.recipe.with_name("part_b.yaml").exists(), "nothing is written before Save"
    assert wizard.recipe.name == "part_b"


def test_new_recipe_is_written_on_save_with_comments_and_mode_and_cancel_leaves_no_file(
        qtbot, teach_setup) -> None:
    import os
    import stat

    from inspector.recipe import ModelSettings, Thresholds

    s = teach_setup
    text = s.recipe.read_text(encoding="utf-8").replace(
        "model: {directory: models}",
        "model: {directory: models, version: v2}   # pinned after a trial\nthresholds: {review: 0.3, fail: 0.6}\n"
        "archive: {directory: kept, save_pass_every: 10}")
    s.recipe.write_text("# the part recipe, commented by its engineer\n" + text + "# checked on the line\n",
                        encoding="utf-8")
    os.chmod(s.recipe, 0o644)
    target = s.recipe.with_name("part_b.yaml")

    def teach_new(finish: bool) -> TeachWizard:
        wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
        qtbot.addWidget(wizard)
        wizard.show()
        wizard.recipe_page.new_check.setChecked(True)
        wizard.recipe_page.new_name.setText("part_b")
        wizard.recipe_page.new_product.setText("Part B (4711-300)")
        wizard.next()
        wizard.images_page.good_edit.setText(str(s.good))
        wizard.next()
        wizard.next()
        qtbot.waitUntil(wizard.train_page.isComplete, timeout=15_000)
        wizard.next()
        wizard.next()
        assert wizard.currentPage() is wizard.save_page and not wizard.save_page.isComplete()
        # where it is written, in full: the engineer knows which file to open, copy or put under version control
        assert f"writes the new recipe into {target}" in wizard.save_page.message.text()
        if finish:
            wizard.save_page.save()
            qtbot.waitUntil(wizard.save_page.isComplete, timeout=10_000)
            assert wizard.save_page.message.text().startswith(f"Saved: recipe {target}, model v1")
        return wizard

    cancelled = teach_new(finish=False)
    cancelled.reject()                                      # closed at the last step without Save
    assert not target.exists(), "teaching Cancel leaves no recipe file"

    saved = teach_new(finish=True)
    assert target.exists()
    new = load_recipe(target)
    assert new.name == "part_b" and new.product == "Part B (4711-300)"
    # the other product's model folder, pinned version, thresholds and archive folder are not taken (the new recipe
    # taught into the other's folder, and asked for a version it never taught); its other settings are
    assert new.model == ModelSettings() and new.thresholds == Thresholds()
    assert new.archive.directory is None and new.archive.save_pass_every == 10
    assert saved.recipe is not None and saved.recipe.model == new.model and saved.recipe.thresholds == Thresholds()
    assert new.model_dir() != load_recipe(s.recipe).model_dir()
    written = target.read_text(encoding="utf-8")
    # the opening comment spoke of the other product: one line says where the new one came from; the rest stay
    assert written.startswith("# Made from part.yaml") and "commented by its engineer" not in written
    assert "# checked on the line" in written
    assert "pinned after a trial" not in written
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    saved.accept()


def test_all_but_one_good_image_can_be_held_out(qtbot, teach_setup) -> None:
    """One image is enough to teach (models.detectors.one_shot): the rest can all check it."""
    s = teach_setup
    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.next()
    wizard.images_page.good_edit.setText(str(s.good))            # 8 good images
    wizard.images_page.holdout.setValue(20)                       # more than there are: all but one
    wizard.next()
    wizard.next()
    qtbot.waitUntil(wizard.train_page.isComplete, timeout=15_000)
    assert len(wizard.outcome.held_out) == 7
    # the good set: the seven held out; the one taught image's scores are of its own regions (fake_teach: one)
    held = [r.score for r in wizard.outcome.held_out]
    np.testing.assert_array_equal(wizard.outcome.good_scores, np.asarray(held, np.float32))
    wizard.next()
    assert wizard.check_page.count("good", Verdict.PASS) + wizard.check_page.count("good", Verdict.REVIEW) \
        + wizard.check_page.count("good", Verdict.FAIL) == 7
    good_title, bad_title = wizard.check_page.side_titles
    assert not good_title.isHidden() and bad_title.isHidden(), "no known-bad images: no 'Known-bad' column title"


def test_a_folder_of_one_good_image_is_taught_and_an_empty_one_is_refused(qtbot, teach_setup, tmp_path: Path) -> None:
    s = teach_setup
    one = tmp_path / "one"
    one.mkdir()
    (one / "000.png").write_bytes((s.good / "000.png").read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.next()
    wizard.images_page.good_edit.setText(str(empty))
    wizard.next()
    assert wizard.currentPage() is wizard.images_page
    assert "no image found" in wizard.images_page.summary.text()
    wizard.images_page.good_edit.setText(str(one))
    wizard.next()                                                 # holdout 3 asked: none left to hold out
    wizard.next()
    qtbot.waitUntil(wizard.train_page.isComplete, timeout=15_000)
    assert len(wizard.outcome.held_out) == 0 and len(wizard.outcome.good_scores) == 0
    wizard.next()                                                 # the check page with nothing to check
    assert wizard.currentPage() is wizard.check_page and not wizard.check_page.tiles
    assert all(wizard.check_page.count(row, v) == 0 for row in ("good", "bad")
               for v in (Verdict.PASS, Verdict.REVIEW, Verdict.FAIL))
    assert all(title.isHidden() for title in wizard.check_page.side_titles)


def test_capture_good_frames_from_the_live_source(qtbot, teach_setup) -> None:
    from inspector.capture import ArraySource

    s = teach_setup
    rng = np.random.default_rng(0)
    frames = [make_part(rng, defect=False) for _ in range(3)]
    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine, source_text="0",
                         open_source=lambda text: ArraySource(frames, name=f"camera {text}", loop=True))
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.next()
    page = wizard.images_page
    assert page.source_edit.text() == "0"
    page.capture_count.setValue(5)
    with qtbot.waitSignal(wizard.jobs.stopped, timeout=10_000):
        page.capture_button.click()
    assert len(wizard.captured) == 5 and "Captured 5 frames" in page.summary.text()
    page.holdout.setValue(1)
    wizard.next()
    assert wizard.currentPage() is wizard.roi_page and wizard.first_frame is wizard.captured[0]
    wizard.next()
    qtbot.waitUntil(wizard.train_page.isComplete, timeout=15_000)
    assert len(wizard.outcome.held_out) == 1 and len(wizard.outcome.good_scores) == 5


def test_good_images_from_a_zero_shot_review(qtbot, teach_setup, tmp_path: Path, tiny_weights_file: Path) -> None:
    """The Images step takes a zero-shot review's lowest-scoring PASS images, listed before teaching."""
    import json

    from inspector.review import JOURNAL_NAME, review
    from inspector.teach import run_to_end
    from models.detectors.zero_shot import ZeroShotConfig

    s = teach_setup
    lot = tmp_path / "lot"
    lot.mkdir()
    for folder in (s.good, s.bad):
        for file in folder.iterdir():
            (lot / f"{folder.name}_{file.name}").write_bytes(file.read_bytes())
    out = tmp_path / "review"
    run_to_end(review(lot, out, zero_shot=True, device="cpu", weights=tiny_weights_file,
                      zero_shot_config=ZeroShotConfig(shorter_side=84)))
    records = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()[1:]]
    lowest = [name for _, name in sorted((r["score"], r["file"]) for r in records if r["verdict"] == "PASS")]
    assert len(lowest) >= 5

    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.next()
    page = wizard.images_page
    assert page.review_count.value() == 8, "the CLI's --count default"
    page.review_edit.setText(str(tmp_path))
    page.review_edit.editingFinished.emit()           # read on the job thread: a big journal takes seconds
    qtbot.waitUntil(lambda: "not a review folder" in page.summary.text() and not wizard.jobs.running)
    page.review_edit.setText(str(out))
    (lot / lowest[3]).write_bytes(b"not an image any more")   # damaged since the review
    page.review_count.setValue(4)                      # lists the choice before Next
    qtbot.waitUntil(lambda: page.review_choice is not None and not wizard.jobs.running)
    thumbs = [page.review_list.item(i) for i in range(page.review_list.count())]
    assert page.review_list.isVisible() and len(thumbs) == 4, "the choice as thumbnails, to look at"
    assert all(t.checkState() == Qt.CheckState.Checked for t in thumbs)
    assert [t.icon().isNull() for t in thumbs] == [False, False, False, True]
    scores = [score for _, score in page.review_choice.chosen]
    expected = [[f"{v:.4f}", n] for v, n in zip(scores[:3], lowest[:3], strict=True)]
    assert [t.text().splitlines() for t in thumbs] == [*expected, [lowest[3], "(unreadable)"]], "score, then the file"
    assert all(t.toolTip().startswith(f"{lot / n}\n") for t, n in zip(thumbs, lowest[:4], strict=True))
    assert max(page.review_choice.thumbs[0].shape[:2]) <= 200
    assert "lowest-scoring PASS image(s) of the zero-shot review" in page.summary.text()
    page.review_count.blockSignals(True)
    page.review_count.setValue(3)                      # a count not read yet: Next reads it first
    page.review_count.blockSignals(False)
    wizard.next()
    assert wizard.currentPage() is page
    qtbot.waitUntil(lambda: page.review_choice is not None and not wizard.jobs.running)
    assert [p.name for p, _ in page.review_choice.chosen] == lowest[:3]
    page.review_count.setValue(5)                      # typed on while a read runs: the last value is read
    page.review_count.setValue(3)
    qtbot.waitUntil(lambda: page.review_choice is not None and not wizard.jobs.running)
    assert page.review_choice.count == 3 and "Another job" not in page.summary.text()
    page.good_edit.setText(str(s.good))
    wizard.next()
    assert wizard.currentPage() is page and "not both" in page.summary.text()
    page.good_edit.clear()
    page.holdout.setValue(1)
    for i in range(3):                                 # nothing ticked: nothing to teach from
        page.review_list.item(i).setCheckState(Qt.CheckState.Unchecked)
    wizard.next()
    assert wizard.currentPage() is page and "tick at least one" in page.summary.text()
    assert all(page.review_list.item(i).text().endswith("left out") for i in range(3)), "shown as left out"
    for i in (1, 2):
        page.review_list.item(i).setCheckState(Qt.CheckState.Checked)
    assert [len(page.review_list.item(i).text().splitlines()) for i in range(3)] == [3, 2, 2]
    wizard.next()                                      # the first one unticked (say it showed a defect)
    assert wizard.currentPage() is wizard.roi_page
    assert [p.name for p in wizard.good_files] == lowest[1:3] and all(p.parent == lot for p in wizard.good_files)
    wizard.next()
    qtbot.waitUntil(wizard.train_page.isComplete, timeout=15_000)
    assert len(wizard.outcome.held_out) == 1 and len(wizard.outcome.good_scores) >= 1   # one image taught


def test_each_step_takes_the_keyboard_focus_not_the_window_around_it(qtbot, teach_setup) -> None:
    """In the app the wizard sits below a toolbar. A new step, and the end of training (Cancel goes off, the buttons
    are laid out again), lost the keyboard focus to the window's first widget (the toolbar's source box), so an
    engineer's typing went there; found by typing into the app under Xvfb."""
    from PySide6.QtWidgets import QApplication, QLineEdit, QVBoxLayout, QWidget

    s = teach_setup
    window = QWidget()
    toolbar_box = QLineEdit()                                   # stands in for the toolbar's source box
    wizard = TeachWizard(recipes=[s.recipe], engine=s.engine)
    layout = QVBoxLayout(window)
    layout.addWidget(toolbar_box)
    layout.addWidget(wizard)
    qtbot.addWidget(window)
    window.show()
    window.activateWindow()
    qtbot.waitActive(window)
    next_button = wizard.button(TeachWizard.WizardButton.NextButton)
    qtbot.mouseClick(next_button, Qt.MouseButton.LeftButton)    # recipe page -> images
    assert wizard.currentPage() is wizard.images_page
    qtbot.waitUntil(lambda: QApplication.focusWidget() is not None)
    assert QApplication.focusWidget() is wizard.images_page.good_edit      # its first field, ready for a path
    qtbot.keyClicks(QApplication.focusWidget(), str(s.good))
    assert wizard.images_page.good_edit.text() == str(s.good) and toolbar_box.text() == ""
    qtbot.mouseClick(next_button, Qt.MouseButton.LeftButton)    # images -> ROI
    assert wizard.currentPage() is wizard.roi_page
    assert QApplication.focusWidget() is next_button            # no field to type in (a drawing): Enter goes on
    qtbot.mouseClick(next_button, Qt.MouseButton.LeftButton)    # ROI -> train: Next is disabled while it runs
    assert wizard.currentPage() is wizard.train_page
    assert wizard.train_page.isAncestorOf(QApplication.focusWidget())
    qtbot.waitUntil(wizard.train_page.isComplete, timeout=15_000)
    assert QApplication.focusWidget() is next_button            # trained: the next action has the keyboard
    qtbot.keyClicks(QApplication.focusWidget(), "x")
    assert toolbar_box.text() == ""                             # not typed into the window around it
    qtbot.mouseClick(next_button, Qt.MouseButton.LeftButton)    # train -> check: thresholds moved by hand
    wizard.check_page.set_thresholds(0.3, 0.6)
    qtbot.mouseClick(next_button, Qt.MouseButton.LeftButton)    # check -> save: no field, Next gone, Finish off
    assert wizard.currentPage() is wizard.save_page
    assert QApplication.focusWidget() is wizard.save_page.save_button   # Enter saves
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Return)
    qtbot.waitUntil(wizard.save_page.isComplete, timeout=10_000)
    finish = wizard.button(TeachWizard.WizardButton.FinishButton)
    assert QApplication.focusWidget() is finish                 # saved: Enter finishes
    qtbot.keyClicks(QApplication.focusWidget(), "x")
    assert toolbar_box.text() == ""


def test_escape_does_not_close_the_teach_tab_and_finish_says_what_was_saved(qtbot, teach_setup) -> None:
    """A QWizard is a dialog and Escape was its Cancel: in the Teach tab a stray Escape threw away the steps filled
    in and a model trained but not saved, and left an empty tab (found under Xvfb). Escape now does nothing there;
    Finish leaves a line that says what was saved and what to do next, and only then offers New teaching."""
    from PySide6.QtWidgets import QApplication

    from ui.teach_wizard import TeachPage

    s = teach_setup
    page = TeachPage(recipes=[s.recipe], engine=s.engine)
    qtbot.addWidget(page)
    page.show()
    page.activateWindow()
    qtbot.waitActive(page)
    wizard = page.wizard
    assert wizard is not None and not page.done_message.isVisible()
    assert not page.restart_button.isVisible(), "no restart mid-way, which would throw the steps away"
    wizard.next()
    qtbot.keyClicks(wizard.images_page.good_edit, str(s.good))
    qtbot.keyClick(wizard.images_page.good_edit, Qt.Key.Key_Escape)     # ignored by the field: to the wizard
    assert wizard.isVisible() and wizard.currentPage() is wizard.images_page
    assert wizard.images_page.good_edit.text() == str(s.good)
    wizard.next()
    wizard.next()                                               # train
    qtbot.waitUntil(wizard.train_page.isComplete, timeout=15_000)
    qtbot.keyClick(wizard.button(TeachWizard.WizardButton.NextButton), Qt.Key.Key_Escape)
    assert wizard.isVisible() and wizard.outcome is not None, "the trained model is still there to check and save"
    wizard.next()
    wizard.next()                                               # save: nothing changed, the taught version stands
    assert wizard.save_page.isComplete()
    qtbot.keyClick(wizard.button(TeachWizard.WizardButton.FinishButton), Qt.Key.Key_Escape)
    assert wizard.isVisible()
    wizard.button(TeachWizard.WizardButton.FinishButton).click()
    assert not wizard.isVisible() and page.done_message.isVisible() and page.restart_button.isVisible()
    assert "Recipe part: model v1 saved" in page.done_message.text()
    assert QApplication.focusWidget() is page.restart_button
    page.restart_button.click()
    assert page.wizard is not wizard and page.wizard.isVisible() and not page.done_message.isVisible()
    assert not page.restart_button.isVisible()
