"""Spend and budgets: today's cost, the daily cap, a routine's runs per day."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func
from sqlmodel import Session, col, select

from bot.core import budget
from bot.core.roles import Action
from bot.core.statuses import (
    ACTIVE,
    NEVER_RAN,
    BusyPolicy,
)
from bot.errors import (
    BudgetExceeded,
    RoutineBusy,
    ValidationFailed,
)
from bot.services.context import Service
from bot.store import audit, queries
from bot.store.queries import row_id
from bot.store.tables import (
    AuditEntry,
    Routine,
    Run,
    SpendCap,
    utcnow,
)


class Budgeted(Protocol):
    """What the budgets read of a routine (a `Routine` row has it, so do lighter views)."""

    @property
    def id(self) -> int | None: ...
    @property
    def name(self) -> str: ...
    @property
    def max_runs_per_day(self) -> int | None: ...
    @property
    def max_concurrent(self) -> int | None: ...
    @property
    def busy_policy(self) -> BusyPolicy: ...


class SpendService(Service):
    def today(self) -> budget.Spend:
        with self.db.session() as session:
            return self.spend_in(session, utcnow())

    def set_cap(self, amount_usd: float, actor: str) -> budget.Spend:
        self._check(actor, Action.RAISE_CAP)
        if not 0 <= amount_usd <= 1_000_000:
            raise ValidationFailed({"cap": "Use an amount in dollars from 0 (no cap) to "
                                           "1,000,000."})
        with self.db.session() as session:
            cap = session.get(SpendCap, 1) or SpendCap(id=1, cap_usd=0, changed_by=actor)
            cap.cap_usd, cap.changed_by, cap.changed_at = amount_usd, actor, utcnow()
            session.add(cap)
            audit.record(session, actor, "budget_cap", None, f"daily spend cap ${amount_usd:.2f}")
        return self.today()

    def alert_due(self) -> budget.Spend | None:
        """The spend level, the first time today it reaches 80% or 100% (then recorded, so
        each level is announced once a day)."""
        now = utcnow()
        with self.db.session() as session:
            spend = self.spend_in(session, now)
            if spend.level is budget.SpendLevel.OK:
                return None
            action = f"spend_{spend.level}"
            said = session.exec(select(func.count()).select_from(AuditEntry).where(
                AuditEntry.action == action,
                col(AuditEntry.at) >= budget.day_start(now))).one()
            if said:
                return None
            audit.record(session, "budget", action, None,
                         f"${spend.spent_usd:.2f} of ${spend.cap_usd:.2f} today")
            return spend

    def spend_in(self, session: Session, now: datetime) -> budget.Spend:
        """Today's cost of every run started since midnight UTC, against the cap."""
        return budget.Spend(self._spent_today(session, now), self._cap(session))

    def _spent_today(self, session: Session, now: datetime) -> float:
        rows = session.exec(select(Routine.model, func.sum(Run.input_tokens),
                                   func.sum(Run.output_tokens))
                            .join(Routine, col(Routine.id) == col(Run.routine_id))
                            .where(col(Run.started_at) >= budget.day_start(now))
                            .group_by(col(Routine.model))).all()
        return float(sum(self.policy.prices.cost_usd(model, int(i or 0), int(o or 0))
                         for model, i, o in rows))

    def _cap(self, session: Session) -> float:
        cap = session.get(SpendCap, 1)
        return cap.cap_usd if cap else self.policy.daily_spend_cap_usd

    def _spend_for_trigger(self, session: Session, now: datetime) -> budget.Spend:
        """Without a cap, nothing to refuse: today's cost is not summed for a trigger."""
        cap = self._cap(session)
        return budget.Spend(self._spent_today(session, now) if cap > 0 else 0.0, cap)

    @staticmethod
    def _runs_since(session: Session, routine: Routine, since: datetime) -> int:
        return int(session.exec(select(func.count()).select_from(Run).where(
            Run.routine_id == routine.id, col(Run.queued_at) >= since,
            col(Run.status).not_in(NEVER_RAN))).one())

    def budget_of(self, session: Session, routine: Routine) -> budget.TriggerBudget:
        """The counts the routine's next trigger is measured against (each counted only
        when a limit needs it)."""
        now = utcnow()
        runs_today = (self._runs_since(session, routine, budget.day_start(now))
                      if routine.max_runs_per_day is not None else 0)
        active = (queries.active_runs(session, routine)
                  if routine.busy_policy == BusyPolicy.SKIP
                  and routine.max_concurrent is not None else None)
        return budget.TriggerBudget(routine.name, runs_today, routine.max_runs_per_day,
                                    active, routine.max_concurrent,
                                    self._spend_for_trigger(session, now))

    def enforce(self, session: Session, routine: Routine) -> None:
        """Refuse (and record) a trigger over the routine's day, its busy limit, or the
        global spend cap."""
        refusal = self.budget_of(session, routine).refusal()
        if isinstance(refusal, BudgetExceeded):
            with self.db.session() as audit_session:  # kept although the trigger is refused
                self.record_hit(audit_session, routine, refusal)
        if refusal is not None:
            raise refusal

    @staticmethod
    def record_hit(session: Session, routine: Budgeted, refusal: BudgetExceeded) -> None:
        """A budget refusal is kept in the audit log, whatever becomes of the trigger."""
        audit.record(session, "budget", "budget_hit", routine.name, str(refusal))

    def refusals(self, session: Session,
                 routines: Sequence[Budgeted]) -> dict[int, BudgetExceeded | RoutineBusy]:
        """`enforce` for many routines at once, each judged by the same `TriggerBudget`,
        counted in at most three queries instead of up to three per routine: the refused
        ones' refusals by routine id. Budget hits are recorded in `session` (the caller
        commits the others' runs with them)."""
        now = utcnow()
        busy = {row_id(r) for r in routines
                if r.busy_policy == BusyPolicy.SKIP and r.max_concurrent is not None}
        today = _counts(session, [row_id(r) for r in routines if r.max_runs_per_day is not None],
                        col(Run.queued_at) >= budget.day_start(now),
                        col(Run.status).not_in(NEVER_RAN))
        active = _counts(session, sorted(busy), col(Run.status).in_(ACTIVE))
        spend = self._spend_for_trigger(session, now) if routines else None
        refused: dict[int, BudgetExceeded | RoutineBusy] = {}
        for routine in routines:
            key = row_id(routine)
            assert spend is not None
            refusal = budget.TriggerBudget(
                routine.name, today.get(key, 0), routine.max_runs_per_day,
                active.get(key, 0) if key in busy else None, routine.max_concurrent,
                spend).refusal()
            if isinstance(refusal, BudgetExceeded):
                self.record_hit(session, routine, refusal)
            if refusal is not None:
                refused[key] = refusal
        return refused


def _counts(session: Session, routine_ids: list[int], *where: Any) -> dict[int, int]:
    """Runs per routine matching `where`, for the routines given (none: no query)."""
    if not routine_ids:
        return {}
    rows = session.exec(select(Run.routine_id, func.count()).where(
        col(Run.routine_id).in_(routine_ids), *where).group_by(col(Run.routine_id))).all()
    return {int(routine_id): int(count) for routine_id, count in rows}
