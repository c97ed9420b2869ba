"""Run rollups on the real database (SQLite; PostgreSQL with -m postgres): over seeded random
runs they hold exactly what the runs add up to, and the digest read from them says exactly
what the digest read from the runs alone says, over random periods; every way a run
finishes counts it once, also when the same verdict is recorded twice, when a run is
retried, when finishes race in threads, and when a finish is rolled back and done again
after a restart."""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event
from sqlmodel import select

from bot.core.digest import DigestLimits
from bot.core.redaction import Redactor
from bot.core.retry import RetryPolicy
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.statuses import FailureKind, RiskLevel, RunStatus
from bot.core.trigger import manual
from bot.core.verdict import RunOutcome
from bot.errors import DatabaseUnavailable
from bot.services import ServicePolicy, Services
from bot.services.digests import DigestService
from bot.store import rollups, schema
from bot.store.database import Database
from bot.store.queries import row_id
from bot.store.tables import Routine, Run, RunDayRollup, RunRollup, utcnow
from tests.support.digests import PRICES
from tests.support.rollups import assert_rollups_agree, stored_day_rollups, stored_rollups

pytestmark = pytest.mark.postgres
OWNER, APPROVER = "U0OWNER01", "U0APPROV1"
BASE = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
SPAN = timedelta(hours=78)  # three UTC days and more: periods hold whole days and hours
KINDS = [None, *FailureKind]
SUCCEEDED = RunOutcome(RunStatus.SUCCEEDED, "done", None, None)
OVERLOADED = RunOutcome(RunStatus.ERROR, None, "the API answered 529",
                        FailureKind.API_UNAVAILABLE)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


def make_services(db: Database) -> Services:
    return Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5,
                                      triggers_per_minute=10_000, admins=(OWNER,)),
                    Redactor(()))


def add_routines(db: Database, count: int) -> list[int]:
    with db.session() as session:
        routines = [Routine(name=f"r{i}", prompt="p", repo_url="file:///r", model="cheap",
                            channel_id="C0RESULTS1", timeout_seconds=60, max_turns=4,
                            created_by="U1") for i in range(count)]
        session.add_all(routines)
        session.flush()
        return [row_id(r) for r in routines]


def random_run(rng: random.Random, routine_id: int) -> Run:
    """Any status (some still pending), finished at any microsecond of the span, some never
    started, durations in whole milliseconds (so no two are closer than SQLite can tell)."""
    status = rng.choice(list(RunStatus))
    finished = BASE + timedelta(microseconds=rng.randrange(int(SPAN.total_seconds() * 1e6)))
    started = None if rng.random() < 0.15 else finished - timedelta(
        milliseconds=rng.randrange(1, 3_600_000))
    return Run(routine_id=routine_id, status=status, triggered_by="U1", prompt="p",
               started_at=started, finished_at=finished if status.finished else None,
               failure_kind=rng.choice(KINDS), input_tokens=rng.randrange(200_000),
               output_tokens=rng.randrange(20_000))


def store_random_runs(db: Database, rng: random.Random, routine_ids: list[int],
                      count: int) -> None:
    """In units of work of 1 to 40 runs, each counted in its rollups as it is stored (one
    statement for the whole unit, as a kill switch dropping held runs does)."""
    left = count
    while left:
        size = min(left, rng.choice((1, 1, 2, 5, 40)))
        left -= size
        with db.session() as session:
            runs = [random_run(rng, rng.choice(routine_ids)) for _ in range(size)]
            session.add_all(runs)
            session.flush()
            rollups.count_finished(session, [row_id(r) for r in runs if r.finished_at])


def random_period(rng: random.Random) -> tuple[datetime, datetime]:
    """Inside the span or around it, on hours or anywhere, long or short (or empty)."""
    def moment() -> datetime:
        at = BASE - timedelta(hours=2) + timedelta(
            seconds=rng.randrange(int((SPAN + timedelta(hours=4)).total_seconds())))
        return at.replace(minute=0, second=0) if rng.random() < 0.3 else at
    start = moment()
    end = rng.choice((moment(), start + timedelta(minutes=rng.randrange(1, 130))))
    return start, end


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_agree_with_the_runs_and_digests_with_the_digest_of_the_runs(
        db: Database, seed: int) -> None:
    rng = random.Random(seed)
    routine_ids = add_routines(db, 4)
    store_random_runs(db, rng, routine_ids, 600)

    counted = assert_rollups_agree(db)

    with db.session() as session:
        finished = session.exec(select(Run).where(Run.finished_at != None)).all()  # noqa: E711
    assert counted == len(finished) > 0
    for limits in (DigestLimits(), DigestLimits(failures=2, no_report=1, stopped=2, slowest=3)):
        service = DigestService(db, PRICES, limits=limits)
        midnight = BASE.replace(hour=0) + timedelta(days=1)
        periods = [(BASE, BASE + SPAN), (BASE - timedelta(hours=1), BASE + 2 * SPAN),
                   (BASE + timedelta(minutes=30), BASE + timedelta(minutes=50)),
                   (midnight, midnight + timedelta(days=2)),  # whole days only
                   (midnight - timedelta(minutes=90), midnight + timedelta(days=1, hours=3))]
        for start, end in periods + [random_period(rng) for _ in range(25)]:
            from_rollups = service.facts("C0DIGEST1", start, end)
            assert from_rollups == service.facts("C0DIGEST1", start, end, from_rollups=False)


def test_the_backfill_builds_the_rollups_the_finishes_kept(db: Database) -> None:
    store_random_runs(db, random.Random(4), add_routines(db, 3), 300)
    kept = {key: row.model_dump() for key, row in stored_rollups(db).items()}
    kept_days = stored_day_rollups(db)

    with db.engine.begin() as connection:
        connection.execute(delete(RunRollup))
        connection.execute(delete(RunDayRollup))
        rollups.backfill(connection)

    assert {key: row.model_dump() for key, row in stored_rollups(db).items()} == kept
    assert stored_day_rollups(db) == kept_days != {}


def test_every_way_a_run_finishes_counts_it_once(db: Database) -> None:
    services = make_services(db)
    draft = RoutineDraft(name="demo", prompt="p", repo_url="file:///r", channel_id="C0123ABC")
    services.routines.create(draft, OWNER)
    services.routines.set_retry_policy("demo", RetryPolicy(1, 5), OWNER)
    services.routines.create(RoutineDraft(name="gated", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), OWNER)
    services.routines.change("gated", {"risk": RiskLevel.HIGH, "approvers": APPROVER}, OWNER)

    def run(name: str) -> int:
        return row_id(services.triggers.trigger(name, manual(OWNER)).view.run)

    done = run("demo")
    services.runs.finish(done, SUCCEEDED, 100, 10, "")
    services.runs.finish(done, SUCCEEDED, 100, 10, "")  # the same verdict recorded twice
    services.runs.finish(done, OVERLOADED, 7, 7, "")  # a late other one: the first stays
    flaky = run("demo")
    services.runs.finish(flaky, OVERLOADED, 50, 5, "")  # retried: a new run is queued
    [retry] = [v.run for v in services.routines.history("demo") if v.run.retry_of == flaky]
    services.runs.finish(row_id(retry), SUCCEEDED, 60, 6, "")
    services.runs.cancel(run("demo"), OWNER)
    rejected, expired = run("gated"), run("gated")
    approvals = {v.run.id: v.approval for v in services.approvals.to_post()}
    services.approvals.decide(row_id(approvals[rejected]), APPROVER, approve=False)
    services.approvals.expire(utcnow() + timedelta(days=2))
    held = [run("demo") for _ in range(3)]  # queued, then held by the kill switch
    services.kill_switch.engage(OWNER, "incident")
    services.kill_switch.disengage(OWNER)
    services.kill_switch.release_held(OWNER, drop=True)

    assert assert_rollups_agree(db) == 6 + len(held)
    counts: dict[RunStatus, int] = {}
    for row in stored_rollups(db).values():
        counts[RunStatus(row.status)] = counts.get(RunStatus(row.status), 0) + row.runs
    assert counts == {RunStatus.SUCCEEDED: 2, RunStatus.ERROR: 1,
                      RunStatus.CANCELLED: 1 + len(held), RunStatus.REJECTED: 1,
                      RunStatus.EXPIRED: 1}
    assert {services.runs.get(r).run.status for r in (rejected, expired, *held)} == {
        RunStatus.REJECTED, RunStatus.EXPIRED, RunStatus.CANCELLED}


def until_recorded(action: Callable[[], Any]) -> None:
    """What `RunRecorder.record_until_done` does: a locked database is waited out."""
    while True:
        try:
            action()
            return
        except DatabaseUnavailable:
            continue


def in_threads(actions: list[Callable[[], Any]]) -> None:
    barrier = threading.Barrier(len(actions))
    failures: list[BaseException] = []

    def go(action: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            until_recorded(action)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=go, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_finishes_racing_in_threads_count_each_run_once(db: Database) -> None:
    services = make_services(db)
    services.routines.create(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), OWNER)
    runs = [row_id(services.triggers.trigger("demo", manual(OWNER)).view.run)
            for _ in range(6)]

    def finish(run_id: int) -> Callable[[], Any]:
        return functools.partial(services.runs.finish, run_id, SUCCEEDED, 10, 1, "")

    # Four followers of one run record its verdict at the same moment...
    in_threads([finish(runs[0])] * 4)
    # ...and five runs of the routine finish at the same moment, into the same rollup.
    in_threads([finish(run_id) for run_id in runs[1:]])

    assert assert_rollups_agree(db) == 6
    [row] = stored_rollups(db).values()
    assert (row.runs, row.input_tokens, row.output_tokens) == (6, 60, 6)


def test_a_finish_rolled_back_counts_nothing_and_once_done_again_counts_once(
        db: Database) -> None:
    services = make_services(db)
    services.routines.create(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), OWNER)
    run_id = row_id(services.triggers.trigger("demo", manual(OWNER)).view.run)
    assert services.runs.claim_next() is not None

    def fail_once(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO runrollup"):
            event.remove(db.engine, "before_cursor_execute", fail_once)
            raise RuntimeError("the bot died in the middle of the verdict's unit of work")

    event.listen(db.engine, "before_cursor_execute", fail_once)
    with pytest.raises(RuntimeError):
        services.runs.finish(run_id, SUCCEEDED, 10, 1, "")
    assert services.runs.get(run_id).run.status == RunStatus.RUNNING  # all or nothing
    assert stored_rollups(db) == {} and stored_day_rollups(db) == {}

    restarted = make_services(db)  # the next start follows the run again and records it
    restarted.runs.finish(run_id, SUCCEEDED, 10, 1, "")
    restarted.runs.finish(run_id, SUCCEEDED, 10, 1, "")

    assert assert_rollups_agree(db) == 1


def test_deleting_a_routine_removes_its_rollups(db: Database) -> None:
    services = make_services(db)
    for name in ("keep", "gone"):
        services.routines.create(RoutineDraft(name=name, prompt="p", repo_url="file:///r",
                                              channel_id="C0123ABC"), OWNER)
        run_id = row_id(services.triggers.trigger(name, manual(OWNER)).view.run)
        services.runs.finish(run_id, SUCCEEDED, 10, 1, "")

    services.routines.delete("gone", OWNER)

    assert assert_rollups_agree(db) == 1
    assert [row.routine_id for row in stored_rollups(db).values()] == [
        services.routines.get("keep").id]


def test_rollup_hours_and_days_are_utc_ones_whatever_the_session_zone(database_url: str) -> None:
    """PostgreSQL truncates a timestamptz in the session's time zone: a zone half an hour
    off UTC would cut the hours at :30 if the rollups did not truncate in UTC."""
    postgres = database_url.startswith("postgresql")
    db = Database(database_url + ("?options=-c%20timezone%3DAsia/Kolkata" if postgres else ""))
    try:
        schema.upgrade(db)
        if postgres:
            with db.engine.connect() as connection:
                zone = connection.exec_driver_sql("SELECT current_setting('TimeZone')")
                assert zone.scalar_one() == "Asia/Kolkata"
        store_random_runs(db, random.Random(5), add_routines(db, 2), 200)

        assert assert_rollups_agree(db) > 0
        service = DigestService(db, PRICES)
        assert service.facts("C0DIGEST1", BASE, BASE + SPAN) == service.facts(
            "C0DIGEST1", BASE, BASE + SPAN, from_rollups=False)
    finally:
        db.close()
