"""ResultRecorder: the lot, the archive and the store together, with the real Archive and SQLite store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from inspector.recipe import load_recipe
from inspector.recording import ResultRecorder
from inspector.results import DefectRegion, InspectionResult, Verdict
from inspector.store import Store
from tests.conftest import write_recipe


def _result(frame_id: int, verdict: Verdict, recipe: str) -> InspectionResult:
    rng = np.random.default_rng(frame_id)
    region = DefectRegion(x=4, y=4, width=6, height=6, area_px=36, area_mm2=None, max_score=1.0, mean_score=0.8)
    return InspectionResult(
        frame_id=frame_id, timestamp=1_795_400_000.0 + frame_id, source="camera 0", recipe=recipe,
        model_version="v1", verdict=verdict, score=0.9 if verdict is Verdict.FAIL else 0.1,
        regions=(region,) if verdict is Verdict.FAIL else (),
        anomaly_map=rng.random((32, 32), dtype=np.float32), image_bgr=rng.integers(0, 256, (32, 32, 3), np.uint8),
    )


def test_archives_fail_records_everything_and_stamps_the_lot(tmp_path: Path, tiny_weights_file: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file,
                                      extra=f"archive: {{directory: {(tmp_path / 'archive').as_posix()}}}\n"))
    station = SimpleNamespace(recipe=recipe, thresholds=(0.3, 0.5, 0.4))
    warnings: list[str] = []
    store = Store(tmp_path / "station.db")
    recorder = ResultRecorder(store, on_warning=warnings.append)
    recorder.use(station)
    recorder.set_lot("  LOT-9 ")
    for i, verdict in enumerate([Verdict.PASS, Verdict.FAIL, Verdict.PASS]):
        recorder.record(_result(i, verdict, recipe.name))
    recorder.close()
    store.close()

    rows = sqlite3.connect(tmp_path / "station.db").execute(
        "SELECT verdict, lot, image_path, overlay_path FROM inspections ORDER BY id").fetchall()
    assert [(v, lot) for v, lot, _, _ in rows] == [("PASS", "LOT-9"), ("FAIL", "LOT-9"), ("PASS", "LOT-9")]
    assert rows[0][2:] == (None, None) and rows[2][2:] == (None, None), "no 'None' text for PASS without images"
    image, overlay = rows[1][2:]
    assert Path(image).is_file() and Path(overlay).is_file()
    assert Path(image).is_relative_to(tmp_path / "archive")
    assert warnings == []


def test_without_the_archive_the_station_still_gets_its_defect_typer(tmp_path: Path, tiny_weights_file: Path) -> None:
    from inspector.defect_typing import DefectTyper

    archive = tmp_path / "archive"
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file,
                                      extra=f"archive: {{directory: {archive.as_posix()}}}\n"))
    typers: list[Any] = []
    station = SimpleNamespace(recipe=recipe, thresholds=(0.3, 0.5, 0.4), attach_typer=typers.append)
    store = Store(tmp_path / "station.db")
    recorder = ResultRecorder(store)
    recorder.use(station, archive=False)               # inspector run --no-archive
    recorder.record(_result(0, Verdict.FAIL, recipe.name))
    recorder.close()
    store.close()
    assert len(typers) == 1 and isinstance(typers[0], DefectTyper) and typers[0].config.crop_side == 224
    rows = sqlite3.connect(tmp_path / "station.db").execute("SELECT image_path FROM inspections").fetchall()
    assert rows == [(None,)] and not archive.exists()


def test_an_archive_folder_that_cannot_be_written_warns_and_still_records(
    tmp_path: Path, tiny_weights_file: Path
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file,
                                      extra=f"archive: {{directory: {(blocker / 'archive').as_posix()}}}\n"))
    warnings: list[str] = []
    store = Store(tmp_path / "station.db")
    recorder = ResultRecorder(store, on_warning=warnings.append)
    recorder.use(SimpleNamespace(recipe=recipe, thresholds=(0.3, 0.5, 0.4)))
    recorder.record(_result(0, Verdict.FAIL, recipe.name))
    recorder.close()
    store.close()
    assert len(warnings) == 1 and "archive paused" in warnings[0] and "Not a directory" in warnings[0], warnings
    rows = sqlite3.connect(tmp_path / "station.db").execute("SELECT verdict FROM inspections").fetchall()
    assert rows == [("FAIL",)]


def test_an_error_frame_with_a_picture_is_archived_and_stored_with_it(tmp_path: Path, tiny_weights_file: Path) -> None:
    """The model failed on a frame (a broken score): its picture is kept, so a reviewer can see what it failed on."""
    import dataclasses

    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file,
                                      extra=f"archive: {{directory: {(tmp_path / 'archive').as_posix()}}}\n"))
    store = Store(tmp_path / "station.db")
    recorder = ResultRecorder(store)
    recorder.use(SimpleNamespace(recipe=recipe, thresholds=(0.3, 0.5, 0.4)))
    failed = dataclasses.replace(_result(0, Verdict.PASS, recipe.name), verdict=Verdict.ERROR, score=None,
                                 anomaly_map=None, error="the anomaly score is not a finite number (nan)")
    unreadable = dataclasses.replace(failed, frame_id=1, image_bgr=None, error="003.png: not a decodable image")
    recorder.record(failed)
    recorder.record(unreadable)
    recorder.close()
    store.close()
    rows = sqlite3.connect(tmp_path / "station.db").execute(
        "SELECT frame_id, verdict, image_path, overlay_path FROM inspections ORDER BY id").fetchall()
    assert [(f, v, o) for f, v, _, o in rows] == [(0, "ERROR", None), (1, "ERROR", None)]
    assert rows[0][2] is not None and Path(rows[0][2]).name.endswith("_000000_error.jpg")
    assert Path(rows[0][2]).is_file() and rows[1][2] is None
