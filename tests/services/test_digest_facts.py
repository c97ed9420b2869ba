"""Digests on the real database (SQLite; PostgreSQL when ROUTINES_TEST_POSTGRES is set): the
facts of a period from SQL aggregates, missed fires recorded and reported, subscriptions
validated, saved, replaced and audited, each digest starting where the last one ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from bot.core.digest import DigestLimits, MissedFact, build_digest
from bot.core.redaction import Redactor
from bot.core.schedule import Schedule, ScheduleError
from bot.core.statuses import FailureKind, RunStatus
from bot.errors import RoutinesError
from bot.services import ServicePolicy, Services
from bot.services.digests import DigestService, NotSubscribed
from bot.services.events import DigestScheduleChanged
from bot.settings import Settings
from bot.store import rollups, schema
from bot.store.database import Database
from bot.store.queries import row_id
from bot.store.tables import AuditEntry, Routine, Run
from tests.support.digests import NOW, PRICES

pytestmark = pytest.mark.postgres


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Any:
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


def add_routine(db: Database, name: str, model: str = "cheap", **fields: Any) -> int:
    with db.session() as session:
        routine = Routine(name=name, prompt="p", repo_url="file:///r", channel_id="C0RESULTS1",
                          model=model, timeout_seconds=60, max_turns=4, created_by="U1",
                          **fields)
        session.add(routine)
        session.flush()
        assert routine.id is not None
        return routine.id


def add_run(db: Database, routine_id: int, status: RunStatus, finished: datetime | None,
            reason: str | None = None, seconds: float = 10, tokens: int = 100,
            failure: FailureKind | None = None) -> None:
    """Stored as it ends (`finished`: None for a run still going), and counted in its
    rollup in the same unit of work, as the services do when a run finishes."""
    with db.session() as session:
        run = Run(routine_id=routine_id, status=status, triggered_by="U1", prompt="p",
                  started_at=finished - timedelta(seconds=seconds) if finished else None,
                  finished_at=finished, reason=reason, failure_kind=failure,
                  input_tokens=tokens, output_tokens=tokens // 10)
        session.add(run)
        session.flush()
        if status.finished:
            rollups.count_finished(session, [row_id(run)])


def test_the_facts_of_a_period_come_from_sql_aggregates(db: Database) -> None:
    service = DigestService(db, PRICES, limits=DigestLimits(failures=2))
    red, blue = add_routine(db, "red"), add_routine(db, "blue", model="dear",
                                                    schedule="0 10 * * *")
    add_routine(db, "held", schedule="0 9 * * *", paused_at=NOW)
    start, end = NOW - timedelta(hours=1), NOW
    add_run(db, red, RunStatus.SUCCEEDED, start - timedelta(seconds=1))  # before the period
    add_run(db, red, RunStatus.SUCCEEDED, start, seconds=300)  # the first instant is in
    add_run(db, red, RunStatus.FAILED, start + timedelta(minutes=1), "3 tests fail",
            failure=FailureKind.REPORTED_FAILURE)
    add_run(db, red, RunStatus.FAILED, start + timedelta(minutes=2), "no self-report (exit 0)",
            failure=FailureKind.NO_SELF_REPORT)
    add_run(db, blue, RunStatus.FAILED, start + timedelta(minutes=3), None)  # stored kindless
    add_run(db, blue, RunStatus.ERROR, start + timedelta(minutes=4), "engine down",
            failure=FailureKind.INFRASTRUCTURE)
    add_run(db, blue, RunStatus.TIMED_OUT, start + timedelta(minutes=5), "timed out", 3600,
            failure=FailureKind.TIMED_OUT)
    add_run(db, blue, RunStatus.KILLED, start + timedelta(minutes=6), "killed",
            failure=FailureKind.KILLED)
    add_run(db, blue, RunStatus.SUCCEEDED, end)  # the last instant is the next period's
    add_run(db, blue, RunStatus.RUNNING, None)

    found = service.facts("C0DIGEST1", start, end)

    assert found.status_counts == {"succeeded": 1, "failed": 3, "error": 1, "timed_out": 1,
                                   "killed": 1}
    assert found.in_progress == 1
    assert [(r.routine, r.status, r.reason) for r in found.failures.items] == [
        ("blue", "error", "engine down"), ("blue", "failed", "")]  # the latest first
    assert found.failures.total == 3  # 3 tests fail, no reason, engine down
    assert [r.reason for r in found.no_report.items] == ["no self-report (exit 0)"]
    assert found.no_report.total == 1
    assert [r.status for r in found.stopped.items] == ["killed", "timed_out"]
    assert [(r.routine, round(r.duration_seconds or 0)) for r in found.slowest[:2]] == [
        ("blue", 3600), ("red", 300)]
    assert sorted((u.routine, u.model, u.runs, u.input_tokens) for u in found.usage) == [
        ("blue", "dear", 1, 100), ("blue", "dear", 1, 100), ("blue", "dear", 1, 100),
        ("blue", "dear", 1, 100), ("red", "cheap", 1, 100), ("red", "cheap", 2, 200)]
    assert [u.routine for u in found.upcoming] == ["blue"]  # a paused routine is held
    assert found.upcoming[0].at == datetime(2026, 11, 23, 10, tzinfo=UTC)


def test_no_self_report_is_told_by_the_failure_kind_not_the_wording(db: Database) -> None:
    service = DigestService(db, PRICES)
    red = add_routine(db, "red")
    start, end = NOW - timedelta(hours=1), NOW
    # The agent's own failure report, whose words happen to read like a missing report...
    add_run(db, red, RunStatus.FAILED, start + timedelta(minutes=1),
            "no self-report: the fixture never answered", failure=FailureKind.REPORTED_FAILURE)
    # ...and a run that did end without one, whatever its reason says.
    add_run(db, red, RunStatus.FAILED, start + timedelta(minutes=2), "exit code 137",
            failure=FailureKind.NO_SELF_REPORT)
    add_run(db, red, RunStatus.FAILED, start + timedelta(minutes=3), "turn limit of 4 reached "
            "without a self-report", failure=FailureKind.TURN_LIMIT)

    found = service.facts("C0DIGEST1", start, end)

    assert [r.reason for r in found.no_report.items] == ["exit code 137"]
    assert found.no_report.total == 1
    assert [r.reason for r in found.failures.items] == [
        "turn limit of 4 reached without a self-report",
        "no self-report: the fixture never answered"]
    assert found.failures.total == 2


def test_missed_fires_are_recorded_once_and_reported_in_the_period(db: Database) -> None:
    settings = Settings(slack_bot_token="x", anthropic_api_key="k")
    routines = Services(db, ServicePolicy.from_settings(settings), Redactor(()))
    add_routine(db, "tick", schedule="0 * * * *")
    before = datetime.now(UTC)
    routines.schedules.missed("tick", (NOW, NOW + timedelta(hours=1)), "the bot was not running")
    service = DigestService(db, PRICES)

    found = service.facts("C0DIGEST1", before, datetime.now(UTC) + timedelta(seconds=1))
    later = service.facts("C0DIGEST1", datetime.now(UTC) + timedelta(seconds=1),
                          datetime.now(UTC) + timedelta(hours=1))

    assert found.missed.total == 2
    assert found.missed.items[0] == MissedFact("tick", NOW + timedelta(hours=1),
                                               "the bot was not running")
    assert later.missed.total == 0
    assert not build_digest(found, PRICES).quiet


def test_subscriptions_are_validated_saved_replaced_and_audited(db: Database) -> None:
    changes: list[tuple[str, Schedule | None]] = []
    service = DigestService(db, PRICES, min_interval_seconds=60)
    service.bus.subscribe(DigestScheduleChanged,
                          lambda event: changes.append((event.channel, event.schedule)))

    for bad, tz in (("daily 25:00", "UTC"), ("0 9 * * *", "Mars/Olympus"),
                    ("every 10s", "UTC"), ("* * *", "UTC")):
        with pytest.raises(ScheduleError):
            service.subscribe("C0DIGEST1", bad, tz, "U1")
    assert service.subscription("C0DIGEST1") is None and changes == []

    first, when = service.subscribe("C0DIGEST1", "daily 09:00", "Europe/Paris", "U1")
    assert when == Schedule("0 9 * * *", "Europe/Paris")
    second, _ = service.subscribe("C0DIGEST1", "weekly fri 16:00", "", "U2")
    assert second.id == first.id and aware(second.last_sent_at) == aware(first.last_sent_at)
    assert service.schedules() == {"C0DIGEST1": Schedule("0 16 * * fri", "UTC")}
    assert service.overview("C0DIGEST1").next_sends[0].weekday() == 4

    service.unsubscribe("C0DIGEST1", "U3")
    with pytest.raises(NotSubscribed):
        service.unsubscribe("C0DIGEST1", "U3")
    with pytest.raises(RoutinesError, match="channel"):
        service.subscribe("", "daily", "UTC", "U1")
    assert [c for c, _ in changes] == ["C0DIGEST1"] * 3 and changes[-1][1] is None
    with db.session() as session:
        audit = session.exec(select(AuditEntry.actor, AuditEntry.action)).all()
    assert list(audit) == [("U1", "digest_subscribed"), ("U2", "digest_subscribed"),
                           ("U3", "digest_unsubscribed")]


def test_one_period_is_marked_sent_once_when_two_processes_composed_it(
        db: Database) -> None:
    """Two schedulers composed the same period (one lost its lease meanwhile): only the
    first mark moves the next period; the other is told it was marked already."""
    one, other = DigestService(db, PRICES), DigestService(db, PRICES)
    one.subscribe("C0DIGEST1", "daily 09:00", "UTC", "U1")
    first = one.compose("C0DIGEST1", datetime.now(UTC) + timedelta(seconds=1))
    late = other.compose("C0DIGEST1", datetime.now(UTC) + timedelta(seconds=2))

    assert first.start == late.start
    assert one.mark_sent(first) is True
    assert other.mark_sent(late) is False
    row = one.subscription("C0DIGEST1")
    assert row is not None and aware(row.last_sent_at) == first.end


def test_each_digest_starts_where_the_last_one_ended(db: Database) -> None:
    service = DigestService(db, PRICES)
    routine = add_routine(db, "red")
    service.subscribe("C0DIGEST1", "daily 09:00", "UTC", "U1")
    add_run(db, routine, RunStatus.SUCCEEDED, datetime.now(UTC))

    first = service.compose("C0DIGEST1", datetime.now(UTC) + timedelta(seconds=1))
    service.mark_sent(first)
    second = service.compose("C0DIGEST1", datetime.now(UTC) + timedelta(seconds=2))
    unsubscribed = service.compose("C0OTHER01", NOW)

    assert first.total_runs == 1 and not first.quiet
    assert second.start == first.end and second.quiet
    assert unsubscribed.end - unsubscribed.start == timedelta(days=1)
    assert service.owed(first.end + timedelta(days=1)) == ["C0DIGEST1"]
