"""StationController without Qt: states, a late result after Stop, end of source, a refused switch."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from inspector.capture import ArraySource
from inspector.controller import (
    RecipeSwitchFailed,
    ResultArrived,
    RunState,
    StartFailed,
    StateChanged,
    StationController,
)
from inspector.errors import ModelError
from inspector.results import Frame, InspectionResult, Verdict

WAIT_S = 15.0


class _Gate:
    """A stand-in model (plain numpy): each frame waits until the test opens the gate."""

    def __init__(self, name: str = "demo") -> None:
        self.name, self.model_version, self.device = name, "v1", "cpu"
        self.gate = threading.Event()
        self.entered = threading.Event()

    def inspect(self, frame: Frame) -> InspectionResult:
        self.entered.set()
        self.gate.wait(WAIT_S)
        return InspectionResult(frame_id=frame.frame_id, timestamp=frame.timestamp, source=frame.source,
                                recipe=self.name, model_version="v1", verdict=Verdict.PASS, score=0.1)


class _Recorder:
    def __init__(self) -> None:
        self.recorded: list[int] = []

    def use(self, inspector: object) -> None:
        pass

    def record(self, result: InspectionResult) -> None:
        self.recorded.append(result.frame_id)


def _until(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _controller(inspectors: dict[str, object], images: list[np.ndarray], *, loop: bool):
    events: list[object] = []
    recorder = _Recorder()

    def load(path: Path) -> object:
        found = inspectors[path.stem]
        if isinstance(found, Exception):
            raise found
        return found

    controller = StationController(
        load_inspector=load, open_source=lambda text: ArraySource(images, loop=loop, fps=100),
        recipe_source=lambda inspector: None, recorder=recorder, on_event=events.append)
    return controller, events, recorder


def test_stop_returns_at_once_and_the_late_result_is_recorded_but_not_current() -> None:
    model = _Gate()
    images = [np.zeros((28, 28, 3), np.uint8)]
    controller, events, recorder = _controller({"demo": model}, images, loop=True)
    assert controller.state is RunState.READY
    controller.start(Path("demo.yaml"), source_text="memory")
    assert model.entered.wait(WAIT_S)
    _until(lambda: controller.state is RunState.RUNNING)
    started = time.monotonic()
    controller.stop()
    assert time.monotonic() - started < 0.3                      # the frame is still inside the model
    assert controller.state is RunState.STOPPING
    model.gate.set()
    _until(lambda: controller.state is RunState.STOPPED)
    late = [e for e in events if isinstance(e, ResultArrived)]
    assert late and not late[-1].current and late[-1].result.frame_id in recorder.recorded
    controller.shutdown()


def test_a_folder_source_ends_in_source_ended_after_every_frame() -> None:
    model = _Gate()
    model.gate.set()
    controller, events, recorder = _controller({"demo": model}, [np.zeros((28, 28, 3), np.uint8)] * 5,
                                               loop=False)
    controller.start(Path("demo.yaml"), source_text="memory")
    _until(lambda: controller.state is RunState.SOURCE_ENDED)
    assert len(recorder.recorded) == 5
    assert all(e.current for e in events if isinstance(e, ResultArrived))
    assert "5 frames inspected" in controller.snapshot.message
    controller.shutdown()


def test_a_failed_switch_keeps_the_running_recipe_and_a_failed_start_is_a_fault() -> None:
    model = _Gate()
    model.gate.set()
    missing = ModelError("recipe 'other' has no trained model")
    controller, events, _ = _controller({"demo": model, "other": missing},
                                        [np.zeros((28, 28, 3), np.uint8)], loop=True)
    controller.start(Path("demo.yaml"), source_text="memory")
    _until(lambda: controller.state is RunState.RUNNING)
    controller.switch_recipe(Path("other.yaml"))
    _until(lambda: any(isinstance(e, RecipeSwitchFailed) for e in events))
    failed = next(e for e in events if isinstance(e, RecipeSwitchFailed))
    assert failed.running == Path("demo.yaml") and "no trained model" in failed.reason
    assert controller.snapshot.recipe == Path("demo.yaml") and controller.state is RunState.RUNNING
    controller.stop()
    _until(lambda: controller.state is RunState.STOPPED)
    controller.start(Path("other.yaml"), source_text="memory")
    _until(lambda: controller.state is RunState.FAULT)
    assert any(isinstance(e, StartFailed) for e in events)
    assert all(isinstance(e.snapshot.state, RunState) for e in events if isinstance(e, StateChanged))
    controller.shutdown()
