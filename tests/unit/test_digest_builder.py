"""Digests: the schedule sugar, the command, the pure builder (tables of cases), and the
layout against slack_sdk's Block Kit models. The facts from SQL are in
tests/services/test_digest_facts.py; digest jobs in the scheduler in
tests/doors/test_schedule_runner.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

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
from bot.core.schedule import Schedule, ScheduleError, parse_schedule
from bot.core.statuses import RunStatus
from bot.doors.slack.commands import Command, parse
from bot.doors.slack.messages import Messages
from bot.store.tables import DigestSubscription
from tests.support.block_kit import check_blocks
from tests.support.digests import NOW, PRICES

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
