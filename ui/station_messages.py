"""What the station screen tells the operator about the run, as text: one home for those sentences.

`idle_banner` is the grey banner of every state that shows no verdict; `start_failure` names what
failed to start and how to fix it; `split_warnings` puts GPU warnings on their own line. The window
(`ui.main_window`) only decides where each sentence goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inspector.controller import RunState, StartFailed, StationSnapshot
from inspector.errors import CaptureError, ModelError, RecipeError, WeightsNotFound

__all__ = ["IDLE_BANNER", "FaultLine", "idle_banner", "sentence", "split_warnings", "start_failure"]

# What the grey banner says in each state that shows no verdict: (word, detail).
IDLE_BANNER: dict[RunState, tuple[str, str]] = {
    RunState.READY: ("READY", "choose a source and press Start (F5)"),
    RunState.STARTING: ("STARTING", ""),
    RunState.RUNNING: ("RUNNING", "waiting for the first part"),
    RunState.PAUSED: ("PAUSED", "Space to resume"),
    RunState.STOPPING: ("STOPPING", "finishing the part under inspection"),
    RunState.STOPPED: ("STOPPED", "F5 to start"),
    RunState.SOURCE_ENDED: ("SOURCE ENDED", "every image was inspected; F5 to run again"),
    RunState.FAULT: ("FAULT", "fix the fault above, then F5"),
}


@dataclass(frozen=True, kw_only=True)
class FaultLine:
    """One line of the fault banner (`ui.live_view.FaultBanner`)."""

    key: str          # which line it replaces: "camera", "model", "recipe", "source", ...
    text: str         # one sentence that says how to fix it


def idle_banner(snapshot: StationSnapshot) -> tuple[str, str]:
    """(word, detail) of the grey banner in ``snapshot``'s state; the controller's message where it helps."""
    word, detail = IDLE_BANNER[snapshot.state]
    if snapshot.state is RunState.STARTING:
        detail = snapshot.message
    elif snapshot.state is RunState.SOURCE_ENDED and snapshot.message:
        detail = f"{snapshot.message}; F5 to run again"
    return word, detail


def sentence(text: str) -> str:
    """``text`` ended by a full stop, unless it ends in one, or in a question or an exclamation ("... another
    program?. Check" read on the fault banner)."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else f"{text}."


def start_failure(failed: StartFailed) -> FaultLine:
    """Name what failed to start (weights, model, recipe, source) and how to fix it."""
    exc = failed.error
    text = str(exc) or type(exc).__name__
    if isinstance(exc, WeightsNotFound):
        return FaultLine(key="model", text=f"DINOv2 weights missing: {text}")
    if isinstance(exc, ModelError):
        return FaultLine(key="model",
                         text=f"Model missing for recipe {failed.recipe.stem}: {text} — or use the Teach tab.")
    if isinstance(exc, RecipeError):
        return FaultLine(key="recipe", text=f"Recipe problem: {text}")
    if isinstance(exc, CaptureError):
        return FaultLine(key="camera", text=f"Cannot open the source: {text}")
    return FaultLine(key="source", text=f"Cannot start: {type(exc).__name__}: {text}")


def split_warnings(warnings: Sequence[str]) -> tuple[str, str]:
    """(GPU warnings, the others), each joined with "; " ("" when none): the GPU line has its own key."""
    gpu = [w for w in warnings if "gpu" in w.lower() or "cuda" in w.lower()]
    other = [w for w in warnings if w not in gpu]
    return "; ".join(gpu), "; ".join(other)
