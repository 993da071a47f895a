"""The From/To date filter of the statistics and review screens, which follows now until someone sets it.

A station stays open for days: a range fixed at launch ("the last 7 days, up to tomorrow") stops listing
new inspections a day later. `FollowingRange` keeps the window rolling (the last ``days`` days up to
now) and shows it in the two editors; once someone edits either date, it stays where they put it.
"""

from __future__ import annotations

import time
from typing import Final

from PySide6.QtCore import QDateTime, Slot
from PySide6.QtWidgets import QDateTimeEdit

__all__ = ["DEFAULT_DAYS", "FollowingRange"]

DEFAULT_DAYS: Final = 7          # the window shown at launch (what the screens showed before: a week)
AHEAD_S: Final = 60              # "now" is a minute ahead: a result recorded while the query runs is listed


class FollowingRange:
    """Two date editors that follow now (a rolling ``days``-day window) until one of them is edited.

    Args:
        since_edit: the "From" editor.
        until_edit: the "To" editor.
        days: length of the rolling window.
    """

    def __init__(self, since_edit: QDateTimeEdit, until_edit: QDateTimeEdit, *, days: int = DEFAULT_DAYS) -> None:
        self.since_edit, self.until_edit = since_edit, until_edit
        self.days = days
        self.following = True
        self._setting = False
        for edit in (since_edit, until_edit):
            edit.setCalendarPopup(True)
            edit.setDisplayFormat("yyyy-MM-dd HH:mm")
            edit.dateTimeChanged.connect(self._on_edited)
        self.bounds()

    def bounds(self) -> tuple[float, float]:
        """(since, until) in seconds since the epoch; while following, recomputed from now and shown."""
        if self.following:
            now = time.time()
            self._show(now - self.days * 86400, now + AHEAD_S)
        return (float(self.since_edit.dateTime().toSecsSinceEpoch()),
                float(self.until_edit.dateTime().toSecsSinceEpoch()))

    def set_range(self, since: float, until: float) -> None:
        """A fixed range (no longer following now)."""
        self.following = False
        self._show(since, until)

    def follow_now(self) -> None:
        self.following = True
        self.bounds()

    def _show(self, since: float, until: float) -> None:
        self._setting = True
        try:
            self.since_edit.setDateTime(QDateTime.fromSecsSinceEpoch(int(since)))
            self.until_edit.setDateTime(QDateTime.fromSecsSinceEpoch(int(until) + 1))
        finally:
            self._setting = False

    @Slot()
    def _on_edited(self) -> None:
        if not self._setting:            # someone chose a date: keep it
            self.following = False
