"""A missed fire is recorded, audited and returned to be announced once per routine and
scheduled time, however many processes see it missed (a scheduler taking over catches up
where the dead one may have recorded it already): on SQLite, and PostgreSQL with -m postgres."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, select

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.services import ServicePolicy, Services
from bot.services.views import MissedFires
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import AuditEntry, MissedFire, as_utc

OWNER = "U0OWNER01"
AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
TIMES = (AT, AT + timedelta(minutes=1), AT + timedelta(minutes=2))

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


def services_of(db: Database) -> Services:
    return Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5), Redactor(()))


def create(services: Services, *names: str) -> None:
    for name in names:
        services.routines.create(RoutineDraft(
            name=name, prompt="Tick.", repo_url="file:///r", channel_id="C0123ABC",
            schedule="* * * * *", schedule_tz="UTC"), OWNER)


def recorded(db: Database) -> list[tuple[int, datetime]]:
    with db.session() as session:
        rows = session.exec(select(MissedFire.routine_id, MissedFire.scheduled_for)
                            .order_by(col(MissedFire.routine_id),
                                      col(MissedFire.scheduled_for))).all()
    return [(routine_id, as_utc(when)) for routine_id, when in rows]


def audited(db: Database) -> list[tuple[str | None, str]]:
    with db.session() as session:
        rows = session.exec(select(AuditEntry.routine, AuditEntry.details)
                            .where(AuditEntry.action == "schedule_missed")
                            .order_by(col(AuditEntry.id))).all()
    return list(rows)


def test_the_same_missed_times_seen_twice_are_recorded_and_announced_once(
        db: Database) -> None:
    one, other = services_of(db), services_of(db)  # as two processes
    create(one, "alpha", "beta")

    first = one.schedules.missed_all(["alpha", "beta"], TIMES[:2], "the scheduler was late")
    second = other.schedules.missed_all(["alpha", "beta"], TIMES, "the bot was not running")

    assert [(m.routine.name, m.times) for m in first] == [("alpha", TIMES[:2]),
                                                          ("beta", TIMES[:2])]
    assert [(m.routine.name, m.times, m.why) for m in second] == [
        ("alpha", TIMES[2:], "the bot was not running"),
        ("beta", TIMES[2:], "the bot was not running")]
    assert len(recorded(db)) == 6 and len(set(recorded(db))) == 6
    assert [routine for routine, _ in audited(db)] == ["alpha", "beta", "alpha", "beta"]
    assert audited(db)[2][1] == f"1 fire(s), last {TIMES[2].isoformat()}"
    again = other.schedules.missed_all(["alpha", "beta"], TIMES, "the bot was not running")
    assert again == []
    assert len(audited(db)) == 4
    assert other.schedules.missed("alpha", TIMES, "again").times == ()


def test_processes_racing_over_one_missed_fire_announce_it_once(db: Database) -> None:
    racers = [services_of(db) for _ in range(6)]
    create(racers[0], *(f"tick-{index}" for index in range(20)))
    names = [f"tick-{index}" for index in range(20)]
    start = threading.Barrier(len(racers))
    got: list[list[MissedFires]] = []
    failures: list[BaseException] = []

    def race(services: Services) -> None:
        start.wait()
        try:
            got.append(services.schedules.missed_all(names, TIMES, "the scheduler was late"))
        except BaseException as exc:  # a racer's failure fails the test, not only its thread
            failures.append(exc)

    threads = [threading.Thread(target=race, args=(s,)) for s in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    announced = [(m.routine.name, when) for notices in got for m in notices for when in m.times]
    assert failures == []
    assert sorted(announced) == sorted((name, when) for name in names for when in TIMES)
    assert len(recorded(db)) == len(names) * len(TIMES)
    assert len(audited(db)) == sum(len(notices) for notices in got)
