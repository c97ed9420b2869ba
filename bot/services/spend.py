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
        rows = session.exec(select(Routine.model, func.sum(Run.input_tokens),
                                   func.sum(Run.output_tokens))
                            .join(Routine, col(Routine.id) == col(Run.routine_id))
                            .where(col(Run.started_at) >= budget.day_start(now))
                            .group_by(col(Routine.model))).all()
        spent = sum(self.policy.prices.cost_usd(model, int(i or 0), int(o or 0))
                    for model, i, o in rows)
        cap = session.get(SpendCap, 1)
        return budget.Spend(spent, cap.cap_usd if cap else self.policy.daily_spend_cap_usd)

    @staticmethod
    def _runs_since(session: Session, routine: Routine, since: datetime) -> int:
        return int(session.exec(select(func.count()).select_from(Run).where(
            Run.routine_id == routine.id, col(Run.queued_at) >= since,
            col(Run.status).not_in(NEVER_RAN))).one())

    def enforce(self, session: Session, routine: Routine) -> None:
        """Refuse (and record) a trigger over the routine's day, its busy limit, or the
        global spend cap."""
        now = utcnow()
        refusal = budget.runs_per_day_refusal(
            routine.name, self._runs_since(session, routine, budget.day_start(now)),
            routine.max_runs_per_day)
        if refusal is None and routine.busy_policy == BusyPolicy.SKIP:
            busy = budget.busy_refusal(routine.name, queries.active_runs(session, routine),
                                       routine.max_concurrent)
            if busy is not None:
                raise busy
        if refusal is None:
            refusal = self.spend_in(session, now).refusal()
        if refusal is not None:
            with self.db.session() as audit_session:  # kept although the trigger is refused
                audit.record(audit_session, "budget", "budget_hit", routine.name, str(refusal))
            raise refusal

    def refusals(self, session: Session,
                 routines: Sequence[Budgeted]) -> dict[int, BudgetExceeded | RoutineBusy]:
        """`enforce` for many routines at once, each judged by the same rules in the same
        order (its day, its busy limit, the spend cap), counted in three queries instead of
        three per routine: the refused ones' refusals by routine id. Budget hits are
        recorded in `session` (the caller commits the others' runs with them)."""
        now = utcnow()
        daily = [r for r in routines if r.max_runs_per_day is not None]
        busy = {row_id(r) for r in routines
                if r.busy_policy == BusyPolicy.SKIP and r.max_concurrent is not None}
        today = _counts(session, [row_id(r) for r in daily],
                        col(Run.queued_at) >= budget.day_start(now),
                        col(Run.status).not_in(NEVER_RAN))
        active = _counts(session, sorted(busy), col(Run.status).in_(ACTIVE))
        spend: budget.Spend | None = None
        refused: dict[int, BudgetExceeded | RoutineBusy] = {}
        for routine in routines:
            key = row_id(routine)
            refusal = budget.runs_per_day_refusal(routine.name, today.get(key, 0),
                                                  routine.max_runs_per_day)
            if refusal is None and key in busy:
                held = budget.busy_refusal(routine.name, active.get(key, 0),
                                           routine.max_concurrent)
                if held is not None:
                    refused[key] = held
                    continue
            if refusal is None:
                spend = spend or self.spend_in(session, now)
                refusal = spend.refusal()
            if refusal is not None:
                audit.record(session, "budget", "budget_hit", routine.name, str(refusal))
                refused[key] = refusal
        return refused


def _counts(session: Session, routine_ids: list[int], *where: Any) -> dict[int, int]:
    """Runs per routine matching `where`, for the routines given (none: no query)."""
    if not routine_ids:
        return {}
    rows = session.exec(select(Run.routine_id, func.count()).where(
        col(Run.routine_id).in_(routine_ids), *where).group_by(col(Run.routine_id))).all()
    return {int(routine_id): int(count) for routine_id, count in rows}
