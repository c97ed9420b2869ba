"""Scale-out on PostgreSQL (docs/scale-out.md): the processes serving the database
(`worker`), the run each one claimed and its lease, who posts a run's result, one-holder
leases (the scheduler), and the triggers the shared rate limit counts.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None

_RUN_COLUMNS = (("worker_id", sa.String(length=128)),
                ("lease_until", sa.DateTime(timezone=True)),
                ("announce_claimed_by", sa.String(length=128)),
                ("announce_claim_until", sa.DateTime(timezone=True)))


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("executes", sa.Boolean(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "lease",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "triggerhit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("routine_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["routine_id"], ["routine.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_triggerhit_routine_at", "triggerhit", ["routine_id", "at"])
    with op.batch_alter_table("run") as batch_op:
        for name, kind in _RUN_COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))
        batch_op.create_index("ix_run_worker_id", ["worker_id"])


def downgrade() -> None:
    with op.batch_alter_table("run") as batch_op:
        batch_op.drop_index("ix_run_worker_id")
        for name, _ in reversed(_RUN_COLUMNS):
            batch_op.drop_column(name)
    op.drop_index("ix_triggerhit_routine_at", "triggerhit")
    op.drop_table("triggerhit")
    op.drop_table("lease")
    op.drop_table("worker")
