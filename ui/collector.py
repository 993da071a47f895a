"""Python's cyclic garbage collection, run on the GUI thread only.

The collector runs on whichever thread happens to allocate when a generation's count passes its
threshold. In this app that is often a worker (the pipeline, a review or teach job). If the cycle
it frees holds a Qt wrapper (a closed dialog and its slots, a window of a finished session), the
C++ object is destroyed on that worker, off the thread that owns it, and Qt can crash: a
segmentation fault, at a random moment, far from its cause.

`GuiThreadCollector` turns automatic collection off and collects from a timer on the GUI thread
instead, one generation at a time as the counts ask for it, as the calibre e-book manager does
(``calibre.gui2.GarbageCollector``). Reference counting, which frees most objects, is untouched.
With `gc.freeze` at start-up (``ui.app.main``) a collection walks only what was made since, so a
tick costs well under a millisecond; `settle` freezes again once the engine (torch) has loaded.

Example:
    >>> collector = GuiThreadCollector(parent=window)   # in the GUI thread, after gc.freeze()
    >>> window.engine_loaded.connect(collector.settle)   # freeze once more when torch has been imported
    >>> collector.stop()                                 # automatic collection back on
"""

from __future__ import annotations

import gc
import sys
from typing import Final

from PySide6.QtCore import QObject, QTimer

__all__ = ["COLLECT_INTERVAL_MS", "GuiThreadCollector"]

# How often the GUI thread looks at the collector's counts: often enough that garbage cycles do not
# pile up (an inspection makes a few hundred objects), rarely enough to cost nothing measurable.
COLLECT_INTERVAL_MS: Final = 1000


class GuiThreadCollector(QObject):
    """Disables automatic garbage collection and collects on the GUI thread from a timer.

    Args:
        interval_ms: time between checks of the collector's counts.
        parent: the Qt parent (the main window), which keeps it alive.
    """

    def __init__(self, interval_ms: int = COLLECT_INTERVAL_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        self.collections = 0            # generations collected so far (for tests and logs)
        self._settled = False           # `settle` has frozen the engine's objects
        gc.disable()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)
        self._timer.start()

    def check(self) -> None:
        """Collect the oldest generation whose count has passed its threshold, as the collector would."""
        thresholds = gc.get_threshold()
        counts = gc.get_count()
        for generation in (2, 1, 0):
            if thresholds[generation] and counts[generation] > thresholds[generation]:
                gc.collect(generation)
                self.collections += 1
                return

    def settle(self) -> None:
        """Freeze what lives now, the first time it is called after torch was imported (the app's warm-up job
        ended, or ``MainWindow.engine_loaded``: a recipe loaded, a teaching or a batch review ended).

        torch, timm and the detectors are imported by the warm-up (``ui.engine.warm_up``) or whatever needs
        them first, after the start-up freeze: some 650,000 objects that live as long as the app. Left
        young, the timer's collections walk them, 0.2 s each on the GUI thread (generation 0, then 1, then
        2, a frame skipped each time). Once only: later loads make a model and few other objects, and a
        model dropped at a recipe switch is freed by reference counting (it holds no cycles), frozen or
        not, while each freeze would also keep whatever cycles are garbage at that moment.
        """
        if not self._settled and "torch" in sys.modules:
            self._settled = True
            gc.freeze()

    def stop(self) -> None:
        """Stop the timer and give collection back to the interpreter (as it was before)."""
        self._timer.stop()
        if self._was_enabled:
            gc.enable()
