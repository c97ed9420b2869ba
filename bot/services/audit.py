"""The audit log, read back (every service writes it through `bot.store.audit`)."""

from __future__ import annotations

from sqlmodel import col, select

from bot.services.context import Service
from bot.store.tables import (
    AuditEntry,
)


class AuditService(Service):
    def entries(self, routine: str | None = None, limit: int | None = 20,
                after_id: int = 0, page: int = 500) -> list[AuditEntry]:
        """The latest `limit`, newest first (for Slack); with no limit, a page of the
        export, oldest first, after `after_id`."""
        query = select(AuditEntry).where(col(AuditEntry.id) > after_id)
        if routine:
            query = query.where(AuditEntry.routine == routine.strip().lower())
        if limit is None:
            query = query.order_by(col(AuditEntry.id)).limit(page)
        else:
            query = query.order_by(col(AuditEntry.id).desc()).limit(limit)
        with self.db.session() as session:
            return list(session.exec(query).all())
