"""Runs started by a Workflow Builder step: the trigger kind, the step's execution, and when
the step was completed.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # a native enum type learns its member
        op.execute("ALTER TYPE triggerkind ADD VALUE IF NOT EXISTS 'WORKFLOW'")
    with op.batch_alter_table("run") as batch_op:
        batch_op.add_column(sa.Column("workflow_execution_id", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("workflow_completed_at", sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run") as batch_op:
        batch_op.drop_column("workflow_completed_at")
        batch_op.drop_column("workflow_execution_id")
    # PostgreSQL cannot drop an enum member; WORKFLOW stays in the type, unused.
