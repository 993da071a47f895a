"""The engine as the main window sees it: typed protocols and the default entry points.

`MainWindow` takes its engine calls as arguments (``load_inspector``, ``open_source``, ``make_pipeline``)
so that tests can drive the real pipeline with a cheap stand-in inspector. This module says what those
calls return (`StationInspector`: what `inspector.station.Station` offers the window) and holds the
defaults, which import the engine only when called: the window opens before torch is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from inspector.errors import CaptureError
from inspector.pipeline import FrameInspector

if TYPE_CHECKING:
    from inspector.capture import FrameSource
    from inspector.recipe import Recipe

__all__ = [
    "LoadInspector",
    "OpenSource",
    "RecipeInspector",
    "StationInspector",
    "default_load_inspector",
    "default_open_source",
    "recipe_source",
    "warm_up",
]

log = logging.getLogger(__name__)


class StationInspector(FrameInspector, Protocol):
    """A loaded recipe's inspector, as the window renders it (`inspector.station.Station`, or a stand-in)."""

    @property
    def model_version(self) -> str:
        """The model version in use ("v3")."""
        ...

    @property
    def device(self) -> str:
        """Where the model runs ("cpu", "cuda:0")."""
        ...

    @property
    def thresholds(self) -> tuple[float, float, float]:
        """(review, fail, pixel) anomaly scores."""
        ...

    @property
    def warnings(self) -> Sequence[str]:
        """Sentences for the operator found while loading (e.g. "GPU unavailable: running on CPU")."""
        ...


@runtime_checkable
class RecipeInspector(Protocol):
    """An inspector that knows its recipe (`Station` does; test stand-ins may not)."""

    @property
    def recipe(self) -> Recipe:
        """The validated recipe the model was loaded for."""
        ...


LoadInspector = Callable[[Path], StationInspector]     # recipe file -> its loaded inspector
OpenSource = Callable[[str], "FrameSource"]            # source text -> a source, not opened yet


def default_load_inspector(recipe_path: Path) -> StationInspector:
    """Load a recipe and its trained model as the real `Station` (on a controller thread)."""
    from inspector.recipe import load_recipe
    from inspector.station import Station

    return Station.load(load_recipe(recipe_path))


def warm_up() -> None:
    """Import what loading a recipe needs (torch, timm, the detectors): the app's background job at start-up
    (`ui.workers.call_as_job`).

    The first Start then loads only the model (Start to running: 1.3 s instead of 7.1 s with the demo
    recipe on a 2-core CPU), and the imports' stall (loading torch's shared libraries holds the interpreter
    lock for about 0.4 s, on whichever thread imports) falls while the window waits for its operator, not
    as the live view begins. A failure is only logged: the Start that needs the engine says what is wrong.
    """
    from inspector.station import Station

    try:
        Station.import_engine()
    except (ImportError, OSError) as exc:    # a broken install: Start reports it where it is needed
        log.warning("the engine could not be imported ahead of Start: %s: %s", type(exc).__name__, exc)


def default_open_source(text: str) -> FrameSource:
    """A camera index, stream URL, video file or image folder, parsed by `inspector.capture`."""
    from inspector.capture import open_source, parse_source

    return open_source(parse_source(text))


def recipe_source(inspector: StationInspector) -> FrameSource:
    """The source a recipe names (used when the source box is empty).

    Raises:
        CaptureError: the inspector knows no recipe to ask (a stand-in), so there is no source.
    """
    if not isinstance(inspector, RecipeInspector):
        msg = "no source: type a camera index, a stream URL, or pick a folder or video"
        raise CaptureError(msg)
    from inspector.capture import open_source

    return open_source(inspector.recipe.resolved_source())
