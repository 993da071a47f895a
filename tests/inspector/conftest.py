"""Fixtures for the engine's tests: small synthetic part images on disk, stub inspectors, thread checks."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.results import Frame, InspectionResult, Verdict
from tests.helpers.postgres import PostgresCluster, postgres_bin_dir


def part_image(rng: np.random.Generator, *, size: int = 56, defect: bool = False) -> np.ndarray:
    """A flat grey "part" with a darker disc and mild noise; a bright scratch when ``defect``.

    Returns:
        (size, size, 3) uint8 BGR.
    """
    image = np.full((size, size, 3), 150, np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 3, (90, 100, 110), thickness=-1)
    noise = rng.integers(-8, 9, image.shape, dtype=np.int16)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    if defect:
        cv2.line(image, (size // 4, size // 4), (3 * size // 4, size // 2), (255, 255, 255), 2)
    return image


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def make_folder(tmp_path: Path, rng: np.random.Generator) -> Callable[..., Path]:
    """Factory: write ``n`` PNG part images ``img_000.png``... into a new folder and return it."""
    counter = iter(range(1000))

    def make(n: int = 6, *, size: int = 56, name: str | None = None) -> Path:
        folder = tmp_path / (name or f"images_{next(counter)}")
        folder.mkdir(parents=True)
        for i in range(n):
            ok, data = cv2.imencode(".png", part_image(rng, size=size, defect=i % 3 == 2))
            assert ok
            (folder / f"img_{i:03d}.png").write_bytes(data.tobytes())
        return folder

    return make


@pytest.fixture
def image_folder(make_folder: Callable[..., Path]) -> Path:
    """A folder of six 56x56 PNG part images, ``img_000.png`` to ``img_005.png``."""
    return make_folder(6)


class StubInspector:
    """A `FrameInspector` with no model: PASS with the mean grey level as score, or FAIL above ``fail_above``.

    Args:
        name: the recipe name it reports.
        raise_on: frame ids for which `inspect` raises ``error``.
        delay_s: sleep per frame (a slow model).
        gate: frame id -> event `inspect` waits on before scoring that frame.
    """

    def __init__(
        self,
        name: str = "stub",
        *,
        raise_on: frozenset[int] = frozenset(),
        error: Exception | None = None,
        delay_s: float = 0.0,
        fail_above: float | None = None,
        gate: dict[int, threading.Event] | None = None,
    ) -> None:
        self.name = name
        self.raise_on = raise_on
        self.error = error or RuntimeError("stub model exploded")
        self.delay_s = delay_s
        self.fail_above = fail_above
        self.gate = gate or {}
        self.seen: list[int] = []
        self.threads: set[str] = set()
        self.started = threading.Event()   # set when the first inspect() begins

    def inspect(self, frame: Frame) -> InspectionResult:
        self.seen.append(frame.frame_id)
        self.started.set()
        self.threads.add(threading.current_thread().name)
        if frame.frame_id in self.gate:
            self.gate[frame.frame_id].wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if frame.frame_id in self.raise_on:
            raise self.error
        score = float(frame.image_bgr.mean()) / 255.0
        verdict = Verdict.FAIL if self.fail_above is not None and score > self.fail_above else Verdict.PASS
        return InspectionResult(
            frame_id=frame.frame_id,
            timestamp=frame.timestamp,
            source=frame.source,
            recipe=self.name,
            model_version="v0",
            verdict=verdict,
            score=score,
            image_bgr=frame.image_bgr,
            path=frame.path,
        )


@pytest.fixture
def stub_inspector() -> type[StubInspector]:
    """The `StubInspector` class (build one per test with the options it needs)."""
    return StubInspector


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail the test if it leaves a thread running (the pipeline must join everything it starts)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    while leaked and time.monotonic() < deadline:   # a thread finishing its last statement
        leaked[0].join(0.1)
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A real PostgreSQL server on a free loopback port for the whole session (Debian's ``postgresql``).

    Skips, with the reason, only where the server is not installed (``.ci/run`` installs it)."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    with PostgresCluster.start() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """A new, empty database on the session's PostgreSQL server; its SQLAlchemy URL."""
    # PostgreSQL cuts names at 63 bytes: a digest of the whole test id keeps parametrized cases apart
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40] + "_" + digest
    return postgres_cluster.create_database(name)
