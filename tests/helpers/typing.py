"""A taught station whose typer knows two reviewer labels, and a way to see when the typer runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from inspector.defect_typing import DefectTyper
from inspector.recipe import load_recipe
from inspector.station import Station
from inspector.store import Store
from models.defect_types import UNKNOWN
from tests.helpers.images import textured_part, with_defect

# what a defect of those tests is typed: a scratch, or unknown where it lies beyond the two scratches' spread
TYPED: frozenset[str | None] = frozenset({"scratch", UNKNOWN})


def labelled_station(recipe: Path, store: Store, rng: np.random.Generator) -> Station:
    """The recipe's station; two earlier defects of it are in ``store``, labelled "scratch" by a reviewer (a lone
    label gives no guess: `DefectTyper.can_guess`)."""
    station = Station.load(load_recipe(recipe))
    station.attach_typer(DefectTyper(store, station.name, refresh_s=0.0))
    for _ in range(2):
        store.record(station.inspect_image(with_defect(textured_part(rng), rng)[0]))
    store.flush()
    for record in store.inspections(recipe=station.name):
        store.set_defect_class("scratch", user="qa", region_id=record.regions[0].id)
    return station


def watch_typing(station: Station, before_typing: Callable[[], None]) -> None:
    """Call ``before_typing`` each time a typer the station is given later (the recorder's, at Start) types."""
    real_attach = station.attach_typer

    def attach(typer: Any) -> None:
        real_predict = typer.predict

        def predict(embeddings: Any, *, pool: bool = True) -> Any:
            before_typing()
            return real_predict(embeddings, pool=pool)

        typer.predict = predict
        real_attach(typer)

    station.attach_typer = attach  # type: ignore[method-assign]
