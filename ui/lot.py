"""The running lot at a station: its number and its counters, and what the operator is told when they change.

The number is stamped on every result by the recorder and kept with the window's settings as soon as it is typed
(a power cut closes no window). The counters are the parts recorded under that number since it was typed, or
since New lot: the recorder counts them in its journal too, in the commit of each result, with the lot number,
so a restart goes on from them under that number (the settings are the user's; the journal is the station's).
Typing another lot number over one in use starts the counters afresh (the parts are the next lot's); typing the
first number of a run that had none keeps them (those parts were this lot's, unnumbered).
"""

from __future__ import annotations

from PySide6.QtCore import QSettings

from inspector.recording import ResultRecorder
from inspector.results import Verdict, VerdictCounts
from ui.run_toolbar import LOT_SETTING

__all__ = ["LotCounter"]


class LotCounter:
    """The lot number and counters of a station window (GUI thread; the recorder takes them across threads)."""

    def __init__(self, recorder: ResultRecorder, settings: QSettings) -> None:
        self._recorder = recorder
        self._settings = settings
        self.counts = VerdictCounts()

    @property
    def number(self) -> str:
        return self._recorder.lot

    def restore(self, number: str) -> tuple[str, str]:
        """The last session's lot goes on: stamped from now on and counted from what the journal holds.

        Args:
            number: the lot number the window's settings remember; the journal's wins where it counted parts
                under one (the settings are the user's: another operator's login has none, or an older one).

        Returns:
            The lot number now, and the sentence for the status bar ("" when nothing was counted).
        """
        counts, kept = self._recorder.lot_counts, self._recorder.counted_lot
        if counts.inspected and kept is not None:
            number = kept
        self._recorder.set_lot(number)
        self.counts = counts
        if not counts.inspected:
            return self.number, ""
        return self.number, (f"Lot {self.number or '(no number)'} goes on from {counts.inspected} inspected; "
                             "New lot (Ctrl+N) starts the counters afresh")

    def add(self, verdict: Verdict) -> None:
        self.counts = self.counts.add(verdict)

    def new_lot(self) -> VerdictCounts:
        """Start the counters afresh (the recorder's too); returns what they held."""
        ended, self.counts = self.counts, VerdictCounts()
        self._recorder.new_lot()
        return ended

    def set_number(self, text: str) -> str | None:
        """The operator typed a lot number: stamped from now on and on disk at once; returns the sentence for the
        status bar, or None when the number did not change. Another number over one in use starts the counters
        afresh."""
        before = self.number
        self._recorder.set_lot(text)
        if (number := self.number) == before:
            return None
        self._settings.setValue(LOT_SETTING, number)
        self._settings.sync()       # on disk now: a power cut must not take it (its counts are in the journal)
        shown = number or "(none)"
        if not self.counts.inspected:
            return f"Lot: {shown}"
        if not before:              # the run so far had no number: its parts are this lot's
            return (f"Lot {shown}: the counters go on from {self.counts.inspected} inspected (recorded without a lot "
                    "number); New lot (Ctrl+N) starts them afresh")
        ended = self.new_lot()
        done = f"{ended.yield_pct:.1f} % yield" if ended.yield_pct is not None else "none judged"
        return f"Lot {shown}: the counters start afresh (lot {before} ended at {ended.inspected} inspected, {done})"
