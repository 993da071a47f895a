"""Store schema version 5: ``part_counts``, defective parts per type (the Pareto's bars).

Inspections with at least one region of a type, per recipe, line, station, lot, 15-minute bucket, type source
(best, confirmed, predicted) and type, with their regions of that type: a part whose one scratch was found as
nine fragments is one scratched part (with nine regions), where the Pareto of regions counted nine. An existing
store gets the table built here from its detail rows (`inspector.store.rollup.build`, in steps of 50,000
inspections, each logged), inside the upgrade's one transaction: a killed upgrade leaves the store at revision
0004, and the next opening builds it again.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

logger = logging.getLogger("inspector.store")


def upgrade() -> None:
    from inspector.store.rollup import build

    bind = op.get_bind()
    if not sa.inspect(bind).has_table("part_counts"):
        op.create_table(
            "part_counts",
            *(sa.Column(name, sa.Text, primary_key=True) for name in ("recipe", "line", "station", "lot")),
            sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),
            *(sa.Column(name, sa.Text, primary_key=True) for name in ("source", "defect_type")),
            sa.Column("n", sa.BigInteger, nullable=False),
            sa.Column("regions", sa.BigInteger, nullable=False),
        )
    present = {i["name"] for i in sa.inspect(bind).get_indexes("part_counts")}
    if "ix_part_counts_recipe_bucket" not in present:
        op.create_index("ix_part_counts_recipe_bucket", "part_counts", ["recipe", "bucket"])
    if "ix_part_counts_bucket" not in present:
        op.create_index("ix_part_counts_bucket", "part_counts", ["bucket"])
    start = time.monotonic()
    steps = 0
    for progress in build(bind, tables=("part_counts",)):
        steps += 1
        logger.info("%s (%.0f s)", progress.message.replace("statistics roll-ups", "defective parts per type"),
                    time.monotonic() - start)
    if steps:
        logger.info("defective parts per type built in %.1f s", time.monotonic() - start)
    op.execute(sa.text("UPDATE store_meta SET value = '5' WHERE key = 'schema_version'"))


def downgrade() -> None:
    msg = "the statistics store is never downgraded: keep a copy of the database before upgrading inspector"
    raise NotImplementedError(msg)
