"""Store schema version 4: roll-up tables, so that whole-store statistics read thousands of rows, not millions.

- ``inspection_counts``: inspections per recipe, line, station, lot, 15-minute bucket and verdict;
- ``region_counts``: defect regions per recipe, line, station, lot, bucket, confirmed and predicted class;
- ``location_counts``: defect regions per recipe, line, station, classes and centre cell.

An existing store gets them built here, once, from its detail rows (`inspector.store.rollup.build`, in steps
of 50,000 inspections, each logged), inside the upgrade's one transaction: a killed upgrade leaves the store
at revision 0003 with no roll-ups, and the next opening builds them again.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

logger = logging.getLogger("inspector.store")


def _keys(*names: str) -> list[sa.Column[str]]:
    return [sa.Column(name, sa.Text, primary_key=True) for name in names]


def upgrade() -> None:
    from inspector.store.rollup import build

    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table("inspection_counts"):
        op.create_table(
            "inspection_counts",
            *_keys("recipe", "line", "station", "lot"),
            sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("verdict", sa.String(8), primary_key=True),
            sa.Column("n", sa.BigInteger, nullable=False),
            sa.Column("first_time", sa.Float, nullable=False),
        )
    if not inspector.has_table("region_counts"):
        op.create_table(
            "region_counts",
            *_keys("recipe", "line", "station", "lot"),
            sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),
            *_keys("defect_class", "predicted_class"),
            sa.Column("n", sa.BigInteger, nullable=False),
        )
    if not inspector.has_table("location_counts"):
        op.create_table(
            "location_counts",
            *_keys("recipe", "line", "station", "defect_class", "predicted_class"),
            sa.Column("cell_x", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("cell_y", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("n", sa.BigInteger, nullable=False),
        )
    indexes = {name: table for table in ("inspection_counts", "region_counts")
               for name in (f"ix_{table}_recipe_bucket", f"ix_{table}_bucket")}
    fresh = sa.inspect(bind)                 # the tables above are new: a new look
    present = {i["name"] for table in ("inspection_counts", "region_counts") for i in fresh.get_indexes(table)}
    for name, table in indexes.items():
        if name not in present:
            op.create_index(name, table, ["recipe", "bucket"] if "recipe" in name else ["bucket"])
    start = time.monotonic()
    steps = 0
    for progress in build(bind, tables=("inspection_counts", "region_counts", "location_counts")):
        steps += 1
        logger.info("%s (%.0f s)", progress.message, time.monotonic() - start)
    if steps:
        logger.info("statistics roll-ups built in %.1f s", time.monotonic() - start)
    op.execute(sa.text("UPDATE store_meta SET value = '4' WHERE key = 'schema_version'"))


def downgrade() -> None:
    msg = "the statistics store is never downgraded: keep a copy of the database before upgrading inspector"
    raise NotImplementedError(msg)
