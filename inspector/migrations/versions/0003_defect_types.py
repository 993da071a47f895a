"""Store schema version 3: predicted defect types (few-shot typing) and region embeddings.

- ``regions.predicted_class`` / ``predicted_confidence``: what the recipe's defect typer said at
  inspection time (a labelled class, ``unknown``, or NULL without a typer); reviewers' classes stay in
  ``defect_class``, so predicted and confirmed are kept apart;
- ``ix_regions_classified_at``: the typer's "labels since" query;
- ``region_embeddings``: the pooled patch feature of each region, from which labelled regions type new ones.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    columns = {c["name"] for c in sa.inspect(bind).get_columns("regions")}
    with op.batch_alter_table("regions") as batch:
        if "predicted_class" not in columns:
            batch.add_column(sa.Column("predicted_class", sa.Text))
        if "predicted_confidence" not in columns:
            batch.add_column(sa.Column("predicted_confidence", sa.Float))
    indexes = {i["name"] for i in sa.inspect(bind).get_indexes("regions")}
    if "ix_regions_classified_at" not in indexes:
        op.create_index("ix_regions_classified_at", "regions", ["classified_at"])
    if not sa.inspect(bind).has_table("region_embeddings"):
        op.create_table(
            "region_embeddings",
            sa.Column("region_id", sa.Integer, sa.ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("vector", sa.LargeBinary, nullable=False),
        )
    op.execute(sa.text("UPDATE store_meta SET value = '3' WHERE key = 'schema_version'"))


def downgrade() -> None:
    msg = "the statistics store is never downgraded: keep a copy of the database before upgrading inspector"
    raise NotImplementedError(msg)
