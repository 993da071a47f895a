"""The worker pipeline with real threads, real OpenCV and real files (no camera, no model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.capture import ArraySource, FolderSource, FolderSpec, VideoSource, VideoSpec
from inspector.errors import CaptureError
from inspector.pipeline import FILE_QUEUE_SIZE, EventKind, Pipeline, PipelineEvent, error_result
from inspector.results import Frame, InspectionResult, Verdict

pytestmark = pytest.mark.usefixtures("no_thread_leak")


class Events:
    """Collects pipeline events from any thread."""

    def __init__(self) -> None:
        self.items: list[PipelineEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: PipelineEvent) -> None:
        with self._lock:
            self.items.append(event)

    def kinds(self) -> list[EventKind]:
        with self._lock:
            return [e.kind for e in self.items]

    def of(self, kind: EventKind) -> list[PipelineEvent]:
        with self._lock:
            return [e for e in self.items if e.kind is kind]


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _folder_pipeline(
    folder: Path, inspector: object, **kwargs: object,
) -> tuple[Pipeline, list[InspectionResult], Events]:
    results: list[InspectionResult] = []
    events = Events()
    pipeline = Pipeline(
        FolderSource(FolderSpec(path=folder)),
        inspector,  # type: ignore[arg-type]
        consumers=[results.append],
        on_event=events,
        **kwargs,  # type: ignore[arg-type]
    )
    return pipeline, results, events


def test_folder_replay_gives_one_result_per_frame_in_order(image_folder: Path, stub_inspector: type) -> None:
    inspector = stub_inspector()
    pipeline, results, events = _folder_pipeline(image_folder, inspector)
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert [r.frame_id for r in results] == [0, 1, 2, 3, 4, 5]
    assert [Path(r.path or "").name for r in results] == [f"img_{i:03d}.png" for i in range(6)]
    assert all(r.verdict is Verdict.PASS for r in results)
    assert inspector.threads == {"inspector-worker"}
    stats = pipeline.stats()
    assert (stats.frames_captured, stats.frames_inspected, stats.frames_dropped, stats.errors) == (6, 6, 0, 0)
    assert stats.state == "stopped" and not stats.source_live
    assert events.kinds() == [EventKind.SOURCE_OPENED, EventKind.SOURCE_ENDED, EventKind.STOPPED]


def test_raising_inspector_gives_error_results_and_the_run_goes_on(
    image_folder: Path, stub_inspector: type,
) -> None:
    inspector = stub_inspector(raise_on=frozenset({1, 4}), error=ValueError("bad tensor shape\nmore detail"))
    pipeline, results, _ = _folder_pipeline(image_folder, inspector)
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert [r.verdict for r in results] == [
        Verdict.PASS, Verdict.ERROR, Verdict.PASS, Verdict.PASS, Verdict.ERROR, Verdict.PASS,
    ]
    failed = results[1]
    assert failed.score is None and failed.recipe == "stub" and failed.image_bgr is not None
    where = image_folder / "img_001.png"
    assert failed.error == f"inspection of frame 1 ({where}) failed: ValueError: bad tensor shape"
    assert pipeline.stats().errors == 2


def test_undecodable_files_give_error_results_naming_the_file(
    image_folder: Path, stub_inspector: type,
) -> None:
    (image_folder / "img_001.png").write_bytes(b"")                                    # zero bytes
    good = (image_folder / "img_002.png").read_bytes()
    (image_folder / "img_002.png").write_bytes(good[: len(good) // 2])                 # truncated
    (image_folder / "img_004.png").write_bytes(bytes(range(256)) * 4)                  # corrupt
    pipeline, results, _ = _folder_pipeline(image_folder, stub_inspector())
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert [r.frame_id for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r.verdict for r in results] == [
        Verdict.PASS, Verdict.ERROR, Verdict.ERROR, Verdict.PASS, Verdict.ERROR, Verdict.PASS,
    ]
    for index, words in [(1, "empty"), (2, "not a decodable image"), (4, "not a decodable image")]:
        result = results[index]
        assert result.path == str(image_folder / f"img_{index:03d}.png")
        assert result.error is not None and f"img_{index:03d}.png" in result.error and words in result.error
        assert result.score is None and result.recipe == "stub"
    assert pipeline.stats().errors == 3


class FlakyCamera:
    """A live source that drops out and comes back: mocks camera hardware (no camera in CI).

    Wraps an in-memory source; reads number ``fail_from`` to ``fail_from + fail_reads - 1`` raise
    `CaptureError` as an unplugged camera does, and the first ``failed_opens`` re-opens fail too.
    """

    is_live = True

    def __init__(self, images: list[np.ndarray], *, count: int, fail_from: int, failed_opens: int) -> None:
        self.name = "flaky camera"
        self._inner = ArraySource(images, loop=True, count=count, name=self.name)
        self._reads = 0
        self._fail_from = fail_from
        self._failed_opens = failed_opens
        self._opens = 0
        self._broken = False

    def open(self) -> None:
        self._opens += 1
        if self._broken and self._failed_opens > 0:
            self._failed_opens -= 1
            msg = "flaky camera could not be opened; is it connected?"
            raise CaptureError(msg)
        self._broken = False
        self._inner.open()

    def read(self) -> Frame | None:
        self._reads += 1
        if self._reads == self._fail_from:
            self._broken = True
        if self._broken:
            msg = "flaky camera gave no frame; is it still connected?"
            raise CaptureError(msg)
        return self._inner.read()

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> FlakyCamera:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_live_source_that_drops_out_is_reconnected(rng: np.random.Generator, stub_inspector: type) -> None:
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)]
    camera = FlakyCamera(images, count=40, fail_from=10, failed_opens=2)
    results: list[InspectionResult] = []
    events = Events()
    pipeline = Pipeline(camera, stub_inspector(), consumers=[results.append], on_event=events,
                        reconnect_delay=0.01, max_reconnect_delay=0.04)
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    kinds = events.kinds()
    order = (EventKind.SOURCE_LOST, EventKind.SOURCE_RECONNECTED, EventKind.SOURCE_ENDED)
    lost, back, ended = (kinds.index(kind) for kind in order)
    assert lost < back < ended
    lost_message = events.of(EventKind.SOURCE_LOST)[0].message
    assert lost_message == "flaky camera gave no frame; is it still connected? (reconnecting)"
    assert "after 3 attempt(s)" in events.of(EventKind.SOURCE_RECONNECTED)[0].message
    assert camera._opens == 4                                    # first open + 2 failed + 1 good
    assert results and results[-1].frame_id == 39                # frames after the reconnection arrived
    assert all(r.verdict is Verdict.PASS for r in results)


def test_live_source_faster_than_inference_drops_and_counts(
    rng: np.random.Generator, stub_inspector: type,
) -> None:
    gate = {0: threading.Event()}
    inspector = stub_inspector(gate=gate)

    class FastCamera(ArraySource):
        """In-memory live source; holds frame 1 until the model is busy with frame 0 (mocks a camera)."""

        def read(self) -> Frame | None:
            if self._next_id == 1:
                inspector.started.wait(10)
            return super().read()

    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)]
    source = FastCamera(images, loop=True, count=200, is_live=True, name="fast camera")
    results: list[InspectionResult] = []
    pipeline = Pipeline(source, inspector, consumers=[results.append])
    with pipeline:
        pipeline.start()
        # Hold the model on frame 0 until the camera has produced all 200 frames.
        assert _wait_until(lambda: pipeline.stats().frames_captured == 200)
        gate[0].set()
        assert pipeline.wait(30)
    stats = pipeline.stats()
    assert [r.frame_id for r in results] == [0, 199]             # the newest frame won
    assert stats.frames_dropped == 198 and stats.frames_captured == 200 and stats.frames_inspected == 2
    assert stats.source_live


def test_switching_inspector_takes_effect_on_the_next_frame(
    make_folder: Callable[..., Path], stub_inspector: type,
) -> None:
    folder = make_folder(8)
    first, second = stub_inspector("recipe_a"), stub_inspector("recipe_b")
    results: list[InspectionResult] = []
    events = Events()
    source = FolderSource(FolderSpec(path=folder))
    pipeline = Pipeline(source, first, consumers=[results.append], on_event=events)

    def switch_after_three(result: InspectionResult) -> None:
        if result.frame_id == 3:
            pipeline.switch_inspector(second)

    pipeline.add_consumer(switch_after_three)
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert [r.recipe for r in results] == ["recipe_a"] * 4 + ["recipe_b"] * 4
    assert first.seen == [0, 1, 2, 3] and second.seen == [4, 5, 6, 7]
    (switched,) = events.of(EventKind.INSPECTOR_SWITCHED)
    assert switched.message == "recipe switched from 'recipe_a' to 'recipe_b'"
    assert pipeline.inspector is second


def _settled(snapshot: Callable[[], object], quiet_s: float = 0.2, timeout: float = 10.0) -> bool:
    """True once ``snapshot()`` stays the same for ``quiet_s`` (False after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last, since = snapshot(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
    return False


def test_pause_and_resume(rng: np.random.Generator, stub_inspector: type) -> None:
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)]
    source = ArraySource(images, loop=True, count=300, fps=500.0)
    results: list[InspectionResult] = []
    pipeline = Pipeline(source, stub_inspector(), consumers=[results.append])
    with pipeline:
        pipeline.start()
        assert _wait_until(lambda: len(results) >= 20)
        pipeline.pause()
        assert pipeline.stats().state == "paused"
        # The frame in the inspector is finished; frames queued from a file source are held, not
        # dropped (how many depends on the machine's load: the worker may be behind the reader).
        assert _settled(lambda: (pipeline.stats().frames_captured, len(results)))
        captured, delivered = pipeline.stats().frames_captured, len(results)
        time.sleep(0.1)
        assert (pipeline.stats().frames_captured, len(results)) == (captured, delivered)  # nothing moves
        assert 0 <= captured - delivered <= FILE_QUEUE_SIZE + 1    # the queue, and one waiting to enter it
        assert captured < 300
        pipeline.resume()
        assert pipeline.stats().state == "running"
        assert pipeline.wait(30)
    assert [r.frame_id for r in results] == list(range(300))


def test_paused_before_start_reads_nothing_until_resumed(image_folder: Path, stub_inspector: type) -> None:
    pipeline, results, _ = _folder_pipeline(image_folder, stub_inspector())
    with pipeline:
        pipeline.pause()
        pipeline.start()
        assert pipeline.stats().state == "paused"
        time.sleep(0.1)
        assert pipeline.stats().frames_captured == 0 and not results
        pipeline.resume()
        assert pipeline.wait(30)
    assert len(results) == 6


def test_stop_joins_every_thread_and_is_idempotent(rng: np.random.Generator, stub_inspector: type) -> None:
    before = set(threading.enumerate())
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)]
    events = Events()
    results: list[InspectionResult] = []
    pipeline = Pipeline(ArraySource(images, loop=True), stub_inspector(delay_s=0.001),
                        consumers=[results.append], on_event=events)
    pipeline.start()
    assert _wait_until(lambda: len(results) >= 5)
    pipeline.stop()
    pipeline.stop()
    assert set(threading.enumerate()) == before
    assert pipeline.stats().state == "stopped"
    assert not pipeline.wait(0.01)                                # stopped, not ended
    assert events.kinds().count(EventKind.STOPPED) == 1
    with pytest.raises(RuntimeError, match="already started"):
        pipeline.start()


def test_stop_cuts_short_a_slow_replay(image_folder: Path, stub_inspector: type) -> None:
    before = set(threading.enumerate())
    source = FolderSource(FolderSpec(path=image_folder, fps=0.01))   # one image per 100 s
    results: list[InspectionResult] = []
    pipeline = Pipeline(source, stub_inspector(), consumers=[results.append])
    with pipeline:
        pipeline.start()
        assert _wait_until(lambda: len(results) == 1)
        pipeline.stop(timeout=30)
        assert not [t.name for t in set(threading.enumerate()) - before if t.name.startswith("inspector-")]
    assert len(results) == 1


def test_stop_before_start(image_folder: Path, stub_inspector: type) -> None:
    pipeline, _, events = _folder_pipeline(image_folder, stub_inspector())
    pipeline.stop()
    assert events.kinds() == [EventKind.STOPPED]
    assert not pipeline.wait(0)


def test_failing_consumer_warns_once_and_others_still_get_results(
    image_folder: Path, stub_inspector: type,
) -> None:
    def broken(result: InspectionResult) -> None:
        msg = "disk on fire"
        raise OSError(msg)

    pipeline, results, events = _folder_pipeline(image_folder, stub_inspector())
    pipeline.add_consumer(broken)
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert len(results) == 6
    (warning,) = events.of(EventKind.WARNING)
    assert "broken raised OSError: disk on fire" in warning.message


def test_out_of_memory_gives_error_result_and_warning(image_folder: Path, stub_inspector: type) -> None:
    class OutOfMemoryError(RuntimeError):   # the name torch.cuda.OutOfMemoryError carries
        pass

    oom = OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    inspector = stub_inspector(raise_on=frozenset({2}), error=oom)
    pipeline, results, events = _folder_pipeline(image_folder, inspector)
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert results[2].verdict is Verdict.ERROR
    assert "OutOfMemoryError: CUDA out of memory" in (results[2].error or "")
    (warning,) = events.of(EventKind.WARNING)
    assert warning.message.startswith("recipe 'stub' ran out of memory")
    assert [r.verdict for r in results].count(Verdict.PASS) == 5


def test_source_that_cannot_open_reports_and_ends(tmp_path: Path, stub_inspector: type) -> None:
    pipeline, results, events = _folder_pipeline(tmp_path / "missing", stub_inspector())
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert not results
    (failed,) = events.of(EventKind.SOURCE_FAILED)
    assert "missing: folder not found" in failed.message


def test_video_through_the_pipeline(tmp_path: Path, stub_inspector: type) -> None:
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (56, 56))
    for i in range(7):
        writer.write(np.full((56, 56, 3), 30 * i, np.uint8))
    writer.release()
    results: list[InspectionResult] = []
    pipeline = Pipeline(VideoSource(VideoSpec(path=path)), stub_inspector(), consumers=[results.append])
    with pipeline:
        pipeline.start()
        assert pipeline.wait(30)
    assert [r.frame_id for r in results] == list(range(7))


def test_error_result_is_never_pass() -> None:
    result = error_result(
        frame_id=3, timestamp=1.0, source="cam", recipe="r", error="camera hiccup", path="a.png"
    )
    assert result.verdict is Verdict.ERROR and result.score is None and result.error == "camera hiccup"


def test_soak_short(rng: np.random.Generator, stub_inspector: type) -> None:
    """A shortened `benchmarks/soak.py`: thousands of frames, every one recorded, no thread growth."""
    threads_before = threading.active_count()
    sent = 3000
    images = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(4)]
    recorded: list[int] = []
    thread_counts: list[int] = []

    def record(result: InspectionResult) -> None:
        recorded.append(result.frame_id)
        if result.frame_id % 500 == 0:
            thread_counts.append(threading.active_count())

    pipeline = Pipeline(ArraySource(images, loop=True, count=sent), stub_inspector(), consumers=[record])
    with pipeline:
        pipeline.start()
        assert pipeline.wait(60)
    assert len(recorded) == sent and recorded == list(range(sent))
    assert set(thread_counts) == {threads_before + 2}             # capture + worker, nothing more
    assert threading.active_count() == threads_before
    assert pipeline.stats().errors == 0


def test_deferred_typing_runs_after_the_consumers_and_before_the_next_frame(rng: np.random.Generator) -> None:
    from inspector.defect_typing import PendingTyping
    from inspector.results import DefectRegion

    log: list[str] = []
    region = DefectRegion(x=1, y=1, width=2, height=2, area_px=4, area_mm2=None, max_score=1.0, mean_score=1.0)

    class Typed:
        name, can_defer_typing = "typed", True
        asked: list[bool] = []

        def inspect(self, frame: Frame, *, defer_typing: bool = False) -> InspectionResult:
            log.append(f"inspect {frame.frame_id}")
            self.asked.append(defer_typing)

            def work() -> tuple[DefectRegion, ...]:
                log.append(f"type {frame.frame_id}")
                return (region,)

            return InspectionResult(frame_id=frame.frame_id, timestamp=frame.timestamp, source=frame.source,
                                    recipe=self.name, model_version="v1", verdict=Verdict.FAIL, score=1.0,
                                    regions=(region,), typing=PendingTyping(work, (region,)) if defer_typing else None)

    def consume(result: InspectionResult) -> None:
        log.append(f"shown {result.frame_id} typed={result.typing is None or result.typing.done}")

    frames = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    inspector = Typed()
    with Pipeline(ArraySource(frames), inspector, consumers=[consume], defer_typing=True) as pipeline:
        pipeline.start()
        assert pipeline.wait(10)
    assert log == ["inspect 0", "shown 0 typed=False", "type 0", "inspect 1", "shown 1 typed=False", "type 1"]
    log.clear()
    with Pipeline(ArraySource(frames), inspector, consumers=[consume]) as pipeline:   # the default: inline
        pipeline.start()
        assert pipeline.wait(10)
    assert log == ["inspect 0", "shown 0 typed=True", "inspect 1", "shown 1 typed=True"]
    assert inspector.asked == [True, True, False, False]
