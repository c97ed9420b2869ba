"""Run leases (docs/scale-out.md): a claimed run is held by one worker until its
`lease_until`, which that worker's heartbeat renews; a lease that lapses fails the run as
interrupted, the worker named. What keeps a run executed by one worker at a time."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlmodel import col, select

from bot.core.statuses import FailureKind, RunStatus
from bot.core.verdict import RunOutcome
from bot.core.worker import LapsedLease
from bot.services.context import Service, Shared
from bot.services.runs import RunService
from bot.services.views import RunView
from bot.store.tables import Run, Worker, as_utc, utcnow


class RunLeaseService(Service):
    def __init__(self, shared: Shared, runs: RunService) -> None:
        super().__init__(shared)
        self.runs = runs

    def mine_running(self, worker_id: str) -> list[RunView]:
        """The running runs this worker reconciles at start: its own, and those from before
        workers were recorded (no worker id); other workers' runs are theirs."""
        with self.db.session() as session:
            ids = session.exec(select(Run.id).where(
                col(Run.status) == RunStatus.RUNNING,
                or_(col(Run.worker_id).is_(None), col(Run.worker_id) == worker_id))).all()
        return [self.runs.get(run_id) for run_id in ids if run_id is not None]

    def adopt(self, worker_id: str, run_id: int, lease_seconds: float) -> bool:
        """Hold an adopted run under this worker (a run from before 0009 has no holder);
        False if it is no longer running or another worker holds it."""
        with self.db.session() as session:
            taken = session.execute(update(Run).where(
                col(Run.id) == run_id, col(Run.status) == RunStatus.RUNNING,
                or_(col(Run.worker_id).is_(None), col(Run.worker_id) == worker_id))
                .values(worker_id=worker_id,
                        lease_until=utcnow() + timedelta(seconds=lease_seconds)))
            return bool(taken.rowcount == 1)  # type: ignore[attr-defined]

    def renew(self, worker_id: str, run_ids: list[int], lease_seconds: float) -> set[int]:
        """Extend the lease of the runs this worker follows; the ones it still holds (a run
        missing from the answer was failed by lease expiry, or is another's: its container
        must be killed at once)."""
        if not run_ids:
            return set()
        with self.db.session() as session:
            session.execute(update(Run).where(
                col(Run.id).in_(run_ids), col(Run.status) == RunStatus.RUNNING,
                col(Run.worker_id) == worker_id)
                .values(lease_until=utcnow() + timedelta(seconds=lease_seconds)))
            held = session.exec(select(Run.id).where(
                col(Run.id).in_(run_ids), col(Run.status) == RunStatus.RUNNING,
                col(Run.worker_id) == worker_id)).all()
        return {run_id for run_id in held if run_id is not None}

    def lapsed(self, worker_id: str) -> list[LapsedLease]:
        """Running runs of other workers whose lease ended: their worker stopped renewing."""
        now = utcnow()
        with self.db.session() as session:
            rows = session.exec(
                select(Run.id, Run.worker_id, Worker.heartbeat_at)
                .join(Worker, col(Worker.id) == col(Run.worker_id), isouter=True)
                .where(Run.status == RunStatus.RUNNING, col(Run.worker_id).is_not(None),
                       col(Run.worker_id) != worker_id, col(Run.lease_until) < now)
                .order_by(col(Run.id))).all()
        return [LapsedLease(run_id, holder, as_utc(beat) if beat else None)
                for run_id, holder, beat in rows if run_id is not None and holder is not None]

    def expire(self, lapse: LapsedLease) -> RunView | None:
        """Fail a lapsed run as interrupted, once: the view if this call did it (then this
        process announces it), None if it ended or was renewed meanwhile."""
        outcome = RunOutcome(RunStatus.FAILED, None, lapse.reason, FailureKind.INTERRUPTED)
        return self.runs.finish_lapsed(lapse.run_id, outcome, utcnow())
