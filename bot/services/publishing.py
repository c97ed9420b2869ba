"""Publishing: a medium-risk run's kept commit, pushed after approval or discarded.

The decision is the approvals' (`ApprovalService`); this is what follows it, also after
a restart: `bot.execution.publisher` asks for the pending ones and records the result."""

from __future__ import annotations

from sqlalchemy import or_
from sqlmodel import col, select

from bot.core.statuses import ApprovalKind, ApprovalStatus
from bot.services.context import Service, Shared
from bot.services.runs import RunService
from bot.services.views import RunView
from bot.store import audit, queries
from bot.store.tables import Approval, Run


class PublishService(Service):
    def __init__(self, shared: Shared, runs: RunService) -> None:
        super().__init__(shared)
        self.runs = runs

    def publish_pending(self, worker_id: str | None = None) -> list[RunView]:
        """Runs whose kept commit awaits the push (approved) or the discard (rejected,
        expired): the dispatcher deals with them, also after a restart. Given a worker,
        only the runs it ran (or from before workers were recorded): the kept commit is in
        the workspace on that worker's disk."""
        with self.db.session() as session:
            query = select(Run.id).join(
                Approval, col(Approval.run_id) == col(Run.id)).where(
                Approval.kind == ApprovalKind.PUBLISH,
                col(Approval.status) != ApprovalStatus.PENDING,
                col(Run.commit_sha).is_not(None), col(Run.published_ref).is_(None))
            if worker_id is not None:
                query = query.where(or_(col(Run.worker_id).is_(None),
                                        col(Run.worker_id) == worker_id))
            ids = session.exec(query).all()
        return [self.runs.get(run_id) for run_id in ids if run_id is not None]

    def publish_decision(self, run_id: int) -> Approval | None:
        with self.db.session() as session:
            return session.exec(select(Approval).where(
                Approval.run_id == run_id, Approval.kind == ApprovalKind.PUBLISH)).first()

    def record_published(self, run_id: int, ref: str | None, detail: str) -> None:
        """The push happened (`ref`), or the kept commit was discarded (`ref` None)."""
        with self.db.session() as session:
            run, routine = queries.run_with_routine(session, run_id)
            run.published_ref = ref or ""
            audit.record(session, "publisher", "published" if ref else "publish_discarded",
                   routine.name, f"run #{run_id}: {detail}")
