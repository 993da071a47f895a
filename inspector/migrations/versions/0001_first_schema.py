"""The first schema (store schema version 1): inspections, regions, feedback, store_meta.

A frozen copy of the tables as they were at this revision, created only where missing, so that a store
made before migrations existed is adopted as it is.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "inspections", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("recipe", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False, default=""),
        sa.Column("line", sa.Text, nullable=False, default=""),
        sa.Column("station", sa.Text, nullable=False, default=""),
        sa.Column("lot", sa.Text, nullable=False, default=""),
        sa.Column("source", sa.Text, nullable=False, default=""),
        sa.Column("frame_id", sa.BigInteger, nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("image_path", sa.Text),
        sa.Column("overlay_path", sa.Text),
        sa.Column("error", sa.Text),
        sa.Index("ix_inspections_time", "time"),
        sa.Index("ix_inspections_recipe_time", "recipe", "time"),
        sa.Index("ix_inspections_verdict", "verdict"),
    )
    sa.Table(
        "regions", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inspection_id", sa.Integer, sa.ForeignKey("inspections.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("x", sa.Integer, nullable=False),
        sa.Column("y", sa.Integer, nullable=False),
        sa.Column("w", sa.Integer, nullable=False),
        sa.Column("h", sa.Integer, nullable=False),
        sa.Column("area_px", sa.Integer, nullable=False),
        sa.Column("area_mm2", sa.Float),
        sa.Column("max_score", sa.Float),
        sa.Column("mean_score", sa.Float),
        sa.Column("defect_class", sa.Text),
        sa.Column("classified_by", sa.Text),
        sa.Column("classified_at", sa.Float),
        sa.Index("ix_regions_inspection", "inspection_id"),
    )
    sa.Table(
        "feedback", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inspection_id", sa.Integer, sa.ForeignKey("inspections.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("note", sa.Text, nullable=False, default=""),
        sa.Index("ix_feedback_inspection", "inspection_id"),
    )
    sa.Table(
        "store_meta", md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    return md


def upgrade() -> None:
    bind = op.get_bind()
    _tables().create_all(bind, checkfirst=True)
    exists = bind.execute(sa.text("SELECT value FROM store_meta WHERE key = 'schema_version'")).scalar()
    if exists is None:
        bind.execute(sa.text("INSERT INTO store_meta (key, value) VALUES ('schema_version', '1')"))


def downgrade() -> None:
    msg = "the statistics store is never downgraded: keep a copy of the database before upgrading inspector"
    raise NotImplementedError(msg)
