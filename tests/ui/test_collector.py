"""Garbage cycles are freed on the GUI thread, never on the worker that happened to allocate."""

from __future__ import annotations

import gc
import threading

from ui.collector import GuiThreadCollector

CYCLES = 5000


class _Cycle:
    """An object in a reference cycle that records the thread it was freed on."""

    def __init__(self, freed_on: list[str]) -> None:
        self.me = self
        self.freed_on = freed_on

    def __del__(self) -> None:
        self.freed_on.append(threading.current_thread().name)


def test_cycles_made_on_a_worker_are_collected_on_the_gui_thread(qtbot) -> None:
    enabled_before = gc.isenabled()           # False: the fixture turns automatic collection off in GUI tests
    gc.enable()                               # as at start-up, before the app's collector exists
    gc.collect()
    collector = GuiThreadCollector(interval_ms=10)
    freed_on: list[str] = []
    try:
        assert not gc.isenabled()

        def work() -> None:          # enough garbage to pass the youngest generation's threshold many times
            for _ in range(CYCLES):
                _Cycle(freed_on)

        worker = threading.Thread(target=work, name="worker")
        worker.start()
        worker.join()
        assert freed_on == []                       # nothing collected on the worker
        qtbot.waitUntil(lambda: len(freed_on) == CYCLES, timeout=5000)
        assert set(freed_on) == {threading.main_thread().name}
        assert collector.collections >= 1
    finally:
        collector.stop()
    assert gc.isenabled()                     # given back as it was when the collector started
    if not enabled_before:
        gc.disable()


def test_settle_freezes_what_lives_then_once_only() -> None:
    import torch  # noqa: F401  (settle waits for the engine's import)

    before = gc.get_freeze_count()
    collector = GuiThreadCollector(interval_ms=60_000)
    try:
        engine = [[i] for i in range(1000)]         # long-lived containers, as torch's import leaves
        collector.settle()
        frozen = gc.get_freeze_count()
        assert frozen >= before + len(engine)       # out of the collector's view: its ticks no longer walk them
        later = [[i] for i in range(1000)]          # a second load's objects stay collectable
        collector.settle()
        assert gc.get_freeze_count() == frozen and later
    finally:
        collector.stop()
        if before == 0:
            gc.unfreeze()
