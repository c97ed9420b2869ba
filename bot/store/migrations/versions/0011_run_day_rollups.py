"""Rollups of finished runs per UTC day, routine and status (`RunDayRollup`), built from the
runs already stored, so that a digest reads a week as 7 rollups per group instead of 168.

The backfill is `bot.store.rollups.backfill` of the days, the statement that counts runs
as they finish.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from bot.store import rollups

revision = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None

_STATUSES = ("AWAITING_APPROVAL", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT",
             "ERROR", "KILLED", "CANCELLED", "REJECTED", "EXPIRED")
# The run table's enum type, which PostgreSQL already has (made by 0001).
RUN_STATUS = sa.Enum(*_STATUSES, name="runstatus").with_variant(
    postgresql.ENUM(*_STATUSES, name="runstatus", create_type=False), "postgresql")


def upgrade() -> None:
    op.create_table(
        "rundayrollup",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("routine_id", sa.Integer(), nullable=False),
        sa.Column("status", RUN_STATUS, nullable=False),
        sa.Column("runs", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("no_report", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["routine_id"], ["routine.id"]),
        sa.PrimaryKeyConstraint("day", "routine_id", "status"),
        sqlite_with_rowid=False,
    )
    rollups.backfill(op.get_bind(), [rollups.Grain.DAY])


def downgrade() -> None:
    op.drop_table("rundayrollup")
