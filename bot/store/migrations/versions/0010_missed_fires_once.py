"""A missed fire is recorded once per routine and scheduled time (docs/scale-out.md): two
processes that both see it missed (a scheduler taking over) insert it once, and only the
one whose insert took it posts its notice. Duplicates an older bot may have recorded are
removed first, the earliest kept.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None

NAME = "uq_missedfire_routine_scheduled_for"


def upgrade() -> None:
    op.execute("DELETE FROM missedfire WHERE id NOT IN (SELECT MIN(id) FROM missedfire "
               "GROUP BY routine_id, scheduled_for)")
    with op.batch_alter_table("missedfire") as batch_op:
        batch_op.create_unique_constraint(NAME, ["routine_id", "scheduled_for"])


def downgrade() -> None:
    with op.batch_alter_table("missedfire") as batch_op:
        batch_op.drop_constraint(NAME, type_="unique")
