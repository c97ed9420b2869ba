"""Digests: the schedule sugar, the command, the pure builder (tables of cases), the
layout against slack_sdk's Block Kit models, the SQL facts on the real database, and
digest jobs beside routine jobs in the one scheduler."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from bot.core.digest import (
    Digest,
    DigestFacts,
    DigestLimits,
    Listed,
    MissedFact,
    RunFact,
    UpcomingFact,
    UsageFact,
    build_digest,
    digest_cron,
    digest_owed,
)
from bot.core.pricing import Price, PriceTable
from bot.core.redaction import Redactor
from bot.core.schedule import Schedule, ScheduleError, ScheduleRunner, parse_schedule
from bot.core.statuses import FailureKind, RunStatus
from bot.doors.slack.commands import Command, parse
from bot.doors.slack.messages import Messages
from bot.errors import RoutinesError
from bot.services.digests import DigestService, NotSubscribed
from bot.services.service import RoutineService, ServicePolicy
from bot.settings import Settings
from bot.store.database import Database
from bot.store.tables import AuditEntry, DigestSubscription, Routine, Run
from tests.test_messages import check_blocks

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PRICES = PriceTable({"cheap": Price(1.0, 2.0), "dear": Price(10.0, 20.0)}, Price(3.0, 15.0))
messages = Messages()


# Schedule sugar and the command -------------------------------------------------------

@pytest.mark.parametrize(("typed", "cron"), [
    ("daily 09:00", "0 9 * * *"),
    ("daily 9:30", "30 9 * * *"),
    ("daily", "0 9 * * *"),
    ("DAILY 23:59", "59 23 * * *"),
    ("hourly", "0 * * * *"),
    ("hourly :15", "15 * * * *"),
    ("weekly", "0 9 * * mon"),
    ("weekly fri 16:00", "0 16 * * fri"),
    ("weekly Sunday", "0 9 * * sun"),
    ("weekly 08:00", "0 8 * * mon"),
    ("weekdays 08:30", "30 8 * * mon-fri"),
    ("0 9 * * 1-5", "0 9 * * 1-5"),  # plain cron passes through to parse_schedule
    ("every 6h", "every 6h"),
])
def test_sugar_becomes_cron(typed: str, cron: str) -> None:
    assert digest_cron(typed) == cron
    parse_schedule(digest_cron(typed), "Europe/Paris")  # and the scheduler accepts it


@pytest.mark.parametrize(("typed", "message"), [
    ("daily 25:00", "24-hour time"),
    ("daily 09:61", "24-hour time"),
    ("daily 09:00 10:00", "24-hour time"),
    ("weekly fri 9", "weekly mon 09:00"),
    ("hourly 15", "hourly :MM"),
    ("hourly :75", "hourly :MM"),
])
def test_bad_sugar_says_how_to_write_it(typed: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        digest_cron(typed)


@pytest.mark.parametrize(("text", "command"), [
    ("digest now", Command("digest", name="now")),
    ("digest here", Command("digest", name="here")),
    ("digest here OFF", Command("digest", name="here", arg="off")),
    ("digest here daily 09:00", Command("digest", name="here", arg="daily 09:00")),
    ("digest here daily 09:00 Europe/Paris",
     Command("digest", name="here", arg="daily 09:00", option="Europe/Paris")),
    ("digest here weekly fri 16:00 UTC",
     Command("digest", name="here", arg="weekly fri 16:00", option="UTC")),
    ('digest here "0 9 * * 1-5" America/New_York',
     Command("digest", name="here", arg="0 9 * * 1-5", option="America/New_York")),
    ("digest here 0 9 * * 1-5", Command("digest", name="here", arg="0 9 * * 1-5")),
    ("digest here every 6h", Command("digest", name="here", arg="every 6h")),
])
def test_the_digest_command_is_parsed(text: str, command: Command) -> None:
    assert parse(text) == command


@pytest.mark.parametrize("text", ["digest", "digest now please", "digest #general daily"])
def test_a_malformed_digest_command_shows_its_usage(text: str) -> None:
    parsed = parse(text)
    assert parsed.action == "help" and "/routine digest here" in parsed.problem


def test_schedule_commands_are_parsed_as_before() -> None:
    assert parse('schedule tick "0 9 * * 1" Europe/Paris') == Command(
        "schedule", name="tick", arg="0 9 * * 1", option="Europe/Paris")
    assert parse("schedule tick").action == "help"


@pytest.mark.parametrize(("last_sent", "now", "owed"), [
    ("2026-11-23T08:00", "2026-11-23T08:59", False),  # not due yet
    ("2026-11-23T08:00", "2026-11-23T09:00", True),  # due at 09:00, bot came back then
    ("2026-11-20T08:00", "2026-11-23T12:00", True),  # three were due: still one digest
    ("2026-11-23T09:00:00.5", "2026-11-23T10:00", False),  # 09:00's was sent
])
def test_a_digest_is_owed_at_start_up_only_if_one_fell_due(last_sent: str, now: str,
                                                         owed: bool) -> None:
    daily = Schedule("0 9 * * *", "UTC")
    assert digest_owed(daily, at(last_sent), at(now)) is owed


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# The pure builder -------------------------------------------------------------------

def run_fact(run_id: int, status: str = "failed", reason: str = "tests fail",
             routine: str = "nightly", duration: float | None = 60.0) -> RunFact:
    return RunFact(run_id, routine, status, NOW - timedelta(minutes=run_id), reason, duration)


def facts(**overrides: Any) -> DigestFacts:
    fields: dict[str, Any] = dict(channel_id="C0DIGEST1", start=NOW - timedelta(days=1),
                                  end=NOW)
    fields.update(overrides)
    return DigestFacts(**fields)


@pytest.mark.parametrize(("case", "quiet"), [
    (facts(), True),
    (facts(in_progress=3), True),  # nothing finished yet: still quiet
    (facts(status_counts={"succeeded": 1}), False),
    (facts(missed=Listed((MissedFact("tick", NOW, "the bot was not running"),), 1)), False),
])
def test_a_quiet_period_is_flagged(case: DigestFacts, quiet: bool) -> None:
    assert build_digest(case, PRICES).quiet is quiet


@pytest.mark.parametrize(("counts", "ordered"), [
    ({}, ()),
    ({"failed": 2, "succeeded": 5}, (("succeeded", 5), ("failed", 2))),
    ({"zeta": 1, "killed": 1, "timed_out": 0, "alpha": 2},
     (("killed", 1), ("alpha", 2), ("zeta", 1))),
])
def test_statuses_are_counted_in_a_fixed_order(counts: dict[str, int],
                                               ordered: tuple[tuple[str, int], ...]) -> None:
    digest = build_digest(facts(status_counts=counts), PRICES)
    assert digest.statuses == ordered
    assert digest.total_runs == sum(counts.values())


@pytest.mark.parametrize(("given", "total", "shown", "more"), [
    (0, 0, 0, 0),
    (3, 3, 3, 0),
    (6, 6, 6, 0),
    (6, 40, 6, 34),  # the service fetched the first six of forty
    (9, 9, 6, 3),  # more given than shown: the builder caps
])
def test_long_lists_are_cut_and_say_how_many_more(given: int, total: int, shown: int,
                                                  more: int) -> None:
    listed = Listed(tuple(run_fact(i) for i in range(given)), total)
    digest = build_digest(facts(failures=listed, no_report=listed, stopped=listed), PRICES,
                          DigestLimits(failures=6, no_report=6, stopped=6))
    for section in (digest.failures, digest.no_report, digest.stopped):
        assert (len(section.items), section.total, section.more) == (shown, total, more)


def test_cost_is_priced_per_model_and_added_up_per_routine() -> None:
    usage = (UsageFact("a", "cheap", 2, 1_000_000, 0), UsageFact("a", "dear", 1, 0, 100_000),
             UsageFact("b", "unknown-model", 3, 1_000_000, 1_000_000),
             UsageFact("c", "cheap", 1, 10, 10))
    digest = build_digest(facts(usage=usage, status_counts={"succeeded": 7}), PRICES,
                          DigestLimits(usage=2))
    assert [(u.routine, u.runs, round(u.cost_usd, 6)) for u in digest.usage.items] == [
        ("b", 3, 18.0), ("a", 3, 3.0)]  # the fallback price; 1.0 + 2.0; most expensive first
    assert digest.usage.more == 1
    assert round(digest.total_cost_usd, 6) == round(21.0 + 0.00003, 6)
    other = digest.other_usage
    assert (other.runs, other.input_tokens, round(other.cost_usd, 6)) == (1, 10, 0.00003)


def test_slowest_first_and_the_soonest_next_runs() -> None:
    slow = (run_fact(1, duration=5), run_fact(2, duration=500), run_fact(3, duration=None),
            run_fact(4, duration=50))
    upcoming = tuple(UpcomingFact(f"r{i}", NOW + timedelta(hours=12 - i)) for i in range(12))
    digest = build_digest(facts(slowest=slow, upcoming=upcoming), PRICES,
                          DigestLimits(slowest=3, upcoming=10))
    assert [r.run_id for r in digest.slowest] == [2, 4, 1]
    assert [u.routine for u in digest.upcoming][:2] == ["r11", "r10"]
    assert len(digest.upcoming) == 10


# The layout -------------------------------------------------------------------------

def busiest_digest() -> Digest:
    """Everything at its longest: the layout must still fit Slack."""
    name = "r" + "-x" * 19 + "y"  # 40 characters, the longest a routine name can be
    nasty = "<!channel> & <@U1> **bold** `tick`\n" * 400
    many = Listed(tuple(run_fact(i, reason=nasty, routine=name) for i in range(50)), 5000)
    return build_digest(facts(
        status_counts={status.value: 123_456 for status in RunStatus} | {"weird": 1},
        in_progress=99, failures=many, no_report=many, stopped=many,
        missed=Listed(tuple(MissedFact(name, NOW, nasty) for _ in range(50)), 777),
        slowest=many.items, usage=tuple(UsageFact(f"{name[:-3]}{i:03}", "dear", 10**6,
                                                  10**12, 10**12) for i in range(300)),
        upcoming=tuple(UpcomingFact(name, NOW + timedelta(minutes=i)) for i in range(300)),
    ), PRICES)


def test_the_busiest_digest_fits_slacks_limits_and_says_what_it_left_out() -> None:
    message = messages.render("digest.json.j2", digest=busiest_digest())
    blocks = check_blocks(message)  # every section under 3,000 characters, <= 50 blocks
    shown = json.dumps(message, ensure_ascii=False)
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown
    assert "…and 4994 more failure(s)" in shown
    assert "…and 4992 more run(s)" in shown  # no self-report and stopped lists
    assert "…and 767 more missed fire(s)" in shown
    assert "…and 280 more routine(s)" in shown
    assert len(blocks) <= 12


def test_a_quiet_digest_is_one_line() -> None:
    message = messages.render("digest.json.j2", digest=build_digest(facts(), PRICES))
    check_blocks(message)
    assert len(message["blocks"]) == 1
    assert message["text"].startswith("Digest: Quiet period: no runs finished")


def test_a_small_digest_reads_well() -> None:
    digest = build_digest(facts(
        status_counts={"succeeded": 2, "failed": 2, "timed_out": 1}, in_progress=1,
        failures=Listed((run_fact(1, reason="3 tests fail"),), 1),
        no_report=Listed((run_fact(2, reason="no self-report (exit code 0)"),), 1),
        stopped=Listed((run_fact(3, "timed_out", "timed out after 4s"),), 1),
        usage=(UsageFact("nightly", "cheap", 5, 2000, 100),),
        upcoming=(UpcomingFact("nightly", NOW + timedelta(hours=1)),)), PRICES)
    message = messages.render("digest.json.j2", digest=digest)
    check_blocks(message)
    assert message["text"] == ("Digest 2026-11-22 09:00 UTC to 2026-11-23 09:00 UTC: 5 run(s), "
                               "2 succeeded, 2 failed, 1 timed_out, <$0.01")
    texts = [block["text"]["text"] for block in message["blocks"][1:-1]]
    assert texts[0] == ("*5 run(s)* finished: :white_check_mark: 2 succeeded · :x: 2 failed · "
                        ":alarm_clock: 1 timed out\n1 queued or running now.")
    assert texts[1] == "*Failures* (1)\n:x: *nightly* #1 · 2026-11-23 08:59 UTC\n>3 tests fail"
    assert "*nightly* · 5 run(s) · 2,000 in / 100 out · <$0.01" in texts[-2]
    assert texts[-1] == "*Next scheduled runs*\n2026-11-23 10:00 UTC · *nightly*"


def test_subscription_replies_are_valid() -> None:
    from bot.services.digests import DigestOverview

    row = DigestSubscription(channel_id="C0DIGEST1", schedule="0 9 * * *",
                             schedule_tz="Europe/Paris", created_by="U0ALICE01",
                             last_sent_at=NOW, created_at=NOW)
    for overview in (DigestOverview("C0DIGEST1", row, (NOW, NOW)),
                     DigestOverview("C0DIGEST1", None)):
        check_blocks(messages.render("digest_subscription.json.j2", overview=overview))


# The facts, from the real database ----------------------------------------------------

@pytest.fixture
def db(database_url: str) -> Any:
    database = Database(database_url)
    database.create_schema()
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
    with db.session() as session:
        session.add(Run(routine_id=routine_id, status=status, triggered_by="U1", prompt="p",
                        started_at=finished - timedelta(seconds=seconds) if finished else None,
                        finished_at=finished, reason=reason, failure_kind=failure,
                        input_tokens=tokens, output_tokens=tokens // 10))


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
    routines = RoutineService(db, ServicePolicy.from_settings(settings), Redactor(()))
    add_routine(db, "tick", schedule="0 * * * *")
    before = datetime.now(UTC)
    routines.schedule_missed("tick", (NOW, NOW + timedelta(hours=1)), "the bot was not running")
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
    service.on_schedule_changed(lambda channel, when: changes.append((channel, when)))

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


# Digest jobs beside routine jobs ---------------------------------------------------------

@pytest.mark.timeout(15)
async def test_digest_jobs_share_the_scheduler_without_touching_routine_jobs() -> None:
    fired: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def routine(name: str, when: datetime) -> None:
        fired.put_nowait(("routine", name))

    async def digest(name: str, when: datetime) -> None:
        fired.put_nowait(("digest", name))

    runner = ScheduleRunner(routine, grace_seconds=5)
    runner.register("digest", digest)
    every_second = parse_schedule("every 1s", min_interval_seconds=1)
    runner.start()
    try:
        runner.set("same", parse_schedule("0 3 * * *"))
        runner.set("same", every_second, kind="digest")  # the same name, another kind
        assert runner.names() == {"same"} and runner.names("digest") == {"same"}
        assert runner.next_fire_time("same") != runner.next_fire_time("same", kind="digest")
        assert await asyncio.wait_for(fired.get(), timeout=3) == ("digest", "same")
        runner.remove("same", kind="digest")
        assert runner.names("digest") == set() and runner.names() == {"same"}
        with pytest.raises(ValueError, match="unknown job kind"):
            runner.set("x", every_second, kind="nope")
        with pytest.raises(ValueError, match="plain word"):
            runner.register("a:b", digest)
    finally:
        runner.shutdown()
        await asyncio.sleep(0.05)
