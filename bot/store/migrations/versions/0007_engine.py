"""A routine's engine (builtin, claude-code) and whether a repository's own configuration
may run code under it (repo_config: untrusted, trusted). Every routine stored before
keeps the built-in agent and an untrusted repository.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None

ENGINE = sa.Enum("BUILTIN", "CLAUDE_CODE", name="engine")
REPO_CONFIG = sa.Enum("UNTRUSTED", "TRUSTED", name="repoconfig")


def upgrade() -> None:
    ENGINE.create(op.get_bind(), checkfirst=True)  # PostgreSQL's named types
    REPO_CONFIG.create(op.get_bind(), checkfirst=True)
    with op.batch_alter_table("routine") as batch_op:
        batch_op.add_column(sa.Column("engine", ENGINE, nullable=False,
                                      server_default="BUILTIN"))
        batch_op.add_column(sa.Column("repo_config", REPO_CONFIG, nullable=False,
                                      server_default="UNTRUSTED"))


def downgrade() -> None:
    with op.batch_alter_table("routine") as batch_op:
        batch_op.drop_column("repo_config")
        batch_op.drop_column("engine")
    REPO_CONFIG.drop(op.get_bind(), checkfirst=True)
    ENGINE.drop(op.get_bind(), checkfirst=True)
