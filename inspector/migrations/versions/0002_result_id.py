"""Store schema version 2: ``inspections.result_id``, unique per result.

The result journal forwards each result with an id unique to it; a result forwarded twice (a crash
between the store's commit and the journal's removal, or a lost acknowledgement from a remote server)
is then stored once. Older rows keep NULL (a unique index allows many NULLs on SQLite and PostgreSQL).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    columns = {c["name"] for c in sa.inspect(bind).get_columns("inspections")}
    if "result_id" not in columns:
        op.add_column("inspections", sa.Column("result_id", sa.String(64)))
    indexes = {i["name"] for i in sa.inspect(bind).get_indexes("inspections")}
    if "ux_inspections_result_id" not in indexes:
        op.create_index("ux_inspections_result_id", "inspections", ["result_id"], unique=True)
    op.execute(sa.text("UPDATE store_meta SET value = '2' WHERE key = 'schema_version'"))


def downgrade() -> None:
    msg = "the statistics store is never downgraded: keep a copy of the database before upgrading inspector"
    raise NotImplementedError(msg)
