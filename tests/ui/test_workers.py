"""The Qt bridge, the job thread and numpy -> QImage, on their own."""

from __future__ import annotations

import threading
from collections.abc import Generator

import numpy as np
import pytest
from PySide6.QtCore import QCoreApplication, QEvent, QObject, QThread, Slot
from PySide6.QtWidgets import QWidget

from inspector.results import Progress
from tests.ui.conftest import DarkSpotInspector
from ui.live_view import HeatmapView
from ui.qimage import bgr_to_qimage, heatmap_rgba
from ui.workers import JobRunner, PipelineBridge, QueryRunner, call_as_job, running_job_threads


class _Receiver(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.results: list[object] = []
        self.threads: list[QThread] = []

    @Slot(object)
    def on_result(self, result: object) -> None:
        self.results.append(result)
        self.threads.append(QThread.currentThread())


def test_bridge_delivers_engine_thread_callbacks_on_the_gui_thread(qtbot) -> None:
    bridge = PipelineBridge()
    receiver = _Receiver()
    bridge.result_ready.connect(receiver.on_result)
    engine = threading.Thread(target=lambda: [bridge.on_result(i) for i in range(5)], name="fake-engine")
    engine.start()
    engine.join(5)
    qtbot.waitUntil(lambda: len(receiver.results) == 5, timeout=5_000)
    assert receiver.results == [0, 1, 2, 3, 4]
    assert all(t is QThread.currentThread() for t in receiver.threads)
    bridge.close()
    bridge.on_result(99)                       # after close: a no-op, nothing queued
    qtbot.wait(20)
    assert receiver.results[-1] == 4


def test_job_progress_and_result(qtbot) -> None:
    def job() -> Generator[Progress, None, str]:
        for i in range(3):
            yield Progress(done=i + 1, total=3, message=f"step {i + 1}")
        return "v7"

    runner = JobRunner()
    ticks: list[Progress] = []
    values: list[object] = []
    runner.progress.connect(ticks.append)
    runner.finished.connect(values.append)
    with qtbot.waitSignals([runner.finished, runner.stopped], timeout=10_000):
        runner.start(job, name="teach")
    assert [p.message for p in ticks] == ["step 1", "step 2", "step 3"]
    assert values == ["v7"]
    assert not runner.running and running_job_threads() == []


def test_job_error_is_delivered_as_a_sentence(qtbot) -> None:
    def job() -> Generator[Progress, None, None]:
        yield Progress(done=0, total=1, message="reading")
        msg = "recipes/x.yaml: thresholds.fail must be a number, got 'high'"
        raise ValueError(msg)

    runner = JobRunner()
    with qtbot.waitSignal(runner.errored, timeout=10_000) as blocker:
        runner.start(job)
    assert blocker.args == ["ValueError: recipes/x.yaml: thresholds.fail must be a number, got 'high'"]
    qtbot.waitUntil(lambda: not runner.running, timeout=5_000)


def test_cancel_stops_at_the_next_yield_and_shutdown_joins(qtbot) -> None:
    started, closed = threading.Event(), threading.Event()

    def job() -> Generator[Progress, None, None]:
        started.set()
        try:
            while True:
                yield Progress(done=0, total=0, message="fitting")
                threading.Event().wait(0.005)
        finally:
            closed.set()                       # generator.close() ran: the engine can clean up

    runner = JobRunner()
    runner.start(job, name="endless")
    assert started.wait(5)
    with pytest.raises(RuntimeError, match="another background job is still running"):
        runner.start(job)
    with qtbot.waitSignal(runner.cancelled, timeout=10_000):
        runner.cancel()
    assert closed.is_set()
    runner.start(call_as_job(lambda: 42, "answer"), name="second")     # the old thread is collected
    assert runner.shutdown()
    assert running_job_threads() == []


def test_a_read_outliving_its_deleted_screen_ends_quietly(qtbot) -> None:
    """A screen deleted (its window closed) while its read still runs: the reading thread's answer has nowhere
    to go and must not raise there (seen in CI: "Signal source has been deleted" from a Review picture read)."""
    crashes: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: crashes.append(args.exc_value)
    try:
        screen = QWidget()
        reads = QueryRunner(screen)
        answers: list[object] = []
        reads.ready.connect(lambda request, value: answers.append(value))
        release = threading.Event()
        reads.submit(lambda: release.wait(10) and "picture", name="slow-read")
        screen.deleteLater()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)     # deleted, read under way
        release.set()
        assert reads.wait(10)
        qtbot.wait(50)
    finally:
        threading.excepthook = hook
    assert crashes == [] and answers == []


def test_heatmap_view_converts_only_the_newest_result(qtbot) -> None:
    view = HeatmapView()
    qtbot.addWidget(view)
    view.resize(200, 200)
    inspector = DarkSpotInspector()
    image = np.full((112, 112, 3), 170, np.uint8)
    results = [inspector.inspect_image(image, frame_id=i) for i in range(30)]
    for result in results:                     # a burst faster than any screen
        view.show_result(result)
    view.grab()
    assert view.conversions == 1 and view.result is results[-1]


def test_bgr_to_qimage_keeps_channel_order_and_owns_its_pixels() -> None:
    frame_bgr = np.zeros((56, 70, 3), np.uint8)
    frame_bgr[..., 0] = 255                    # pure blue in OpenCV's BGR
    image = bgr_to_qimage(frame_bgr)
    frame_bgr[...] = 0                         # the QImage must not see this
    assert (image.width(), image.height()) == (70, 56)
    colour = image.pixelColor(3, 3)
    assert (colour.red(), colour.green(), colour.blue()) == (0, 0, 255)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        bgr_to_qimage(np.zeros((8, 8, 4), np.uint8))


def test_heatmap_rgba_is_transparent_below_vmin() -> None:
    amap = np.array([[0.0, 0.2, 0.5, 1.0]], np.float32)
    rgba = heatmap_rgba(amap, vmin=0.2, vmax=1.0)
    assert rgba.shape == (1, 4, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0 and rgba[0, 3, 3] == 255
    assert rgba[0, 3, 0] > 150 and rgba[0, 3, 2] < 100      # the hot end is red


@pytest.mark.parametrize("broken", [False, True])
def test_warm_up_imports_the_engine_on_a_job_thread_and_only_logs_a_broken_install(
    qtbot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, broken: bool
) -> None:
    from inspector.station import Station
    from ui.engine import warm_up

    threads: list[str] = []

    def import_engine() -> None:
        threads.append(threading.current_thread().name)
        if broken:
            msg = "libtorch_cpu.so: cannot open shared object file"
            raise OSError(msg)

    monkeypatch.setattr(Station, "import_engine", staticmethod(import_engine))
    runner = JobRunner()
    errors: list[str] = []
    runner.errored.connect(errors.append)
    with qtbot.waitSignal(runner.stopped, timeout=10_000):
        runner.start(call_as_job(warm_up, "importing the engine"), name="warm-up")
    assert threads and threads[0] != threading.main_thread().name     # off the GUI thread
    assert errors == []                                                # never an error dialog: Start says it
    assert ("could not be imported ahead of Start" in caplog.text) is broken


def test_the_engine_imports_without_loading_a_model() -> None:
    import sys

    from inspector.station import Station

    Station.import_engine()
    assert {"torch", "timm", "models.saved", "models.detectors"} <= sys.modules.keys()
