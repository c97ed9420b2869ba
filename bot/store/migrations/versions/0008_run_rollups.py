"""Rollups of finished runs per hour, routine and status (`RunRollup`), built from the runs
already stored, so that an upgraded database gives the same digests as before.

The backfill is `bot.store.rollups.backfill` of the hours, the statement that counts runs as
they finish: it reads run columns that exist since 0002 and writes the columns made here.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from bot.store import rollups

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None

_STATUSES = ("AWAITING_APPROVAL", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT",
             "ERROR", "KILLED", "CANCELLED", "REJECTED", "EXPIRED")
# The run table's enum type, which PostgreSQL already has (made by 0001).
RUN_STATUS = sa.Enum(*_STATUSES, name="runstatus").with_variant(
    postgresql.ENUM(*_STATUSES, name="runstatus", create_type=False), "postgresql")


def upgrade() -> None:
    op.create_table(
        "runrollup",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("routine_id", sa.Integer(), nullable=False),
        sa.Column("status", RUN_STATUS, nullable=False),
        sa.Column("runs", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("no_report", sa.BigInteger(), nullable=False),
        sa.Column("slowest_seconds", sa.Float(), nullable=True),
        sa.Column("slowest_run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["routine_id"], ["routine.id"]),
        sa.PrimaryKeyConstraint("hour", "routine_id", "status"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_runrollup_slowest",
                    "runrollup", [sa.text("slowest_seconds DESC"), "slowest_run_id"])
    rollups.backfill(op.get_bind(), [rollups.Grain.HOUR])


def downgrade() -> None:
    op.drop_index("ix_runrollup_slowest", "runrollup")
    op.drop_table("runrollup")
