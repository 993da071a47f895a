"""The statistics store's CSV export: matching inspections, one row each, written atomically.

`StoreExport` is a mixin of `inspector.store.Store`. The file is built from the database in chunks,
streamed to a temporary file and replaced in one step (`models.files.atomic_open_text`), so a reader or
a crash never sees half an export, and a million rows never sit in memory; text a spreadsheet would run
as a formula is neutralised by `inspector._csv.csv_cell`.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from pathlib import Path
from typing import Any, Unpack

import sqlalchemy as sa

from inspector._csv import csv_cell
from inspector.errors import StoreError
from inspector.store.queries import InspectionFilter, inspection_conditions
from inspector.store.schema import feedback, inspections, regions
from models.files import atomic_open_text

__all__ = ["StoreExport"]

logger = logging.getLogger("inspector.store")


class StoreExport:
    """Export of the store's inspections to CSV."""

    # set by Store.__init__
    _engine: sa.Engine
    _tz: dt.tzinfo | None

    def export_csv(
        self,
        path: str | Path,
        **filters: Unpack[InspectionFilter],
    ) -> int:
        """Write the matching inspections to a CSV file (UTF-8, oldest first), atomically.

        Columns: the inspection's fields, ``local_time`` (ISO 8601 in the store's time zone),
        ``regions`` (count), ``defect_classes`` (reviewers', ``;``-separated), ``predicted_classes``
        (the few-shot typer's guesses) and ``label`` (latest feedback).
        Text that a spreadsheet would run as a formula (starting with ``= + - @``) is prefixed
        with ``'``.

        Returns:
            The number of inspections written.

        Raises:
            StoreError: the file cannot be written.
        """
        path = Path(path)
        conds = inspection_conditions(**filters)
        n_regions = (sa.select(sa.func.count()).where(regions.c.inspection_id == inspections.c.id)
                     .scalar_subquery().label("regions"))
        label = (sa.select(feedback.c.label).where(feedback.c.inspection_id == inspections.c.id)
                 .order_by(feedback.c.time.desc(), feedback.c.id.desc()).limit(1)
                 .scalar_subquery().label("label"))
        stmt = (sa.select(inspections, n_regions, label).where(*conds)
                .order_by(inspections.c.time, inspections.c.id))
        columns = ["id", "time", "local_time", "recipe", "model_version", "line", "station", "lot", "source",
                   "frame_id", "path", "verdict", "score", "latency_ms", "regions", "defect_classes",
                   "predicted_classes", "label",
                   "image_path", "overlay_path", "error"]
        count = 0
        try:
            with atomic_open_text(path) as handle, self._engine.connect() as conn:
                writer = csv.writer(handle)
                writer.writerow(columns)
                for chunk in (conn.execution_options(stream_results=True, yield_per=1000)
                              .execute(stmt).mappings().partitions()):
                    classes = self._classes_of(conn, [r["id"] for r in chunk])
                    predicted = self._classes_of(conn, [r["id"] for r in chunk], regions.c.predicted_class)
                    for r in chunk:
                        values = {**r, "local_time": dt.datetime.fromtimestamp(r["time"], tz=self._tz)
                                  .isoformat(timespec="milliseconds"),
                                  "defect_classes": ";".join(classes.get(r["id"], ())),
                                  "predicted_classes": ";".join(predicted.get(r["id"], ()))}
                        writer.writerow([csv_cell(values[c]) for c in columns])
                        count += 1
        except OSError as exc:
            msg = (f"cannot write the CSV export {path}: {exc.strerror or exc}; "
                   "check the folder exists and is writable")
            raise StoreError(msg) from exc
        logger.info("exported %d inspection(s) to %s", count, path)
        return count

    @staticmethod
    def _classes_of(conn: sa.Connection, ids: list[int],
                    column: sa.Column[Any] = regions.c.defect_class) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        stmt = (sa.select(regions.c.inspection_id, column).distinct()
                .where(regions.c.inspection_id.in_(ids), column.is_not(None))
                .order_by(regions.c.inspection_id, column))
        for i, c in conn.execute(stmt):
            out.setdefault(i, []).append(c)
        return out
