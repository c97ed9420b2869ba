"""Schedules: saved in the database, fired by the scheduler door, caught up once.

A fire time comes with every routine due at it (`fired_all`), so ten thousand routines on
one schedule are queued in a few transactions of `FIRE_CHUNK` routines, not three
transactions each: per chunk the rules of a trigger (the kill switch, pause, the run for
this time already queued, the rate limit, budgets) are read in a handful of queries, and
the runs and their audit entries are written with one multi-row INSERT each. A high-risk
routine's run needs an approval request: it goes through `TriggerService.trigger` itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy
from sqlalchemy import insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core import schedule
from bot.core.roles import Action
from bot.core.statuses import BusyPolicy, RiskLevel, RunStatus, TriggerKind
from bot.core.trigger import Trigger
from bot.errors import (
    DatabaseUnavailable,
    NoSchedule,
    RateLimited,
    RoutineNotFound,
    RoutinePaused,
    RoutinesError,
)
from bot.services.context import Service, Shared
from bot.services.events import RunQueued, ScheduleChanged
from bot.services.killswitch import KillSwitchService
from bot.services.triggers import TriggerService
from bot.services.views import MissedFires, ScheduledFires
from bot.store import audit, trigger_hits
from bot.store.queries import row_id
from bot.store.tables import (
    AuditEntry,
    KillSwitch,
    MissedFire,
    Routine,
    Run,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)
# Routines per transaction: large enough that 10,000 due at once are a few commits, small
# enough that SQLite's write lock is never held near its 2 s busy timeout.
FIRE_CHUNK = 1000
MISSED_ROWS = 500  # rows of one INSERT of missed fires (4 values each: SQLite's limit)
SCHEDULER = "schedule"  # the actor of scheduled runs and of their audit entries
RUN_TABLE: sqlalchemy.Table = Run.__table__  # type: ignore[attr-defined]
AUDIT_TABLE: sqlalchemy.Table = AuditEntry.__table__  # type: ignore[attr-defined]
MISSED_TABLE: sqlalchemy.Table = MissedFire.__table__  # type: ignore[attr-defined]
ROUTINE_TABLE: sqlalchemy.Table = Routine.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Due:
    """What the rules of a scheduled trigger read of a routine: a few columns, not an ORM
    row (building 10,000 of those took longer than everything else a fire does)."""

    id: int
    name: str
    prompt: str
    paused: bool
    risk: RiskLevel
    max_runs_per_day: int | None
    max_concurrent: int | None
    busy_policy: BusyPolicy


@dataclass
class _Chunk:
    """What one transaction of `fired_all` decided."""

    queued: dict[str, int] = field(default_factory=dict)
    paused: list[str] = field(default_factory=list)
    refused: dict[str, RoutinesError] = field(default_factory=dict)
    approvals: list[str] = field(default_factory=list)  # high risk: the single path, after
    held: bool = False
    new_runs: int = 0


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
        """Every saved schedule: the scheduler is rebuilt from these at start-up, and
        compared with them at each resync (three columns, not ten thousand rows)."""
        with self.db.session() as session:
            rows = session.exec(select(Routine.name, Routine.schedule, Routine.schedule_tz)
                                .where(col(Routine.schedule).is_not(None))).all()
        return {name: schedule.Schedule(expression or "", zone)
                for name, expression, zone in rows}

    def fired(self, name: str, scheduled_for: datetime) -> int | None:
        """One routine's scheduled time came (see `fired_all`): its run's id; None if it
        was skipped (paused, the kill switch); a refusal (rate limit...) is raised."""
        fires = self.fired_all((name,), scheduled_for)
        if name in fires.refused:
            raise fires.refused[name]
        return fires.queued.get(name)

    def fired_all(self, names: Iterable[str], scheduled_for: datetime) -> ScheduledFires:
        """A scheduled time came for these routines: queue a run for each, through the
        rules of a trigger; a paused routine is skipped.

        The scheduled time is each run's reference, so the same time never runs twice for
        a routine. While the kill switch is engaged the fires are skipped and recorded as
        missed. Each routine's time is dealt with (`last_fire_at`) whatever its fate. A
        chunk the database refused (locked, out of reach) is refused for its routines with
        `DatabaseUnavailable`, and firing them again is safe."""
        fires = _Chunk()
        for chunk in _chunks(sorted(set(names)), FIRE_CHUNK):
            try:
                done = self._fire_chunk(chunk, scheduled_for)
            except DatabaseUnavailable as exc:
                fires.refused.update(dict.fromkeys(chunk, exc))
                continue
            fires.queued.update(done.queued)
            fires.paused.extend(done.paused)
            fires.refused.update(done.refused)
            fires.held = fires.held or done.held
            fires.new_runs += done.new_runs
            for name in done.approvals:
                self._fire_one(name, scheduled_for, fires)
        if fires.new_runs:
            self.bus.publish(RunQueued())
        return ScheduledFires(scheduled_for, fires.queued, tuple(fires.paused), fires.refused,
                              fires.held)

    def _fire_one(self, name: str, scheduled_for: datetime, fires: _Chunk) -> None:
        """A high-risk routine's fire: the single trigger path, which requests approval."""
        try:
            triggered = self.triggers.trigger(name, _trigger(scheduled_for))
        except RoutinePaused:
            fires.paused.append(name)
            return
        except RoutinesError as exc:
            fires.refused[name] = exc
            return
        fires.queued[name] = row_id(triggered.view.run)

    def _fire_chunk(self, names: Sequence[str], when: datetime) -> _Chunk:
        done = _Chunk()
        with self.db.session() as session:
            routines = _due_routines(session, names)
            done.refused.update({n: RoutineNotFound(n) for n in names if n not in routines})
            if not routines:
                return done
            ids = [r.id for r in routines.values()]
            _advance(session, ids, when)  # the first write: it takes SQLite's write lock
            if KillSwitch.current(session).engaged:
                _record_missed(session, [(r.id, r.name) for r in routines.values()], (when,), "")
                done.held = True
                return done
            due: list[_Due] = []
            for routine in routines.values():
                if routine.paused:
                    done.paused.append(routine.name)
                elif routine.risk == RiskLevel.HIGH:
                    done.approvals.append(routine.name)
                else:
                    due.append(routine)
            earlier = _earlier_runs(session, [r.id for r in due], when)
            done.queued.update({r.name: earlier[r.id] for r in due if r.id in earlier})
            admitted = self._within_limits(session, [r for r in due if r.id not in earlier],
                                           done)
            _write_runs(session, admitted, when, done)
        return done

    def _within_limits(self, session: Session, routines: list[_Due],
                       done: _Chunk) -> list[_Due]:
        """The rate limit (shared with every door and process: its windows read locked in
        one go, the admitted fires' hits written with them), then the routines' budgets."""
        admitted: list[_Due] = []
        now = utcnow()
        rates = self.triggers.rate_windows(session, [r.id for r in routines], now)
        for routine in routines:
            retry_after = rates[routine.id].retry_after()
            if retry_after is not None:
                done.refused[routine.name] = RateLimited(routine.name, retry_after)
            else:
                admitted.append(routine)
        refusals = self.triggers.spend.refusals(session, admitted)
        done.refused.update({r.name: refusals[r.id] for r in admitted if r.id in refusals})
        admitted = [r for r in admitted if r.id not in refusals]
        trigger_hits.record(session, [(r.id, now) for r in admitted])
        return admitted

    def missed(self, name: str, times: tuple[datetime, ...], why: str,
               more: bool = False) -> MissedFires:
        """Scheduled times that will not run: recorded, and returned to be announced (no
        time at all if every one was recorded already, by this process or another)."""
        missed = self.missed_all((name,), times, why, more)
        if missed:
            return missed[0]
        with self.db.session() as session:
            return MissedFires(self._require(session, name), (), why, more)

    def missed_all(self, names: Iterable[str], times: tuple[datetime, ...], why: str,
                   more: bool = False) -> list[MissedFires]:
        """The same missed times for many routines (a dropped fire of a shared schedule,
        a restart): recorded in a few transactions, one notice per routine returned, in
        name order, of the times this call recorded: a time another process recorded
        first is its to announce, so no notice is posted twice. Routines deleted
        meanwhile are left out."""
        missed: list[MissedFires] = []
        for chunk in _chunks(sorted(set(names)), FIRE_CHUNK):
            with self.db.session() as session:
                routines = _routines(session, chunk)
                recorded: dict[int, tuple[datetime, ...]] = {}
                if routines:
                    pairs = [(row_id(r), r.name) for r in routines.values()]
                    _advance(session, [routine_id for routine_id, _ in pairs], times[-1])
                    recorded = _record_missed(session, pairs, times, why)
            missed.extend(MissedFires(routines[n], recorded[row_id(routines[n])], why, more)
                          for n in sorted(routines) if row_id(routines[n]) in recorded)
        return missed

    def catch_up(self, now: datetime, grace_seconds: int) -> list[MissedFires]:
        """At start-up: at most one run per routine for fires missed while the bot was down
        (within the grace period); every other missed fire is returned to be announced.

        Routines that share a schedule and a last fire (most do: they fired together) are
        decided once and recorded and fired together."""
        with self.db.session() as session:
            rows = session.exec(select(Routine.name, Routine.schedule, Routine.schedule_tz,
                                       Routine.last_fire_at)
                                .where(col(Routine.schedule).is_not(None))).all()
        decided: dict[tuple[schedule.Schedule, datetime | None], schedule.CatchUp] = {}
        to_miss: defaultdict[tuple[tuple[datetime, ...], bool], list[str]] = defaultdict(list)
        to_run: defaultdict[datetime, list[str]] = defaultdict(list)
        for name, expression, zone, last in rows:
            key = (schedule.Schedule(expression or "", zone), last and as_utc(last))
            if key not in decided:
                decided[key] = schedule.catch_up(key[0], key[1], now, grace_seconds)
            decision = decided[key]
            if decision.missed:
                to_miss[(decision.missed, decision.capped)].append(name)
            if decision.run_for is not None:
                to_run[decision.run_for].append(name)
        missed: list[MissedFires] = []
        for (times, capped), names in to_miss.items():
            missed.extend(self.missed_all(names, times, "the bot was not running", capped))
        for run_for, names in to_run.items():
            for name, refusal in self.fired_all(names, run_for).refused.items():
                log.warning("catch-up run of %s for %s not queued: %s", name,
                            run_for.isoformat(), refusal)
        return missed


def _trigger(scheduled_for: datetime) -> Trigger:
    return Trigger(TriggerKind.SCHEDULE, SCHEDULER, ref=scheduled_for.isoformat())


def _chunks(names: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(names), size):
        yield names[start:start + size]


def _routines(session: Session, names: Collection[str]) -> dict[str, Routine]:
    rows = session.exec(select(Routine).where(col(Routine.name).in_(names))).all()
    return {routine.name: routine for routine in rows}


def _due_routines(session: Session, names: Collection[str]) -> dict[str, _Due]:
    r = ROUTINE_TABLE.c
    rows = session.execute(sqlalchemy.select(
        r.id, r.name, r.prompt, r.paused_at, r.risk, r.max_runs_per_day, r.max_concurrent,
        r.busy_policy).where(r.name.in_(names))).all()
    return {name: _Due(routine_id, name, prompt, paused_at is not None, risk, per_day,
                       concurrent, busy)
            for routine_id, name, prompt, paused_at, risk, per_day, concurrent, busy in rows}


def _advance(session: Session, routine_ids: list[int], when: datetime) -> None:
    """The routines' scheduled time `when` is dealt with (never moved back)."""
    last = ROUTINE_TABLE.c.last_fire_at
    session.execute(update(ROUTINE_TABLE).where(
        ROUTINE_TABLE.c.id.in_(routine_ids), or_(last.is_(None), last < when))
        .values(last_fire_at=when))


def _record_missed(session: Session, routines: list[tuple[int, str]],
                   times: tuple[datetime, ...], why: str) -> dict[int, tuple[datetime, ...]]:
    """Each missed time in the digests' table, unless another process recorded it first
    (once per routine and time), and one audit entry per routine (id, name) that had one
    recorded here: which times of which routine were, to be announced by this process."""
    names = dict(routines)
    rows = [{"routine_id": routine_id, "scheduled_for": when, "why": why,
             "recorded_at": utcnow()} for routine_id, _ in routines for when in times]
    insert_of = (sqlite.insert if session.get_bind().dialect.name == "sqlite"
                 else postgresql.insert)
    recorded: defaultdict[int, set[datetime]] = defaultdict(set)
    for start in range(0, len(rows), MISSED_ROWS):
        statement = insert_of(MISSED_TABLE).values(rows[start:start + MISSED_ROWS])
        for routine_id, when in session.execute(
                statement.on_conflict_do_nothing(index_elements=["routine_id", "scheduled_for"])
                .returning(MISSED_TABLE.c.routine_id, MISSED_TABLE.c.scheduled_for)).all():
            recorded[int(routine_id)].add(as_utc(when))
    mine = {routine_id: tuple(t for t in times if t in recorded[routine_id])
            for routine_id in names if recorded.get(routine_id)}
    if mine:
        session.execute(insert(AUDIT_TABLE), [
            {"actor": SCHEDULER, "action": "schedule_missed", "routine": names[routine_id],
             "details": f"{len(mine_times)} fire(s), last {mine_times[-1].isoformat()}"}
            for routine_id, mine_times in mine.items()])
    return mine


def _earlier_runs(session: Session, routine_ids: list[int], when: datetime) -> dict[int, int]:
    """The routines' runs already queued for this time (idempotency): run id by routine."""
    if not routine_ids:
        return {}
    rows = session.execute(sqlalchemy.select(RUN_TABLE.c.routine_id, RUN_TABLE.c.id).where(
        RUN_TABLE.c.routine_id.in_(routine_ids),
        RUN_TABLE.c.trigger_kind == TriggerKind.SCHEDULE,
        RUN_TABLE.c.trigger_ref == when.isoformat())).all()
    return {int(routine_id): int(run_id) for routine_id, run_id in rows}


def _write_runs(session: Session, routines: list[_Due], when: datetime,
                done: _Chunk) -> None:
    """A run for each routine, in one multi-row INSERT (the ids read back in one query:
    SQLite returns them in order only one row per statement), and its audit entry, in
    another. Should the INSERT meet a run for this time that another process committed
    meanwhile, it is undone to its savepoint, and that routine's run is the earlier one."""
    trigger = _trigger(when)
    while routines:
        try:
            with session.begin_nested():
                session.execute(insert(RUN_TABLE), [
                    {"routine_id": r.id, "trigger_kind": trigger.kind,
                     "triggered_by": trigger.actor, "trigger_ref": trigger.ref,
                     "prompt": r.prompt, "status": RunStatus.QUEUED} for r in routines])
        except IntegrityError:
            earlier = _earlier_runs(session, [r.id for r in routines], when)
            if not earlier:  # not a run for this time: a routine deleted meanwhile...
                raise
            done.queued.update({r.name: earlier[r.id] for r in routines if r.id in earlier})
            routines = [r for r in routines if r.id not in earlier]
            continue
        ids = _earlier_runs(session, [r.id for r in routines], when)
        session.execute(insert(AUDIT_TABLE), [
            {"actor": trigger.actor, "action": "run", "routine": r.name,
             "details": f"run #{ids[r.id]} by {trigger.kind}"} for r in routines])
        done.queued.update({r.name: ids[r.id] for r in routines})
        done.new_runs += len(routines)
        return
