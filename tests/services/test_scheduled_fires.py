"""Many routines due at one time, fired together (`ScheduleService.fired_all`) on a real
database: each queued exactly once across transactions, a second or concurrent fire of the
same time queueing nothing more, and each rule of a trigger still applied to each routine
of the batch (pause, the kill switch, the rate limit, budgets, approval, audit)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.statuses import RiskLevel, RunStatus, TriggerKind
from bot.core.trigger import manual
from bot.errors import BudgetExceeded, RateLimited, RoutineNotFound
from bot.services import ServicePolicy, Services
from bot.services import schedules as schedules_module
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import Approval, AuditEntry, MissedFire, Routine, Run, as_utc, utcnow

ADMIN, OWNER = "U0ADMIN01", "U0OWNER01"
ROUTINES = 40  # over several chunks of 7 (FIRE_CHUNK, made small here)

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setattr(schedules_module, "FIRE_CHUNK", 7)
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


def make_services(db: Database, triggers_per_minute: int = 1000) -> Services:
    policy = ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5,
                           triggers_per_minute=triggers_per_minute, admins=(ADMIN,))
    return Services(db, policy, Redactor(()))


def names(count: int = ROUTINES) -> list[str]:
    return [f"tick-{index:03d}" for index in range(count)]


def create(services: Services, count: int = ROUTINES) -> list[str]:
    for name in names(count):
        services.routines.create(RoutineDraft(
            name=name, prompt=f"prompt of {name}", repo_url="file:///r", channel_id="C0123ABC",
            schedule="* * * * *", schedule_tz="UTC"), OWNER)
    return names(count)


@pytest.fixture
def services(db: Database) -> Services:
    services = make_services(db)
    create(services)
    return services


def scheduled_runs(db: Database) -> list[tuple[str, str, str]]:
    """(routine, reference, prompt) of every scheduled run."""
    with db.session() as session:
        return [(name, ref or "", prompt) for name, ref, prompt in session.exec(
            select(Routine.name, Run.trigger_ref, Run.prompt)
            .join(Routine, col(Routine.id) == col(Run.routine_id))
            .where(Run.trigger_kind == TriggerKind.SCHEDULE)).all()]


def count(db: Database, table: type[AuditEntry] | type[MissedFire], **where: str) -> int:
    with db.session() as session:
        query = select(func.count()).select_from(table)
        for key, value in where.items():
            query = query.where(getattr(table, key) == value)
        return int(session.exec(query).one())


def at_minute(minutes: int = 1) -> datetime:
    return utcnow().replace(second=0, microsecond=0) + timedelta(minutes=minutes)


def test_every_routine_sharing_a_time_is_queued_once_across_chunks(
        db: Database, services: Services) -> None:
    when = at_minute()

    fires = services.schedules.fired_all(names(), when)
    again = services.schedules.fired_all(reversed(names()), when)  # the same time, again

    runs = scheduled_runs(db)
    assert sorted(name for name, _, _ in runs) == names()  # none lost, none twice
    assert {ref for _, ref, _ in runs} == {when.isoformat()}
    assert all(prompt == f"prompt of {name}" for name, _, prompt in runs)
    assert again.queued == fires.queued and len(set(fires.queued.values())) == ROUTINES
    assert not fires.refused and not fires.paused and not fires.held
    details = {e.routine: e.details for e in services.audit.entries(limit=500)
               if e.action == "run"}
    assert details == {n: f"run #{fires.queued[n]} by schedule" for n in names()}
    with db.session() as session:
        lasts = session.exec(select(Routine.last_fire_at)).all()
    assert {as_utc(last) for last in lasts if last is not None} == {when}


def test_fires_of_one_time_from_two_threads_queue_each_routine_once(
        db: Database, services: Services) -> None:
    when = at_minute()
    other = make_services(db)  # another process, as far as the rate limit knows
    errors: list[BaseException] = []

    def fire(svc: Services) -> None:
        try:
            svc.schedules.fired_all(names(), when)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fire, args=(svc,)) for svc in (services, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not [e for e in errors if "locked" not in str(e) and "busy" not in str(e)]
    again = services.schedules.fired_all(names(), when)  # what a lock refused, now
    assert not again.refused
    assert sorted(name for name, _, _ in scheduled_runs(db)) == names()


def test_a_paused_routine_in_the_batch_is_skipped_while_the_others_fire(
        db: Database, services: Services) -> None:
    services.routines.pause("tick-005", OWNER)
    when = at_minute()

    fires = services.schedules.fired_all(names(), when)

    assert fires.paused == ("tick-005",)
    assert sorted(name for name, _, _ in scheduled_runs(db)) == [
        n for n in names() if n != "tick-005"]
    assert services.schedules.fired("tick-005", when) is None  # skipped, not refused
    with db.session() as session:
        paused = session.exec(select(Routine).where(Routine.name == "tick-005")).one()
    assert paused.last_fire_at is not None and as_utc(paused.last_fire_at) == when


def test_while_the_kill_switch_is_engaged_every_fire_is_recorded_missed(
        db: Database, services: Services) -> None:
    services.kill_switch.engage(ADMIN, "incident")
    when = at_minute()

    fires = services.schedules.fired_all(names(), when)

    assert fires.held and not fires.queued
    assert scheduled_runs(db) == []
    assert count(db, MissedFire) == ROUTINES
    assert count(db, AuditEntry, action="schedule_missed") == ROUTINES


def test_each_refused_routine_gets_its_own_refusal_and_the_others_fire(db: Database) -> None:
    services = make_services(db, triggers_per_minute=2)
    create(services, 10)
    for _ in range(2):  # its two triggers this minute
        services.triggers.trigger("tick-001", manual(OWNER))
    services.routines.change("tick-002", {"max_runs_per_day": 1}, OWNER)
    services.triggers.trigger("tick-002", manual(OWNER))  # its one run today
    services.routines.change("tick-003", {"risk": RiskLevel.HIGH}, OWNER)
    when = at_minute()

    fires = services.schedules.fired_all([*names(10), "never-made"], when)

    assert isinstance(fires.refused["tick-001"], RateLimited)
    assert isinstance(fires.refused["tick-002"], BudgetExceeded)
    assert isinstance(fires.refused["never-made"], RoutineNotFound)
    assert set(fires.refused) == {"tick-001", "tick-002", "never-made"}
    assert sorted(fires.queued) == [n for n in names(10) if n not in {"tick-001", "tick-002"}]
    assert count(db, AuditEntry, action="budget_hit", routine="tick-002") == 1
    with db.session() as session:  # high risk: its run waits for an approval
        status = session.get(Run, fires.queued["tick-003"])
        approvals = session.exec(select(Approval).where(
            Approval.run_id == fires.queued["tick-003"])).all()
    assert status is not None and status.status == RunStatus.AWAITING_APPROVAL
    assert len(approvals) == 1


def test_missed_times_of_many_routines_are_recorded_once_each(
        db: Database, services: Services) -> None:
    times = (at_minute(-2), at_minute(-1))

    missed = services.schedules.missed_all(names(), times, "the scheduler was late")

    assert [m.routine.name for m in missed] == names()
    assert all(m.times == times and m.why == "the scheduler was late" for m in missed)
    assert count(db, MissedFire) == 2 * ROUTINES
    assert count(db, AuditEntry, action="schedule_missed") == ROUTINES


def test_catch_up_runs_each_routine_once_and_announces_the_rest(
        db: Database, services: Services) -> None:
    now = utcnow()
    with db.session() as session:  # as if the bot had been down for ten minutes
        for routine in session.exec(select(Routine)).all():
            routine.last_fire_at = now - timedelta(minutes=10)

    missed = services.schedules.catch_up(now, grace_seconds=300)

    runs = scheduled_runs(db)
    assert sorted(name for name, _, _ in runs) == names()  # one run each: no burst
    assert len({ref for _, ref, _ in runs}) == 1
    assert sorted(m.routine.name for m in missed) == names()
    assert {len(m.times) for m in missed} == {9}
    assert services.schedules.catch_up(now, grace_seconds=300) == []  # dealt with
