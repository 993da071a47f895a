"""The statistics store: every inspection, its defect regions and reviewers' feedback, in SQL.

The package's modules: `inspector.store.schema` (tables, `SCHEMA_VERSION`, URL and engine setup),
`inspector.store.writer` (`Store`: opening, the writer thread, the journal's durable path),
`inspector.store.queries` (yield, defects, scores, pages of inspections and the records they return),
`inspector.store.feedback` (reviewers' labels and classes), `inspector.store.export` (CSV) and
`inspector.store.rollup` (counts per group kept in step with every write, so that statistics over millions
of inspections read thousands of rows).
Import the public names from here: ``from inspector.store import Store``.

SQLAlchemy Core over SQLite by default (``<data dir>/inspector.db``, WAL journal, so several
processes can read and write one file), or any SQLAlchemy URL (``postgresql://...``); the SQL is
kept portable. All SQL is parameterised. Writing never blocks the inspection worker: see
`inspector.store.writer` for the queue, the batches and what is counted when the database refuses.

Example:
    >>> with Store(tmp_path / "stats.db") as store:                       # doctest: +SKIP
    ...     store.record(result, image_path="archive/2026-11-23/x.jpg")
    ...     store.flush()
    ...     store.yield_summary(group_by="hour")
    [YieldRow(key='2026-11-23 10:00', inspected=1, passed=1, review=0, failed=0, errors=0, yield_pct=100.0)]
"""

from __future__ import annotations

from inspector.store.queries import (
    UNCLASSIFIED,
    FeedbackRecord,
    GroupBy,
    InspectionFilter,
    InspectionRecord,
    RegionRecord,
    ScorePoint,
    YieldRow,
    inspection_conditions,
)
from inspector.store.schema import (
    SCHEMA_VERSION,
    STORE_URL_ENV,
    STORE_URL_FILE_ENV,
    configured_url,
    feedback,
    inspections,
    metadata,
    region_embeddings,
    regions,
    store_meta,
)
from inspector.store.writer import Store, result_rows

__all__ = [
    "SCHEMA_VERSION",
    "STORE_URL_ENV",
    "STORE_URL_FILE_ENV",
    "UNCLASSIFIED",
    "FeedbackRecord",
    "GroupBy",
    "InspectionFilter",
    "InspectionRecord",
    "RegionRecord",
    "ScorePoint",
    "Store",
    "YieldRow",
    "configured_url",
    "feedback",
    "inspection_conditions",
    "inspections",
    "metadata",
    "region_embeddings",
    "regions",
    "result_rows",
    "store_meta",
]
