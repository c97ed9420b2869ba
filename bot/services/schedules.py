"""Schedules: saved in the database, fired by the scheduler door, caught up once."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import col, select

from bot.core import schedule
from bot.core.roles import Action
from bot.core.statuses import (
    TriggerKind,
)
from bot.core.trigger import Trigger
from bot.errors import (
    NoSchedule,
    RoutinePaused,
)
from bot.services.context import Service, Shared
from bot.services.events import ScheduleChanged
from bot.services.killswitch import KillSwitchService
from bot.services.triggers import TriggerService
from bot.services.views import (
    MissedFires,
    Triggered,
)
from bot.store import audit
from bot.store.queries import row_id
from bot.store.tables import (
    MissedFire,
    Routine,
    as_utc,
    utcnow,
)


class ScheduleService(Service):
    def __init__(self, shared: Shared, triggers: TriggerService,
                 kill_switch: KillSwitchService) -> None:
        super().__init__(shared)
        self.triggers = triggers
        self.kill_switch = kill_switch

    def set(self, name: str, expression: str, timezone: str,
            actor: str, force: bool = False) -> tuple[Routine, schedule.Schedule]:
        """Validate and save; fires before now are not owed (the schedule starts now)."""
        when = schedule.parse_schedule(expression, timezone or "UTC",
                                       self.policy.limits.min_schedule_interval)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            self._check_managed(session, actor, routine, force)
            routine.schedule, routine.schedule_tz = when.expression, when.timezone
            routine.last_fire_at = utcnow()
            audit.record(session, actor, "schedule_set", routine.name,
                   f"{when.expression} ({when.timezone})")
        self.bus.publish(ScheduleChanged(routine.name, when))
        return routine, when

    def clear(self, name: str, actor: str, force: bool = False) -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            self._check_managed(session, actor, routine, force)
            if routine.schedule is None:
                raise NoSchedule(routine.name)
            routine.schedule = None
            audit.record(session, actor, "schedule_cleared", routine.name)
        self.bus.publish(ScheduleChanged(routine.name, None))
        return routine

    def all(self) -> dict[str, schedule.Schedule]:
        """Every saved schedule: the scheduler is rebuilt from these at start-up."""
        with self.db.session() as session:
            rows = session.exec(select(Routine).where(col(Routine.schedule).is_not(None))).all()
        return {r.name: schedule.Schedule(r.schedule or "", r.schedule_tz) for r in rows}

    def fired(self, name: str, scheduled_for: datetime) -> Triggered | None:
        """A scheduled time came: queue a run, unless the routine is paused (then skip).

        The scheduled time is the run's reference, so the same time never runs twice.
        While the kill switch is engaged the fire is skipped and recorded as missed."""
        engaged = self.kill_switch.state().engaged
        self._advance(name, scheduled_for, missed=(scheduled_for,) if engaged else ())
        if engaged:
            return None
        try:
            return self.triggers.trigger(name, Trigger(TriggerKind.SCHEDULE, "schedule",
                                                  ref=scheduled_for.isoformat()))
        except RoutinePaused:
            return None

    def missed(self, name: str, times: tuple[datetime, ...], why: str,
               more: bool = False) -> MissedFires:
        """Scheduled times that will not run: recorded, and returned to be announced."""
        routine = self._advance(name, times[-1], missed=times, why=why)
        return MissedFires(routine, times, why, more)

    def catch_up(self, now: datetime, grace_seconds: int) -> list[MissedFires]:
        """At start-up: at most one run per routine for fires missed while the bot was down
        (within the grace period); every other missed fire is returned to be announced."""
        missed: list[MissedFires] = []
        for name, when in self.all().items():
            last = self._last_fire(name)
            decision = schedule.catch_up(when, last and as_utc(last), now, grace_seconds)
            if decision.missed:
                missed.append(self.missed(name, decision.missed,
                                                   "the bot was not running", decision.capped))
            if decision.run_for is not None:
                self.fired(name, decision.run_for)
        return missed

    def _advance(self, name: str, scheduled_for: datetime,
                 missed: tuple[datetime, ...] = (), why: str = "") -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            last = as_utc(routine.last_fire_at) if routine.last_fire_at else scheduled_for
            routine.last_fire_at = max(last, scheduled_for)
            if missed:
                audit.record(session, "schedule", "schedule_missed", routine.name,
                       f"{len(missed)} fire(s), last {missed[-1].isoformat()}")
            session.add_all(MissedFire(routine_id=row_id(routine), scheduled_for=when, why=why)
                            for when in missed)  # for digests
            return routine

    def _last_fire(self, name: str) -> datetime | None:
        with self.db.session() as session:
            return self._require(session, name).last_fire_at
