"""The image archive: what is kept, atomic files, size cap, disk-full pause, safe names."""

from __future__ import annotations

import dataclasses
import errno
import threading
import time
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pytest

import inspector.archive as archive_module
from inspector.archive import Archive, ArchivedPaths, ArchivePolicy
from inspector.capture import ArraySource
from inspector.pipeline import Pipeline
from inspector.results import DefectRegion, InspectionResult, Verdict

pytestmark = pytest.mark.usefixtures("no_thread_leak")

T0 = 1_795_400_000.0   # a fixed capture time, so file names are predictable within a test


def _result(
    frame_id: int,
    verdict: Verdict,
    *,
    rng: np.random.Generator,
    recipe: str = "bracket-a",
    with_map: bool = True,
    size: int = 56,
) -> InspectionResult:
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    anomaly_map = rng.random((size, size), dtype=np.float32) if with_map else None
    region = DefectRegion(
        x=10, y=10, width=8, height=8, area_px=64, area_mm2=None, max_score=1.0, mean_score=0.7
    )
    return InspectionResult(
        frame_id=frame_id,
        timestamp=T0 + frame_id * 0.01,
        source="camera 0",
        recipe=recipe,
        model_version="v1",
        verdict=verdict,
        score=None if verdict is Verdict.ERROR else 0.5,
        regions=(region,) if verdict is Verdict.FAIL else (),
        anomaly_map=anomaly_map,
        image_bgr=image,
    )


def _archived_files(root: Path) -> list[Path]:
    """Every file under ``root`` except the archives' own manifests."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".inspector-archive-"))


def test_keeps_fail_review_error_and_every_nth_pass(tmp_path: Path, rng: np.random.Generator) -> None:
    """FAIL, REVIEW and every Nth PASS with their overlays; an ERROR frame that has a picture (the model failed on
    it) without one, so that a reviewer can see what it failed on; an unreadable file's ERROR has nothing to keep."""
    policy = ArchivePolicy(directory=tmp_path / "archive", save_pass_every=3, vmin=0.2, vmax=0.9)
    verdicts = [
        Verdict.PASS, Verdict.FAIL, Verdict.PASS, Verdict.REVIEW, Verdict.PASS, Verdict.ERROR, Verdict.PASS,
    ]
    results = [_result(i, v, rng=rng, with_map=v is not Verdict.ERROR) for i, v in enumerate(verdicts)]
    unreadable = dataclasses.replace(_result(7, Verdict.ERROR, rng=rng, with_map=False), image_bgr=None)
    with Archive(policy) as archive:
        paths = [archive.submit(result) for result in results]
        assert archive.submit(unreadable) is None
        assert archive.flush(10)
        assert archive.saved == 4
    kept = [i for i, p in enumerate(paths) if p is not None]
    assert kept == [1, 3, 4, 5]                               # FAIL, REVIEW, the 3rd PASS, the ERROR
    for index in kept:
        item = paths[index]
        assert isinstance(item, ArchivedPaths)
        if verdicts[index] is Verdict.ERROR:
            assert item.overlay is None and item.image.is_file()
            continue
        assert item.overlay is not None
        assert item.image.is_file() and item.overlay.is_file()
        assert item.image.is_relative_to(tmp_path / "archive")
        assert item.image.name.endswith(f"_bracket-a_{index:06d}_{verdicts[index].value.lower()}.jpg")
        assert item.overlay.name == item.image.name.replace(".jpg", "_overlay.jpg")
        decoded = cv2.imdecode(np.fromfile(item.image, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape == (56, 56, 3)
    assert len(_archived_files(tmp_path / "archive")) == 7     # no temp files left behind


def test_png_without_anomaly_map(tmp_path: Path, rng: np.random.Generator) -> None:
    result = _result(0, Verdict.FAIL, rng=rng, with_map=False)
    with Archive(ArchivePolicy(directory=tmp_path, image_format="png")) as archive:
        paths = archive.submit(result)
    assert paths is not None and paths.overlay is None and paths.image.suffix == ".png"
    loaded = cv2.imdecode(np.fromfile(paths.image, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(loaded, result.image_bgr)   # PNG is lossless


def test_disabled_archive_keeps_nothing_and_starts_no_thread(
    tmp_path: Path, rng: np.random.Generator,
) -> None:
    before = threading.active_count()
    archive = Archive(ArchivePolicy(enabled=False, directory=tmp_path / "a"))
    assert threading.active_count() == before
    assert archive.submit(_result(0, Verdict.FAIL, rng=rng)) is None
    archive.close()
    assert not (tmp_path / "a").exists()


def test_files_appear_atomically(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[tuple[list[str], list[str]]] = []    # (visible files, temporary files) while writing
    real_write = archive_module._write_file

    def watching_write(handle: BinaryIO, data: bytes) -> None:
        names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".inspector"))
        writes.append(([n for n in names if not n.startswith(".")], [n for n in names if n.startswith(".")]))
        real_write(handle, data)

    monkeypatch.setattr(archive_module, "_write_file", watching_write)
    with Archive(ArchivePolicy(directory=tmp_path)) as archive:
        paths = archive.submit(_result(0, Verdict.FAIL, rng=rng))
    assert paths is not None and paths.overlay is not None
    (before_image, image_tmp), (before_overlay, overlay_tmp) = writes
    # the bytes go to a dot-named temporary beside the final name ...
    assert len(image_tmp) == 1 and image_tmp[0].startswith(f".{paths.image.name}.") and image_tmp[0].endswith(".tmp")
    assert len(overlay_tmp) == 1 and overlay_tmp[0].startswith(f".{paths.overlay.name}.")
    # ... and the final names appear only when their file is complete
    assert before_image == [] and before_overlay == [paths.image.name]
    visible = sorted(p.name for p in paths.image.parent.iterdir())
    assert visible == sorted([paths.image.name, paths.overlay.name])


def test_a_write_that_dies_leaves_no_partial_file(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mocks a disk that fails mid-write (hardware): half the bytes land, then OSError."""

    def half_write(handle: BinaryIO, data: bytes) -> None:
        handle.write(data[: len(data) // 2])
        handle.flush()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(archive_module, "_write_file", half_write)
    warnings: list[str] = []
    with Archive(ArchivePolicy(directory=tmp_path), on_warning=warnings.append) as archive:
        paths = archive.submit(_result(0, Verdict.FAIL, rng=rng))
        assert archive.flush(10)
    assert paths is not None and not paths.image.exists()
    assert _archived_files(tmp_path) == []
    assert [p for p in paths.image.parent.iterdir() if p.name.endswith(".tmp")] == []   # temporary removed too
    assert len(warnings) == 1 and "Input/output error" in warnings[0]


def test_size_cap_removes_oldest_first(tmp_path: Path, rng: np.random.Generator) -> None:
    with Archive(ArchivePolicy(directory=tmp_path, image_format="png")) as archive:
        first = archive.submit(_result(0, Verdict.FAIL, rng=rng, with_map=False))
        assert archive.flush(10) and first is not None
    one_file = first.image.stat().st_size
    cap = int(one_file * 3.5)                                   # room for three of these frames
    with Archive(ArchivePolicy(directory=tmp_path, image_format="png", max_bytes=cap)) as archive:
        paths = [archive.submit(_result(i, Verdict.FAIL, rng=rng, with_map=False)) for i in range(1, 7)]
        assert archive.flush(10)
        assert archive.total_bytes <= cap
    remaining = _archived_files(tmp_path)
    assert remaining == sorted(p.image for p in paths[-3:] if p is not None)   # the three newest
    assert not first.image.exists()                             # files found at start-up count too


def test_image_and_overlay_are_removed_together(tmp_path: Path, rng: np.random.Generator) -> None:
    with Archive(ArchivePolicy(directory=tmp_path, image_format="png")) as archive:
        probe = archive.submit(_result(0, Verdict.FAIL, rng=rng))
        assert archive.flush(10) and probe is not None and probe.overlay is not None
    frame_bytes = probe.image.stat().st_size + probe.overlay.stat().st_size
    probe.image.unlink()
    probe.overlay.unlink()
    cap = int(frame_bytes * 2.5)
    with Archive(ArchivePolicy(directory=tmp_path, image_format="png", max_bytes=cap)) as archive:
        paths = [archive.submit(_result(i, Verdict.FAIL, rng=rng)) for i in range(1, 6)]
        assert archive.flush(10)
    newest = sorted(p for item in paths[-2:] if item is not None for p in item if p is not None)
    assert _archived_files(tmp_path) == newest                   # two whole frames, no orphan overlay
    smaller = ArchivePolicy(directory=tmp_path, image_format="png", max_bytes=int(frame_bytes * 1.5))
    with Archive(smaller) as archive:
        assert archive.flush(10)
    last = paths[-1]
    assert last is not None and last.overlay is not None
    assert _archived_files(tmp_path) == sorted([last.image, last.overlay])


def test_existing_archive_over_a_new_cap_is_trimmed_at_start(
    tmp_path: Path, rng: np.random.Generator,
) -> None:
    with Archive(ArchivePolicy(directory=tmp_path, image_format="png")) as archive:
        for i in range(4):
            archive.submit(_result(i, Verdict.REVIEW, rng=rng, with_map=False))
    files = _archived_files(tmp_path)
    assert len(files) == 4
    stray = tmp_path / "operator_notes.png"                     # not in a day folder: never touched
    stray.write_bytes(b"x" * 10)
    with Archive(ArchivePolicy(directory=tmp_path, max_bytes=1)) as archive:
        assert archive.flush(10)
        assert _archived_files(tmp_path) == [stray] and archive.total_bytes == 0


def test_disk_full_pauses_with_a_warning_then_resumes(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mocks a full disk (hardware) by making the low-level write raise ENOSPC."""
    real_write = archive_module._write_file
    full = threading.Event()
    full.set()

    def maybe_full(handle: BinaryIO, data: bytes) -> None:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(handle, data)

    monkeypatch.setattr(archive_module, "_write_file", maybe_full)
    warnings: list[str] = []
    policy = ArchivePolicy(directory=tmp_path, retry_after_s=0.2)
    with Archive(policy, on_warning=warnings.append) as archive:
        assert archive.submit(_result(0, Verdict.FAIL, rng=rng)) is not None
        assert archive.flush(10)
        assert archive.paused
        assert archive.submit(_result(1, Verdict.FAIL, rng=rng)) is None      # skipped while paused
        assert len(warnings) == 1
        assert warnings[0].startswith("archive paused: cannot write ")
        assert "No space left on device" in warnings[0] and "retries in 0.2 s" in warnings[0]
        full.clear()                                                            # space freed
        deadline = time.monotonic() + 10
        while archive.paused and time.monotonic() < deadline:
            time.sleep(0.01)
        resumed = archive.submit(_result(2, Verdict.FAIL, rng=rng))
        assert archive.flush(10)
    assert resumed is not None and resumed.image.is_file()
    assert (archive.saved, archive.skipped) == (1, 2)
    assert len(warnings) == 1


def test_pipeline_goes_on_while_the_disk_is_full(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, stub_inspector: type,
) -> None:
    """Mocks a full disk (hardware); every frame still gets its result."""

    def no_space(handle: BinaryIO, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_module, "_write_file", no_space)
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(3)]
    warnings: list[str] = []
    results: list[InspectionResult] = []
    with Archive(ArchivePolicy(directory=tmp_path), on_warning=warnings.append) as archive:
        inspector = stub_inspector(fail_above=0.0)               # every frame FAILs: all are archived
        pipeline = Pipeline(ArraySource(images, loop=True, count=50), inspector,
                            consumers=[archive.submit, results.append])
        with pipeline:
            pipeline.start()
            assert pipeline.wait(30)
    assert [r.frame_id for r in results] == list(range(50))
    assert all(r.verdict is Verdict.FAIL for r in results)
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert _archived_files(tmp_path) == []


@pytest.mark.parametrize(
    "recipe", ["../../etc/passwd", "/abs/olute", "..", "C:\\evil\\x", "name with spaces/and\x00nul"]
)
def test_outside_names_cannot_escape_the_archive(
    tmp_path: Path, rng: np.random.Generator, recipe: str,
) -> None:
    root = tmp_path / "archive"
    with Archive(ArchivePolicy(directory=root)) as archive:
        paths = archive.submit(_result(0, Verdict.FAIL, rng=rng, recipe=recipe))
    assert paths is not None
    assert paths.image.resolve().parent.parent == root.resolve()
    assert paths.image.is_file()
    assert all(p.resolve().is_relative_to(root.resolve()) for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"save_pass_every": -1}, "archive.save_pass_every must be 0"),
        ({"max_bytes": 0}, "archive.max_bytes must be a positive"),
        ({"image_format": "gif"}, "archive.image_format must be 'jpg' or 'png', got 'gif'"),
        ({"jpeg_quality": 101}, "archive.jpeg_quality must be in 0-100"),
        ({"vmin": 2.0, "vmax": 1.0}, r"archive.vmin \(2.0\) must be below archive.vmax \(1.0\)"),
    ],
)
def test_policy_validation(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArchivePolicy(directory=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_writer_falling_behind_skips_and_warns_once(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writing = threading.Event()
    release = threading.Event()
    real_write = archive_module._write_file
    released: list[bool] = []

    def slow_write(handle: BinaryIO, data: bytes) -> None:
        # Blocks until the submits are done; the timeout only keeps a broken test from hanging.
        writing.set()
        released.append(release.wait(120))
        real_write(handle, data)

    monkeypatch.setattr(archive_module, "_write_file", slow_write)
    warnings: list[str] = []
    with Archive(ArchivePolicy(directory=tmp_path, queue_size=2), on_warning=warnings.append) as archive:
        # The writer holds frame 0 before the others come (it may still be scanning the folder when the
        # first submits arrive; on a loaded machine that once let a later frame in, so wait for it).
        paths = [archive.submit(_result(0, Verdict.FAIL, rng=rng, with_map=False))]
        assert writing.wait(30), "the writer never started writing frame 0"
        paths += [archive.submit(_result(i, Verdict.FAIL, rng=rng, with_map=False)) for i in range(1, 8)]
        release.set()
        assert archive.flush(10)
    assert released and all(released), "a write stopped waiting before the submits were done"
    # Frame 0 is being written, 1 and 2 fill the queue of two, 3..7 are skipped.
    assert [p is not None for p in paths] == [True, True, True, False, False, False, False, False]
    assert len(warnings) == 1 and "falls behind" in warnings[0]
    assert (archive.saved, archive.skipped) == (3, 5)



# ---- own files only (issue 12) ----


def test_a_shared_folder_keeps_foreign_files_and_each_recipe_its_own_cap(
    tmp_path: Path, rng: np.random.Generator,
) -> None:
    day = time.strftime("%Y-%m-%d", time.localtime(T0))
    foreign = [tmp_path / day / "holiday_photo.jpg", tmp_path / "2020-01-01" / "IMG_0001.png",
               # named like recipe-b's files, but recipe-b never wrote them: not in its manifest
               tmp_path / day / "101502-123_recipe-b_000001_fail.png",
               tmp_path / day / ".photo_recipe-b_1.jpg.abcdefgh.tmp"]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff" * 5000)
    # what recipe-b's own crash mid-write leaves (atomic_open's temporary name): removed at its start
    stale = tmp_path / day / ".101502-123_recipe-b_000099_fail.png.a1b2_c3d.tmp"
    stale.write_bytes(b"\xff" * 10)
    big = ArchivePolicy(directory=tmp_path, image_format="png", owner="recipe-a")
    with Archive(big) as a:
        kept_a = [a.submit(_result(i, Verdict.FAIL, rng=rng, recipe="recipe-a", with_map=False)) for i in range(4)]
        assert a.flush(10)
    one = kept_a[0].image.stat().st_size if kept_a[0] else 0
    small = ArchivePolicy(directory=tmp_path, image_format="png", owner="recipe-b", max_bytes=int(one * 1.5))
    with Archive(small) as b:
        kept_b = [b.submit(_result(i, Verdict.FAIL, rng=rng, recipe="recipe-b", with_map=False))
                  for i in range(10, 14)]
        assert b.flush(10)
        assert b.total_bytes <= int(one * 1.5)
    with Archive(ArchivePolicy(directory=tmp_path, image_format="png", owner="recipe-b", max_bytes=1)) as again:
        assert again.flush(10)                    # a restart with a smaller cap: still only recipe-b's files
    assert all(p.is_file() for p in foreign), "files the archive did not write were removed"
    assert not stale.exists(), "recipe-b's own stale temporary was kept"
    assert all(item is not None and item.image.is_file() for item in kept_a), "recipe-b's cap removed recipe-a's"
    assert not any(item is not None and item.image.exists() for item in kept_b[:-1])


def test_the_store_stops_pointing_at_images_the_cap_removed(
    tmp_path: Path, rng: np.random.Generator, tiny_weights_file: Path,
) -> None:
    from types import SimpleNamespace

    from inspector.recipe import load_recipe
    from inspector.recording import ResultRecorder
    from inspector.store import Store
    from tests.conftest import write_recipe

    extra = f"archive: {{directory: {(tmp_path / 'archive').as_posix()}, max_size_mb: 0.00001}}\n"
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file, extra=extra))
    store = Store(tmp_path / "station.db")
    recorder = ResultRecorder(store)
    recorder.use(SimpleNamespace(recipe=recipe, thresholds=(0.3, 0.5, 0.4)))
    recorder.record(_result(0, Verdict.FAIL, rng=rng, recipe=recipe.name))
    assert recorder.wait_stored(10)
    first = store.get_inspection(1)
    assert first.image_path is not None and Path(first.image_path).is_file()
    recorder.record(_result(1, Verdict.FAIL, rng=rng, recipe=recipe.name))   # over the cap: frame 0 goes
    recorder.close()
    assert not Path(first.image_path).exists()
    after = store.get_inspection(1)
    second = store.get_inspection(2)
    store.close()
    assert after.image_path is None and after.overlay_path is None
    assert second.image_path is not None and Path(second.image_path).is_file()


def test_images_the_cap_removes_while_the_store_is_locked_are_never_named_by_its_rows(
    tmp_path: Path, rng: np.random.Generator, tiny_weights_file: Path,
) -> None:
    """The rows wait in the journal while the archive trims their images; a later start stores them without."""
    import sqlite3
    from types import SimpleNamespace

    from inspector.recipe import load_recipe
    from inspector.recording import ResultRecorder
    from inspector.store import Store
    from tests.conftest import write_recipe

    extra = f"archive: {{directory: {(tmp_path / 'archive').as_posix()}, max_size_mb: 0.00001}}\n"
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny_weights_file, extra=extra))
    db = tmp_path / "station.db"
    store = Store(db, busy_timeout_s=0.2)
    recorder = ResultRecorder(store)
    recorder.use(SimpleNamespace(recipe=recipe, thresholds=(0.3, 0.5, 0.4)))
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")                 # another program holds the store's write lock
    try:
        for i in range(4):
            recorder.record(_result(i, Verdict.FAIL, rng=rng, recipe=recipe.name))
        recorder.close_archives()                   # every image written; the cap removed all but the newest
        assert recorder.close(timeout=0.0) == 4     # the results wait in the journal, as after a crash
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    store.close()
    store = Store(db)
    again = ResultRecorder(store)                   # the next start forwards them
    assert again.wait_stored(30) and again.close() == 0
    with sqlite3.connect(db) as conn:
        named = [p for row in conn.execute("SELECT image_path, overlay_path FROM inspections ORDER BY id")
                 for p in row if p is not None]
        assert conn.execute("SELECT count(*) FROM inspections").fetchone()[0] == 4
    store.close()
    assert named and all(Path(p).is_file() for p in named), "a row names an image the archive removed"
    assert len(named) == 2                          # the newest frame's image and overlay
