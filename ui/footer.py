"""The main window's footer: what actually runs, and whether results wait for the store.

`run_info` writes the line under the station screen from the controller's `StationSnapshot` (the
recipe, model, device and source actually loaded while a run is on; the operator's selection
otherwise). `StoreStatus` is the status-bar warning shown while the statistics store does not take
results and they wait in the recorder's local journal.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLabel, QWidget

from inspector.controller import RunState, StationSnapshot
from inspector.recording import ResultRecorder
from ui.live_view import short_source

__all__ = ["ACTIVE_STATES", "StoreStatus", "kiosk_info", "run_info"]

# States in which the footer names what the controller loaded rather than what is selected.
ACTIVE_STATES = (RunState.STARTING, RunState.RUNNING, RunState.PAUSED, RunState.STOPPING)
SEPARATOR = "   ·   "


def _loaded_to_name(snapshot: StationSnapshot, selected: Path | None) -> Path | None:
    """The recipe the controller loaded, where it is the one to name (while a run is on, or when it is the recipe
    selected); None: name the selection."""
    recipe = snapshot.recipe
    return recipe if recipe is not None and (snapshot.state in ACTIVE_STATES or recipe == selected) else None


def run_info(snapshot: StationSnapshot, *, selected: Path | None, source_text: str) -> str:
    """The footer line, e.g. ``Recipe: bracket · model v3 · on cpu · Source: parts · State: running``.

    Args:
        snapshot: the controller's state, as last rendered.
        selected: the recipe chosen in the recipe box.
        source_text: the source box's text (empty: the recipe's own source).
    """
    if (loaded := _loaded_to_name(snapshot, selected)) is not None:
        parts = [f"Recipe: {loaded.stem}"]
        if snapshot.model_version:
            parts.append(f"model {snapshot.model_version}")
        if snapshot.device:
            parts.append(f"on {snapshot.device}")
        parts.append(f"Source: {short_source(snapshot.source) if snapshot.source else '—'}")
    else:
        parts = [f"Recipe: {selected.stem if selected else '—'} (selected)",
                 f"Source: {source_text or 'of the recipe'}"]
    parts.append(f"State: {snapshot.state.value.replace('_', ' ')}")
    return SEPARATOR.join(parts)


def kiosk_info(snapshot: StationSnapshot, *, selected: Path | None, lot: str) -> str:
    """The kiosk's headline over the verdict, e.g. ``bracket_a — Bracket A (part 4711-200) · model v3 · Lot
    2412-07``: with the toolbar and footer hidden, which product runs and for which lot must still be seen at a
    changeover.

    Args:
        snapshot: the controller's state, as last rendered (its recipe while a run is on).
        selected: the recipe chosen in the recipe box (shown when nothing runs).
        lot: the lot number stamped on results ("" for none).
    """
    if (loaded := _loaded_to_name(snapshot, selected)) is not None:    # its product text and model
        parts = [f"{loaded.stem} — {snapshot.product}" if snapshot.product else loaded.stem]
        if snapshot.model_version:
            parts.append(f"model {snapshot.model_version}")
    else:
        parts = [selected.stem if selected is not None else "no recipe"]
    parts.append(f"Lot {lot}" if lot else "no lot number")
    return SEPARATOR.join(parts)


class StoreStatus(QLabel):
    """"Store offline: N waiting" in amber while the recorder cannot reach the store; hidden otherwise."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("", parent)
        self.setObjectName("storeStatus")
        self.setStyleSheet("QLabel#storeStatus { color: #b45309; font-weight: bold; }")
        self.setVisible(False)

    def show_recorder(self, recorder: ResultRecorder) -> None:
        """Read the recorder's last store error and backlog (cheap: two locked reads) and show them."""
        error = recorder.last_error
        if error is None:
            self.setVisible(False)
            return
        self.setText(f"Store offline: {recorder.pending} waiting")
        self.setToolTip(f"Results are kept in {recorder.journal_path} and sent in order when "
                        f"the store is back.\n{error}")
        self.setVisible(True)
