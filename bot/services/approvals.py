"""Approvals: a human decision on a run's start or on what it publishes."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from bot.core.roles import Action
from bot.core.statuses import (
    ApprovalKind,
    ApprovalStatus,
    RunStatus,
)
from bot.errors import (
    AlreadyDecided,
    ApprovalNotFound,
)
from bot.services.context import Service
from bot.services.events import PublishDecided, RunQueued
from bot.services.views import (
    ApprovalView,
)
from bot.store import audit, queries, rollups
from bot.store.queries import row_id
from bot.store.tables import (
    Approval,
    Routine,
    Run,
    as_utc,
    utcnow,
)


class ApprovalService(Service):
    def request(self, session: Session, run: Run, routine: Routine,
                kind: ApprovalKind, requester: str) -> Approval:
        """Ask for a decision, inside the caller's unit of work (a trigger or a finish)."""
        now = utcnow()
        approval = Approval(run_id=row_id(run), kind=kind, requested_by=requester,
                            requested_at=now, channel_id=routine.channel_id,
                            expires_at=now + timedelta(
                                seconds=self.policy.approval_timeout_seconds))
        session.add(approval)
        session.flush()
        audit.record(session, requester, "approval_requested", routine.name,
               f"run #{run.id}: {kind} approval #{approval.id}")
        return approval

    def to_post(self) -> list[ApprovalView]:
        """Pending requests whose message has not reached Slack yet (retried until it has)."""
        with self.db.session() as session:
            ids = session.exec(select(Approval.id).where(
                Approval.status == ApprovalStatus.PENDING,
                col(Approval.message_ts).is_(None))).all()
        return [self.get(approval_id) for approval_id in ids if approval_id]

    def record_message(self, approval_id: int, channel_id: str, ts: str) -> None:
        with self.db.session() as session:
            session.execute(update(Approval).where(col(Approval.id) == approval_id)
                            .values(channel_id=channel_id, message_ts=ts))

    def get(self, approval_id: int) -> ApprovalView:
        with self.db.session() as session:
            approval = session.get(Approval, approval_id)
            if approval is None:
                raise ApprovalNotFound(approval_id)
            run, routine = queries.run_with_routine(session, approval.run_id)
            return ApprovalView(approval, run, routine)

    def decide(self, approval_id: int, actor: str, approve: bool,
               reason: str = "") -> ApprovalView:
        """Approve or reject. The first decision wins (a conditional UPDATE); a later one
        raises `AlreadyDecided` saying who decided. A request past its expiry expires."""
        current = self.get(approval_id)
        self._check(actor, Action.APPROVE, current.routine, requester=current.approval.requested_by)
        if current.approval.status == ApprovalStatus.PENDING and \
                as_utc(current.approval.expires_at) <= utcnow():
            self.expire(utcnow())
            current = self.get(approval_id)
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
        with self.db.session() as session:
            won = session.execute(
                update(Approval).where(col(Approval.id) == approval_id,
                                       col(Approval.status) == ApprovalStatus.PENDING)
                .values(status=status, decided_by=actor, decided_at=utcnow(),
                        reason=self.redact(reason.strip())[:500]))
            if won.rowcount != 1:  # type: ignore[attr-defined]
                raise _already_decided(self.get(approval_id).approval)
            kind = current.approval.kind
            audit.record(session, actor, "approve" if approve else "reject", current.routine.name,
                   f"run #{current.run.id} ({kind})" + (f": {reason.strip()}" if reason else ""))
            if kind == ApprovalKind.START:
                self._settle_waiting_run(session, row_id(current.run), approve,
                                         None if approve else _rejection(actor, reason))
        self._after_decision(current.approval, approve)
        return self.get(approval_id)

    def _after_decision(self, approval: Approval, approve: bool) -> None:
        if approval.kind == ApprovalKind.START and approve:
            self.bus.publish(RunQueued())
        elif approval.kind == ApprovalKind.PUBLISH:
            self.bus.publish(PublishDecided(approval.run_id))  # pushed, or discarded

    def _settle_waiting_run(self, session: Session, run_id: int, start: bool,
                            reason: str | None, status: RunStatus = RunStatus.REJECTED) -> None:
        """A decided high-risk run: to the queue, or finished without running."""
        values: dict[str, object] = {"status": RunStatus.QUEUED} if start else {
            "status": status, "reason": reason, "finished_at": utcnow(),
            "notified_at": utcnow()}  # the request message, updated in place, says it
        settled = session.execute(update(Run).where(
            col(Run.id) == run_id, col(Run.status) == RunStatus.AWAITING_APPROVAL).values(**values))
        if not start and settled.rowcount == 1:  # type: ignore[attr-defined]
            rollups.count_finished(session, [run_id])

    def expire(self, now: datetime) -> list[ApprovalView]:
        """Requests nobody decided in time: a waiting run ends `expired`, a kept commit
        is discarded. Returned so their messages can be updated."""
        with self.db.session() as session:
            due = session.exec(select(Approval).where(
                Approval.status == ApprovalStatus.PENDING,
                col(Approval.expires_at) <= now)).all()
            expired: list[Approval] = []
            for approval in due:
                won = session.execute(
                    update(Approval).where(col(Approval.id) == approval.id,
                                           col(Approval.status) == ApprovalStatus.PENDING)
                    .values(status=ApprovalStatus.EXPIRED, decided_at=now))
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                expired.append(approval)
                routine_name = session.exec(select(Routine.name).join(
                    Run, col(Run.routine_id) == col(Routine.id)).where(
                    Run.id == approval.run_id)).one()
                audit.record(session, "approvals", "expire", routine_name,
                       f"run #{approval.run_id} ({approval.kind}) after "
                       f"{self.policy.approval_timeout_seconds}s without a decision")
                if approval.kind == ApprovalKind.START:
                    self._settle_waiting_run(session, approval.run_id, False,
                                             "nobody approved it in time", RunStatus.EXPIRED)
        for approval in expired:
            if approval.kind == ApprovalKind.PUBLISH:
                self.bus.publish(PublishDecided(approval.run_id))
        return [self.get(row_id(a)) for a in expired]


def _already_decided(approval: Approval) -> AlreadyDecided:
    return AlreadyDecided(approval.status, approval.decided_by,
                          as_utc(approval.decided_at or utcnow()))


def _rejection(actor: str, reason: str) -> str:
    return f"rejected by <@{actor}>" + (f": {reason.strip()}" if reason.strip() else "")
