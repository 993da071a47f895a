"""What a station does with each result besides showing it: archive FAIL/REVIEW images, record to the store.

Shared by the app and ``inspector run``. `ResultRecorder.record` is a pipeline consumer: it runs on the
pipeline's worker thread and must be quick. `Archive.submit` and `Store.record` both only enqueue to
their own writer threads, so it is. The lot number and the archive of each recipe are set from another
thread (the GUI's); they are read under a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from inspector.results import InspectionResult

__all__ = ["ResultRecorder"]

log = logging.getLogger(__name__)


class ResultRecorder:
    """Stamps the lot on each result, archives it by its recipe's policy, and records it in the store.

    Args:
        store: an `inspector.store.Store`, or None (results are then only archived).
        on_warning: called with a sentence when the archive pauses (disk full, folder gone); any thread.
    """

    def __init__(self, store: Any | None, *, on_warning: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._on_warning = on_warning
        self._lock = threading.Lock()
        self._archives: dict[str, Any] = {}     # recipe name -> inspector.archive.Archive
        self._lot = ""

    @property
    def lot(self) -> str:
        with self._lock:
            return self._lot

    def set_lot(self, lot: str) -> None:
        """The lot number written with every result from now on ("" for none)."""
        with self._lock:
            self._lot = lot.strip()

    def use(self, inspector: Any) -> None:
        """Prepare the archive of an inspector's recipe (a `Station` has ``.recipe``) if it keeps one.

        Called before the recipe's first result (in the app: on the GUI thread when a recipe is loaded).
        """
        recipe = getattr(inspector, "recipe", None)
        if recipe is not None and hasattr(inspector, "attach_typer"):
            self._attach_typer(inspector, recipe.name)
        if recipe is None or not getattr(getattr(recipe, "archive", None), "enabled", False):
            return
        with self._lock:
            if recipe.name in self._archives:
                return
        from inspector.archive import Archive, ArchivePolicy

        review, fail, pixel = getattr(inspector, "thresholds", (None, None, None))
        try:
            archive = Archive(
                ArchivePolicy(
                    directory=recipe.archive_dir(),
                    save_pass_every=recipe.archive.save_pass_every,
                    max_bytes=int(recipe.archive.max_size_mb * 1024 * 1024),
                    # the same colour range as the station view, so archived overlays read the same
                    vmin=0.5 * pixel if pixel else None,
                    vmax=1.5 * pixel if pixel else None,
                ),
                on_warning=self._on_warning,
            )
        except Exception as exc:   # a folder that cannot be made, a bad policy: record without images
            message = f"archive of recipe {recipe.name} unavailable ({exc}); results are recorded without images"
            log.warning(message)
            if self._on_warning is not None:
                self._on_warning(message)
            return
        with self._lock:
            self._archives[recipe.name] = archive

    def record(self, result: InspectionResult) -> None:
        """Pipeline consumer (worker thread): archive, then record in the store."""
        with self._lock:
            lot, archive = self._lot, self._archives.get(result.recipe)
        if lot and not result.lot:
            result = dataclasses.replace(result, lot=lot)
        paths = archive.submit(result) if archive is not None else None
        if self._store is not None:
            self._store.record(result, image_path=str(paths.image) if paths and paths.image else None,
                               overlay_path=str(paths.overlay) if paths and paths.overlay else None)

    def close(self) -> None:
        """Close every archive (waits for queued images to be written)."""
        with self._lock:
            archives, self._archives = list(self._archives.values()), {}
        for archive in archives:
            try:
                archive.close()
            except Exception:
                log.exception("closing an archive failed")

    def _attach_typer(self, inspector: Any, recipe_name: str) -> None:
        """Give the station a defect typer that learns from the labels in this recorder's store."""
        from inspector.defect_typing import DefectTyper

        if self._store is None:
            return
        try:
            inspector.attach_typer(DefectTyper(self._store, recipe_name))
        except Exception as exc:   # typing is an aid: a store that cannot be read must not stop inspection
            message = f"defect typing of recipe {recipe_name} unavailable ({exc}); regions are not typed"
            log.warning(message)
            if self._on_warning is not None:
                self._on_warning(message)
