"""The kill switch: stop everything, hold every trigger, until an admin disengages."""

from __future__ import annotations

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from bot.core import roles
from bot.core.roles import Action
from bot.core.statuses import (
    NOT_STARTED,
    PENDING_STATUSES,
    ApprovalStatus,
    RunStatus,
    StopKind,
)
from bot.errors import (
    KillSwitchAlreadyEngaged,
    KillSwitchEngaged,
    KillSwitchNotEngaged,
    KillSwitchStillEngaged,
    ValidationFailed,
)
from bot.services.context import Service
from bot.services.events import RunQueued, StopRequested
from bot.services.views import (
    HeldRuns,
    KillSwitchReport,
)
from bot.store import audit, rollups
from bot.store.queries import known_id
from bot.store.tables import (
    Approval,
    KillSwitch,
    Routine,
    Run,
    utcnow,
)


class KillSwitchService(Service):
    def state(self) -> KillSwitch:
        """The switch's stored state (a fresh, disengaged one if it was never touched)."""
        with self.db.session() as session:
            return KillSwitch.current(session)

    def engage(self, actor: str, reason: str) -> KillSwitchReport:
        """Stop everything: running runs are killed, queued and waiting runs are held,
        schedules skip and every door refuses, until an admin disengages."""
        reason = reason.strip()
        if not reason:
            raise ValidationFailed({"reason": "Say why: the reason is announced and kept."})
        self._check(actor, Action.ENGAGE, is_approver_anywhere=self._approves_anything(actor))
        now = utcnow()
        with self.db.session() as session:
            state = KillSwitch.current(session)
            if state.engaged:
                raise KillSwitchAlreadyEngaged(state.reason, state.changed_by)
            state.engaged, state.reason, state.changed_by, state.changed_at = (
                True, self.redact(reason)[:500], actor, now)
            session.add(state)
            session.execute(update(Run).where(
                col(Run.status).in_(NOT_STARTED),
                col(Run.held_at).is_(None)).values(held_at=now))
            running = list(session.exec(select(Run.id).where(
                Run.status == RunStatus.RUNNING)).all())
            session.execute(update(Run).where(col(Run.id).in_(running))
                            .values(stop_requested_by=actor, stop_kind=StopKind.KILL_SWITCH))
            audit.record(session, actor, "engage", None, state.reason)
            held = self._held(session)
        for run_id in running:
            self.bus.publish(StopRequested(known_id(run_id)))
        return KillSwitchReport(self.state(), len(running), held)

    def disengage(self, actor: str) -> KillSwitchReport:
        """Admins only. Schedules resume from now (no burst of the fires skipped while
        engaged); held runs stay held until released or dropped."""
        self._check(actor, Action.DISENGAGE)
        now = utcnow()
        with self.db.session() as session:
            state = KillSwitch.current(session)
            if not state.engaged:
                raise KillSwitchNotEngaged()
            state.engaged, state.changed_by, state.changed_at = False, actor, now
            session.execute(update(Routine).where(col(Routine.schedule).is_not(None))
                            .values(last_fire_at=now))
            audit.record(session, actor, "disengage", None, f"was engaged for: {state.reason}")
            held = self._held(session)
        return KillSwitchReport(self.state(), 0, held)

    def report(self) -> KillSwitchReport:
        with self.db.session() as session:
            held = self._held(session)
        return KillSwitchReport(self.state(), 0, held)

    def release_held(self, actor: str, drop: bool) -> HeldRuns:
        """After disengaging: let held runs go on (`drop` False) or cancel them."""
        self._check(actor, Action.DISENGAGE)
        if self.state().engaged:
            raise KillSwitchStillEngaged()
        with self.db.session() as session:
            held = self._held(session)
            held_ids = select(Run.id).where(col(Run.held_at).is_not(None),
                                            col(Run.status).in_(PENDING_STATUSES))
            if drop:
                session.execute(update(Approval).where(
                    col(Approval.run_id).in_(held_ids),
                    col(Approval.status) == ApprovalStatus.PENDING).values(
                    status=ApprovalStatus.WITHDRAWN, decided_by=actor, decided_at=utcnow()))
                dropped = session.execute(update(Run).where(col(Run.id).in_(held_ids)).values(
                    status=RunStatus.CANCELLED, finished_at=utcnow(), notified_at=utcnow(),
                    reason=f"dropped after the kill switch by {actor}").returning(col(Run.id)))
                rollups.count_finished(session, list(dropped.scalars()))
            else:
                session.execute(update(Run).where(col(Run.id).in_(held_ids))
                                .values(held_at=None))
            audit.record(session, actor, "held_dropped" if drop else "held_released", None,
                         f"{held.queued} queued, {held.awaiting_approval} awaiting approval")
        if not drop:
            self.bus.publish(RunQueued())
        return held

    def refuse_if_engaged(self, session: Session) -> None:
        """Inside a trigger's unit of work: refuse while the switch is engaged. Its columns
        only: on every trigger, an ORM object (made afresh while the switch was never
        touched) costs more than the rest of the check."""
        row = session.execute(select(col(KillSwitch.engaged), col(KillSwitch.reason),
                                     col(KillSwitch.changed_by))
                              .where(col(KillSwitch.id) == 1)).first()
        if row is not None and row.engaged:
            raise KillSwitchEngaged(row.reason, row.changed_by)

    def _approves_anything(self, actor: str) -> bool:
        with self.db.session() as session:
            approvers = session.exec(select(Routine.approvers).where(
                Routine.approvers != "")).all()
        return any(self.roles.holds(actor, roles.split(a)) for a in approvers)

    @staticmethod
    def _held(session: Session) -> HeldRuns:
        counts = dict(session.exec(select(Run.status, func.count()).where(
            col(Run.held_at).is_not(None), col(Run.status).in_(PENDING_STATUSES))
            .group_by(col(Run.status))).all())
        return HeldRuns(int(counts.get(RunStatus.QUEUED, 0)),
                        int(counts.get(RunStatus.AWAITING_APPROVAL, 0)))
