"""Reviewers' input to the statistics store: labels for inspections and defect classes for regions.

`StoreFeedback` is a mixin of `inspector.store.Store`. Unlike results, which wait on the writer's queue,
these are written at once on the caller's thread, in one transaction each, and a database error comes
back as a `StoreError` naming the store and what was written.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from inspector.errors import StoreError
from inspector.store.queries import check_id
from inspector.store.rollup import recount_regions
from inspector.store.schema import WriteTransaction, feedback, inspections, new_id, regions

__all__ = ["StoreFeedback"]


class StoreFeedback:
    """Reviewers' labels and classes, written at once (not queued)."""

    # set by Store.__init__
    _engine: sa.Engine
    display_name: str

    def add_feedback(self, inspection_id: int, label: str, *, user: str, note: str = "",
                     time_s: float | None = None) -> int:
        """Record a reviewer's label for an inspection.

        Args:
            inspection_id: the inspection.
            label: ``"good"`` or one of the recipe's defect classes (the caller checks which).
            user: who said so.
            note: free text.
            time_s: when (seconds since the epoch); None = now.

        Returns:
            The feedback row's id.

        Raises:
            StoreError: no such inspection, an empty label or user, or the database refused.
        """
        _require_text(label=label, user=user)
        check_id(inspection_id, self.display_name)
        row = {"inspection_id": inspection_id, "label": label, "user": user, "note": note,
               "time": time.time() if time_s is None else time_s}
        what = f"feedback {label!r} for inspection {inspection_id}"
        with WriteTransaction(self._engine, self.display_name, what) as conn:
            exists = sa.select(inspections.c.id).where(inspections.c.id == inspection_id)
            if conn.execute(exists).first() is None:
                msg = f"no inspection with id {inspection_id} in {self.display_name}; feedback not recorded"
                raise StoreError(msg)
            return int(new_id(conn.execute(sa.insert(feedback), row)))

    def set_defect_class(self, defect_class: str, *, user: str, region_id: int | None = None,
                         inspection_id: int | None = None) -> int:
        """Classify one region (``region_id``) or every region of an inspection (``inspection_id``).

        Returns:
            How many regions were updated (>= 1).

        Raises:
            StoreError: neither or both ids given, nothing found, or the database refused.
        """
        if (region_id is None) == (inspection_id is None):
            msg = "set_defect_class: give exactly one of region_id= or inspection_id="
            raise StoreError(msg)
        _require_text(defect_class=defect_class, user=user)
        if region_id is not None:
            check_id(region_id, self.display_name, "region")
            target, what = regions.c.id == region_id, f"region {region_id}"
        else:
            assert inspection_id is not None   # exactly one of the two was given (checked above)
            check_id(inspection_id, self.display_name)
            target = regions.c.inspection_id == inspection_id
            what = f"the regions of inspection {inspection_id}"
        stmt = (sa.update(regions).where(target)
                .values(defect_class=defect_class, classified_by=user, classified_at=time.time()))
        with WriteTransaction(self._engine, self.display_name, f"class {defect_class!r} for {what}") as conn:
            recount_regions(conn, target, -1)      # the roll-ups move with the class, in this transaction
            n = conn.execute(stmt).rowcount
            if not n:
                msg = f"no {what} in {self.display_name}; defect class not set"
                raise StoreError(msg)
            recount_regions(conn, target, 1)
            return int(n)


def _require_text(**values: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value.strip():
            msg = f"{name} must be non-empty text, got {value!r}"
            raise StoreError(msg)
