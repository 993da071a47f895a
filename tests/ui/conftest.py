"""Fixtures of the GUI tests: isolated QSettings, synthetic parts, a stand-in inspector, thread checks."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtCore import QEvent, QSettings

from inspector.errors import CaptureError
from inspector.results import DefectRegion, Frame, InspectionResult, StageTimes, Verdict

SIZE = 112                  # px, a multiple of the 14 px DINOv2 patch (STYLE.md section 7)
PART_GREY = 170             # the good part's grey level
REVIEW, FAIL, PIXEL = 0.25, 0.5, 0.3


def make_part(rng: np.random.Generator, *, defect: bool) -> np.ndarray:
    """A grey disc on a dark background, with a dark scratch when ``defect``: (112, 112, 3) uint8 BGR."""
    image = np.full((SIZE, SIZE, 3), 40, np.uint8)
    cv2.circle(image, (SIZE // 2, SIZE // 2), 44, (PART_GREY, PART_GREY, PART_GREY), -1)
    image = np.clip(image.astype(np.int16) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
    if defect:
        x = int(rng.integers(30, 60))
        cv2.line(image, (x, 35), (x + 20, 75), (20, 20, 20), 5)
    return image


@pytest.fixture
def part_images() -> list[tuple[str, np.ndarray]]:
    """Six parts, seeded: good, good, FAIL, good, FAIL, good (file name, image)."""
    rng = np.random.default_rng(0)
    pattern = [False, False, True, False, True, False]
    return [(f"{i:03d}_{'bad' if bad else 'good'}.png", make_part(rng, defect=bad))
            for i, bad in enumerate(pattern)]


@pytest.fixture
def part_folder(tmp_path: Path, part_images: list[tuple[str, np.ndarray]]) -> Path:
    folder = tmp_path / "parts"
    folder.mkdir()
    for name, image in part_images:
        cv2.imwrite(str(folder / name), image)
    return folder


class DarkSpotInspector:
    """Stands in for the model (`inspector.station.Station`) in GUI tests: scores darkness inside the part.

    The anomaly map is how much darker than the part's grey each pixel inside the disc is (0..1),
    blurred; the score is its maximum. Cheap numpy, no torch, same interface as `Station`.
    """

    total_calls = 0          # over every instance: lets a test prove that nothing was re-inferred

    def __init__(self, name: str = "demo", *, version: str = "v1", warnings: tuple[str, ...] = ()) -> None:
        self.name = name
        self.model_version = version
        self.device = "cpu"
        self.warnings = list(warnings)
        self.thresholds = (REVIEW, FAIL, PIXEL)
        self.calls = 0
        yy, xx = np.mgrid[:SIZE, :SIZE]
        self._disc = (yy - SIZE // 2) ** 2 + (xx - SIZE // 2) ** 2 < 40**2

    def inspect(self, frame: Frame) -> InspectionResult:
        return self.inspect_image(frame.image_bgr, path=frame.path, frame_id=frame.frame_id,
                                  timestamp=frame.timestamp, source=frame.source)

    def inspect_image(self, image_bgr: np.ndarray, *, path: str | None = None, frame_id: int = 0,
                      timestamp: float | None = None, source: str = "image") -> InspectionResult:
        self.calls += 1
        DarkSpotInspector.total_calls += 1
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
        disc = self._disc if grey.shape == self._disc.shape else np.ones(grey.shape, bool)
        amap = np.where(disc, np.clip((PART_GREY - grey) / PART_GREY, 0, 1), 0).astype(np.float32)
        amap = cv2.GaussianBlur(amap, (5, 5), 0)
        score = float(amap.max())
        verdict = Verdict.FAIL if score >= FAIL else Verdict.REVIEW if score >= REVIEW else Verdict.PASS
        regions: tuple[DefectRegion, ...] = ()
        if verdict is not Verdict.PASS:
            count, _, boxes, _ = cv2.connectedComponentsWithStats((amap > PIXEL).astype(np.uint8))
            regions = tuple(
                DefectRegion(x=int(x), y=int(y), width=int(w), height=int(h), area_px=int(a), area_mm2=None,
                             max_score=score, mean_score=score / 2)
                for x, y, w, h, a in boxes[1:count]
            )
        return InspectionResult(
            frame_id=frame_id, timestamp=time.time() if timestamp is None else timestamp, source=source,
            recipe=self.name, model_version=self.model_version, verdict=verdict, score=score, regions=regions,
            anomaly_map=amap, image_bgr=image_bgr, path=path, times=StageTimes(model_ms=1.0),
        )


class FlakyCamera:
    """Mocks camera hardware (no camera on CI): a live source that yields ``good_frames`` frames, then
    raises `CaptureError` on every read and refuses to reopen, until `replug()` is called."""

    is_live = True

    def __init__(self, images: list[np.ndarray], *, good_frames: int) -> None:
        self.name = "camera 0 (mock)"
        self.images = images
        self.good_frames = good_frames
        self.reads = 0
        self.unplugged = False
        self.plugged = threading.Event()
        self._stop = threading.Event()

    def open(self) -> None:
        if self.unplugged and not self.plugged.is_set():
            msg = "camera 0 gave no frame within 2.0 s; is it connected and free?"
            raise CaptureError(msg)
        self.unplugged = False

    def read(self) -> Frame | None:
        if self._stop.wait(0.01):
            return None
        if self.reads >= self.good_frames and not self.plugged.is_set():
            self.unplugged = True
            msg = "camera 0 stream dropped"
            raise CaptureError(msg)
        image = self.images[self.reads % len(self.images)]
        self.reads += 1
        return Frame(image_bgr=image, frame_id=self.reads, timestamp=time.time(), source=self.name)

    def replug(self) -> None:
        self.plugged.set()

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        pass

    def __enter__(self) -> FlakyCamera:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stub_recipes(folder: Path, *names: str) -> list[Path]:
    """Minimal recipe files (``name: X``) for a window whose inspectors are stand-ins."""
    paths = []
    for name in names:
        path = folder / f"{name}.yaml"
        path.write_text(f"name: {name}\n", encoding="utf-8")
        paths.append(path)
    return paths


def open_window(qtbot, settings: QSettings, recipes: list[Path], inspectors: dict[str, object], **kw):
    """A shown `MainWindow` whose recipes load the given stand-ins (an exception is raised on load)."""
    from ui.main_window import MainWindow

    def load(path: Path) -> object:
        found = inspectors[path.stem]
        if isinstance(found, Exception):
            raise found
        return found

    window = MainWindow(recipes=recipes, settings=settings, load_inspector=load, **kw)
    qtbot.addWidget(window)
    window.show()
    return window


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    """QSettings in tmp_path: tests never read or write the user's real settings."""
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture(autouse=True)
def _isolated_qsettings(tmp_path: Path) -> Iterator[None]:
    """Default-constructed QSettings go to tmp_path too (labelme's ``_isolated_qtsettings``)."""
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
        QSettings.setPath(QSettings.Format.IniFormat, scope, str(tmp_path / "qsettings"))
    yield


@pytest.fixture(autouse=True)
def _no_thread_left(qapp) -> Iterator[None]:
    """Fail a test that leaves a Python thread or a QThread running (napari's ``_dangling_qthreads``); then
    destroy what the test left, C++ first.

    A test's window ends as a Python garbage cycle whose C++ objects still live. Freed by the cyclic
    collector, its wrappers are cleared one by one (pyqtgraph's items lose their attributes) and the
    window's destructor, run from the last one, calls their Python overrides: AttributeErrors on the GUI
    thread, and a segmentation fault when automatic collection ran on a worker's thread (CI, right after
    test_station_truth; the AttributeErrors reproduced by collecting every 20 ms). So the test runs without automatic
    collection (as the app, `ui.collector`), and at its end every top-level widget is deleted by Qt, its
    Python side intact, before the garbage is collected on the GUI thread.
    """
    before = set(threading.enumerate())
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        _assert_no_thread_left(before)
    finally:
        from ui.workers import running_job_threads

        if not running_job_threads():                # never delete a widget whose job still runs (Qt aborts)
            for widget in qapp.topLevelWidgets():    # qtbot closed its widgets; the rest (pyqtgraph's menus, ...)
                widget.close()
                widget.deleteLater()
            qapp.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        gc.collect()
        if was_enabled:
            gc.enable()


def _assert_no_thread_left(before: set[threading.Thread]) -> None:
    from PySide6.QtCore import QCoreApplication

    from ui.workers import running_job_threads

    app = QCoreApplication.instance()
    if app is not None:
        app.processEvents()
    # QThreads that ran Python code show up as _DummyThread, which never "ends": skip those
    left = [t for t in threading.enumerate()
            if t not in before and t.is_alive() and not isinstance(t, threading._DummyThread)]
    for thread in left:          # a thread told to stop may need a moment to return
        thread.join(2.0)
    left = [t.name for t in left if t.is_alive()]
    assert not left, f"threads left running: {left}"
    running = running_job_threads()
    assert not running, f"QThreads left running: {running}"
