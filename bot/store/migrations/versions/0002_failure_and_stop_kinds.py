"""Why a run failed and why it was stopped, as data (`Run.failure_kind`, `Run.stop_kind`).

Runs stored before this have no failure kind (their `reason` still says why, for people).
The old "kill switch" sentinel in `stop_requested_by` becomes `stop_kind` KILL_SWITCH; any
other name there was a `/routine cancel`.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

FAILURE_KIND = sa.Enum("NO_SELF_REPORT", "REPORTED_FAILURE", "SETUP_FAILED", "TURN_LIMIT",
                       "TOKEN_BUDGET", "TIMED_OUT", "INTERRUPTED", "KILLED", "CANCELLED",
                       "API_UNAVAILABLE", "API_REFUSED", "INFRASTRUCTURE", name="failurekind")
STOP_KIND = sa.Enum("KILL_SWITCH", "CANCEL", name="stopkind")
DIGEST_COLUMNS = ["finished_at", "status", "routine_id", "input_tokens", "output_tokens",
                  "started_at"]


def upgrade() -> None:
    bind = op.get_bind()
    FAILURE_KIND.create(bind, checkfirst=True)  # PostgreSQL's named types; a no-op elsewhere
    STOP_KIND.create(bind, checkfirst=True)
    with op.batch_alter_table("run") as batch_op:
        batch_op.add_column(sa.Column("failure_kind", FAILURE_KIND, nullable=True))
        batch_op.add_column(sa.Column("stop_kind", STOP_KIND, nullable=True))
        batch_op.drop_index("ix_run_digest")
        batch_op.create_index("ix_run_digest", [*DIGEST_COLUMNS, "failure_kind"])
    op.execute("UPDATE run SET stop_kind = 'KILL_SWITCH', stop_requested_by = NULL "
               "WHERE stop_requested_by = 'kill switch'")
    op.execute("UPDATE run SET stop_kind = 'CANCEL' "
               "WHERE stop_requested_by IS NOT NULL AND stop_kind IS NULL")


def downgrade() -> None:
    op.execute("UPDATE run SET stop_requested_by = 'kill switch' "
               "WHERE stop_kind = 'KILL_SWITCH'")
    with op.batch_alter_table("run") as batch_op:
        batch_op.drop_index("ix_run_digest")
        batch_op.create_index("ix_run_digest", DIGEST_COLUMNS)
        batch_op.drop_column("stop_kind")
        batch_op.drop_column("failure_kind")
    bind = op.get_bind()
    STOP_KIND.drop(bind, checkfirst=True)
    FAILURE_KIND.drop(bind, checkfirst=True)
