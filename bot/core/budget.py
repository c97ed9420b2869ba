"""Budgets: a routine's runs per day, its concurrency, and the global daily spend cap.

Pure decisions over numbers the service counts in the database. A day is the UTC day:
every budget resets at 00:00 UTC, and messages say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from bot.errors import BudgetExceeded, BudgetKind, RoutineBusy

WARNING_SHARE = 0.8


def day_start(now: datetime) -> datetime:
    """00:00 UTC of `now`'s day: where today's counts begin."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def next_reset(now: datetime) -> datetime:
    return day_start(now) + timedelta(days=1)


def runs_per_day_refusal(routine: str, runs_today: int,
                         limit: int | None) -> BudgetExceeded | None:
    if limit is None or runs_today < limit:
        return None
    return BudgetExceeded(BudgetKind.RUNS_PER_DAY, routine=routine, limit=limit)


def busy_refusal(routine: str, active: int, limit: int | None) -> RoutineBusy | None:
    """For the `skip` policy: a trigger while the routine is at its limit is dropped."""
    if limit is None or active < limit:
        return None
    return RoutineBusy(routine, active, limit)


class SpendLevel(StrEnum):
    OK = "ok"
    WARNING = "warning"  # 80% of the cap or more
    EXHAUSTED = "exhausted"  # the cap is reached: new runs are refused


@dataclass(frozen=True)
class Spend:
    spent_usd: float
    cap_usd: float  # 0: no cap

    @property
    def level(self) -> SpendLevel:
        if self.cap_usd <= 0:
            return SpendLevel.OK
        if self.spent_usd >= self.cap_usd:
            return SpendLevel.EXHAUSTED
        if self.spent_usd >= WARNING_SHARE * self.cap_usd:
            return SpendLevel.WARNING
        return SpendLevel.OK

    @property
    def share(self) -> float:
        return self.spent_usd / self.cap_usd if self.cap_usd > 0 else 0.0

    def refusal(self) -> BudgetExceeded | None:
        if self.level is not SpendLevel.EXHAUSTED:
            return None
        return BudgetExceeded(BudgetKind.SPEND_CAP, spent_usd=self.spent_usd,
                              cap_usd=self.cap_usd)


@dataclass
class TriggerBudget:
    """A routine's budgets as its next trigger meets them, counted once. A group commit
    admits several runs of one routine in one transaction, so each admitted run is counted
    here (`admit`) instead of being counted again in the database."""

    routine: str
    runs_today: int
    max_runs_per_day: int | None
    active: int | None  # counted only under the `skip` busy policy with a limit
    max_concurrent: int | None
    spend: Spend

    def refusal(self) -> BudgetExceeded | RoutineBusy | None:
        """The routine's day first, then its busy limit, then the global spend cap."""
        refusal = runs_per_day_refusal(self.routine, self.runs_today, self.max_runs_per_day)
        if refusal is None and self.active is not None:
            busy = busy_refusal(self.routine, self.active, self.max_concurrent)
            if busy is not None:
                return busy
        return refusal if refusal is not None else self.spend.refusal()

    def admit(self) -> None:
        """A run was queued: it counts in today's runs and, while queued, as active."""
        self.runs_today += 1
        if self.active is not None:
            self.active += 1
