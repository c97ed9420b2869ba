"""The audit log's one writer: every service records who did what through `record`."""

from __future__ import annotations

from sqlmodel import Session

from bot.store.tables import AuditEntry


def record(session: Session, actor: str, action: str, routine: str | None,
           details: str = "") -> None:
    """Add an entry to the caller's unit of work: it is kept exactly when the change is."""
    session.add(AuditEntry(actor=actor, action=action, routine=routine, details=details))
