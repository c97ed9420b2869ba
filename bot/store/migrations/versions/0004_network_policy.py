"""A routine's egress policy: `network` (trusted, none, custom, full) and, for custom, its
host patterns. Every routine stored before keeps the default, trusted.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

NETWORK_MODE = sa.Enum("TRUSTED", "NONE", "CUSTOM", "FULL", name="networkmode")


def upgrade() -> None:
    NETWORK_MODE.create(op.get_bind(), checkfirst=True)  # PostgreSQL's named type
    with op.batch_alter_table("routine") as batch_op:
        batch_op.add_column(sa.Column("network", NETWORK_MODE, nullable=False,
                                      server_default="TRUSTED"))
        batch_op.add_column(sa.Column("network_hosts", sa.String(), nullable=False,
                                      server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("routine") as batch_op:
        batch_op.drop_column("network_hosts")
        batch_op.drop_column("network")
    NETWORK_MODE.drop(op.get_bind(), checkfirst=True)
