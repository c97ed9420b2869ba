"""A run can fail for having filled its disk limit (`FailureKind.DISK_LIMIT`).

Only PostgreSQL's native enum type needs to learn the member; elsewhere the column is
plain text. PostgreSQL cannot drop an enum label again: the downgrade leaves it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE failurekind ADD VALUE IF NOT EXISTS 'DISK_LIMIT'")


def downgrade() -> None:
    """Nothing to undo: the label stays on PostgreSQL (see above)."""
