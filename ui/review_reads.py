"""The review screen's reads, run on `ui.workers.QueryRunner` threads: a page of inspections with their
thumbnails, and the selected inspection's picture and heatmap overlay. Plain data only (no widgets)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from inspector.recipe import Recipe
    from inspector.store import InspectionRecord, Store, YieldRow
    from ui.engine import StationInspector

log = logging.getLogger(__name__)

THUMB_PX = 56                # thumbnail height in the table: enough to recognise a part, cheap to load
PAGE_SIZE = 200              # inspections listed at once (newest first)
DEFAULT_DEFECT_CLASSES = ("scratch", "crack", "contamination", "missing", "deformation", "other")


@dataclass(frozen=True, kw_only=True)
class ReviewFilters:
    """The review table's filters, as `inspector.store.Store.inspections` takes them (None: any)."""

    verdict: str | None          # "PASS" / "REVIEW" / "FAIL" / "ERROR"
    recipe: str | None           # recipe name
    since: float | None          # seconds since the epoch
    until: float | None


@dataclass(frozen=True, kw_only=True)
class ReviewAnswer:
    """What one refresh reads (on a query thread): records and their thumbnails, plain data."""

    recipes: list[YieldRow]                         # yield rows by recipe: the recipe filter's choices
    records: list[InspectionRecord]                 # newest first
    thumbnails: list[np.ndarray | None]             # (THUMB_PX, w, 3) uint8 BGR per record, None if no image


def _picture(record: InspectionRecord) -> np.ndarray | None:
    """The record's archived image, else its source file; None when both are gone."""
    image = _read_image(record.image_path) if record.image_path else None
    return image if image is not None else _read_image(record.path)


def _thumbnail(record: InspectionRecord) -> np.ndarray | None:
    """The record's picture scaled to THUMB_PX high; None when gone."""
    image = _picture(record)
    if image is None:
        return None
    scale = THUMB_PX / image.shape[0]
    return cv2.resize(image, (max(1, int(image.shape[1] * scale)), THUMB_PX), interpolation=cv2.INTER_AREA)


def query_inspections(store: Store, filters: ReviewFilters) -> Callable[[], ReviewAnswer]:
    """The store reads and image decoding of one refresh, as a call for a `QueryRunner` thread."""

    def query() -> ReviewAnswer:
        records = store.inspections(limit=PAGE_SIZE, verdict=filters.verdict, recipe=filters.recipe,
                                    since=filters.since, until=filters.until)
        return ReviewAnswer(recipes=store.yield_summary(group_by="recipe"), records=records,
                            thumbnails=[_thumbnail(record) for record in records])

    return query


def read_record_images(record: InspectionRecord) -> Callable[[], tuple[np.ndarray | None, np.ndarray | None]]:
    """The selected inspection's picture (its archived image, else its source file) and heatmap overlay, read
    as a call for a `QueryRunner` thread: a 5 MP PNG takes about 0.1 s to decode, twice per selection."""

    def read() -> tuple[np.ndarray | None, np.ndarray | None]:
        return _picture(record), _read_image(record.overlay_path)

    return read


def _read_image(path: str | None) -> np.ndarray | None:
    if not path or not Path(path).is_file():
        return None
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None


def recipe_file_named(name: str, recipes: Sequence[Path],
                      loaded: Callable[[Path], StationInspector | None]) -> Path | None:
    """The recipe file of a recipe name as the store keeps it: a file stem first, then the name inside each loaded
    recipe (``loaded``: the station's model of a file, or None when it has not loaded it)."""
    for path in recipes:
        if path.stem == name:
            return path
    for path in recipes:
        inspector = loaded(path)
        if inspector is not None and inspector.name == name:
            return path
    return None


def recipe_defect_classes(path: Path | None, loaded: Recipe | None) -> tuple[str, ...]:
    """The classes a reviewer picks from for a recipe: its own (``loaded``, the recipe of a model the station has
    loaded, else read from its file at ``path``), or `DEFAULT_DEFECT_CLASSES` when it names none or cannot be read."""
    recipe = loaded
    if recipe is None and path is not None:
        from inspector.recipe import load_recipe

        try:
            recipe = load_recipe(path)
        except Exception as exc:           # a broken file: say so, offer the generic classes
            log.warning("defect classes of %s unavailable: %s", path, exc)
    return (tuple(recipe.defect_classes) if recipe is not None else ()) or DEFAULT_DEFECT_CLASSES
