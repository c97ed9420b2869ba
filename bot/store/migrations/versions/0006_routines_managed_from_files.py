"""Routines managed from files (`routines apply`): `Routine.managed_by` names the file.

Routines made before this were made in Slack or the CLI: none is managed from files.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routine") as batch_op:
        batch_op.add_column(sa.Column("managed_by", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("routine") as batch_op:
        batch_op.drop_column("managed_by")
