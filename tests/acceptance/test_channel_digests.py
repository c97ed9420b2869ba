"""Digests through the running bot: subscribed from Slack, composed from real runs of the
real agent in real containers, posted as the Slack stand-in receives them, fired by the
scheduler, sent once after downtime, and summarised when there is too much to show."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from bot.core.statuses import FailureKind, RunStatus
from bot.store import rollups
from bot.store.queries import row_id
from bot.store.tables import DigestSubscription, Routine, Run, utcnow
from tests.standins.anthropic_api import AnthropicStandIn, report, text, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.block_kit import check_blocks
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import create_routine, run_and_wait, wait_until
from tests.support.slack_requests import modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

CHANNEL = "C0DIGEST1"


def digests_in(slack_api: SlackApiStandIn, channel: str = CHANNEL) -> list[dict[str, Any]]:
    """Every digest posted in the channel, each checked against Block Kit's models."""
    posted = [m for m in slack_api.messages_in(channel) if m["text"].startswith("Digest")]
    for message in posted:
        check_blocks(message)
    return posted


async def next_digest(slack_api: SlackApiStandIn, seen: int) -> dict[str, Any]:
    await wait_until(lambda: len(digests_in(slack_api)) > seen, timeout=30)
    return digests_in(slack_api)[seen]


def sections(message: dict[str, Any]) -> dict[str, str]:
    """The summary (the first section), then each section's text by its bold title."""
    texts = [block["text"]["text"] for block in message["blocks"] if block["type"] == "section"]
    return {"summary": texts[0], **{text.split("*")[1]: text for text in texts[1:]}}


async def test_a_digest_of_real_runs_then_one_that_summarises_the_overflow(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    scripts = {
        "green": anthropic_api.script("d-green", [report("success", "all green")]),
        "red": anthropic_api.script("d-red", [report("failure", "3 tests fail in test_api.py")]),
        "silent": anthropic_api.script("d-silent", [text("All done!")], [text("Really.")]),
        "slowpoke": anthropic_api.script("d-slow", [tool("run_shell", command="sleep 120")]),
    }
    bot, fake = await start_bot()
    reply = (await fake.slash("digest here daily 09:00 Europe/Paris", channel=CHANNEL)).json()
    assert "runs digest on `0 9 * * *` (Europe/Paris)" in json.dumps(reply["blocks"])
    for name, marker in scripts.items():
        await create_routine(fake, slack_api, name, f"Work. {marker}", git_repo,
                             timeout="4" if name == "slowpoke" else "60")
    await fake.slash('schedule green "0 9 * * *" Europe/Paris')
    for name, status in (("green", "succeeded"), ("red", "failed"), ("silent", "failed"),
                         ("slowpoke", "timed_out")):
        await run_and_wait(fake, slack_api, name, status)

    ack = (await fake.slash("digest now", channel=CHANNEL)).json()
    first = await next_digest(slack_api, 0)

    assert ack["response_type"] == "ephemeral" and "Composing" in ack["text"]
    assert first["text"].startswith("Digest ")
    assert "4 run(s), 1 succeeded, 2 failed, 1 timed_out" in first["text"]
    shown = sections(first)
    assert "1 succeeded · :x: 2 failed · :alarm_clock: 1 timed out" in shown["summary"]
    failures = shown["Failures"]
    assert failures.startswith("*Failures* (1)\n:x: *red* #")
    assert failures.endswith(">3 tests fail in test_api.py")
    silent = shown["Ended without a self-report"]
    assert "(1)" in silent and "*silent*" in silent and "no self-report (exit code" in silent
    assert "*red*" not in silent and "*silent*" not in failures  # called out on its own
    stopped = shown["Timed out or killed"]
    assert "*slowpoke*" in stopped and "timed out after 4s" in stopped
    assert all(f"*{name}*" in shown["Slowest runs"] for name in scripts)
    cost = shown["Tokens and estimated cost"]
    assert all(f"*{name}* · 1 run(s) · " in cost for name in scripts)
    assert "\n*Total* · " in cost and "$" in cost
    assert shown["Next scheduled runs"].endswith(" UTC · *green*")
    assert "Scheduled runs that did not fire" not in shown

    # More than a digest can show, stored as finished runs: the next digest covers only
    # what came after the first one, and says how many it leaves out.
    red = bot.services.routines.get("red").id
    assert red is not None
    with bot.db.session() as session:
        for i in range(52):
            status, reason, kind = (
                (RunStatus.FAILED, f"failure number {i} " + "<x> " * 200,
                 FailureKind.REPORTED_FAILURE) if i < 30
                else (RunStatus.FAILED, "no self-report (exit code 0)",
                      FailureKind.NO_SELF_REPORT) if i < 42
                else (RunStatus.TIMED_OUT, "timed out after 4s", FailureKind.TIMED_OUT))
            run = Run(routine_id=red, status=status, reason=reason, failure_kind=kind,
                      prompt="p", triggered_by="U0ALICE01",
                      started_at=utcnow() - timedelta(seconds=i), finished_at=utcnow(),
                      input_tokens=1000, output_tokens=100)
            session.add(run)
            session.flush()
            rollups.count_finished(session, [row_id(run)])  # as a finish counts it
    await fake.slash("digest now", channel=CHANNEL)
    second = await next_digest(slack_api, 1)

    assert "52 run(s), 42 failed, 10 timed_out" in second["text"]
    shown = sections(second)
    assert shown["Failures"].startswith("*Failures* (30)")
    assert shown["Failures"].endswith("_…and 24 more failure(s)_")
    assert "&lt;x&gt;" in shown["Failures"] and "<x>" not in shown["Failures"]
    assert shown["Ended without a self-report"].endswith("_…and 4 more run(s)_")
    assert shown["Timed out or killed"].endswith("_…and 2 more run(s)_")
    assert "*red* · 52 run(s) · 52,000 in / 5,200 out" in shown["Tokens and estimated cost"]
    assert "*green*" not in shown["Tokens and estimated cost"]


async def test_refusals_save_nothing_and_a_quiet_period_is_one_line(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    bot, fake = await start_bot()

    answers = {typed: (await fake.slash(f"digest here {typed}", channel=CHANNEL)).json()["text"]
               for typed in ("daily 25:00", '"61 * * * *"', "daily 09:00 Mars/Olympus",
                             '"every 10s"', "off")}
    status = (await fake.slash("digest here", channel=CHANNEL)).json()["text"]
    await fake.slash("digest now", channel=CHANNEL)
    quiet = await next_digest(slack_api, 0)

    assert "24-hour time" in answers["daily 25:00"]
    assert "61" in answers['"61 * * * *"']
    assert "IANA" in answers["daily 09:00 Mars/Olympus"]
    assert "60" in answers['"every 10s"']
    assert "gets no digest" in answers["off"]
    assert status == "This channel gets no runs digest."
    assert bot.services.digests.subscription(CHANNEL) is None
    assert quiet["text"].startswith("Digest: Quiet period: no runs finished")
    assert len(quiet["blocks"]) == 1


async def test_scheduled_digests_fire_for_real_each_from_where_the_last_ended(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    bot, fake = await start_bot(min_schedule_interval_seconds=1, max_concurrent_runs=0)

    await fake.slash('digest here "every 1s"', channel=CHANNEL)
    subscribed = bot.services.digests.subscription(CHANNEL)
    assert subscribed is not None

    async def marked_after(previous: datetime) -> DigestSubscription | None:
        """The subscription once the digest just seen is marked sent: after Slack's answer
        is back, not when its call arrives."""
        def moved() -> bool:
            row = bot.services.digests.subscription(CHANNEL)
            return row is not None and row.last_sent_at > previous
        await wait_until(moved, timeout=10)
        return bot.services.digests.subscription(CHANNEL)

    first = await next_digest(slack_api, 0)
    row = await marked_after(subscribed.last_sent_at)
    assert row is not None
    await next_digest(slack_api, 1)
    later = await marked_after(row.last_sent_at)
    reply = (await fake.slash("digest here off", channel=CHANNEL)).json()
    await asyncio.sleep(0.2)
    stopped_at = len(digests_in(slack_api))
    await asyncio.sleep(2.5)

    assert first["text"].startswith("Digest: Quiet period")
    assert row is not None and later is not None and later.last_sent_at > row.last_sent_at
    assert reply["text"] == "This channel no longer gets a runs digest."
    assert len(digests_in(slack_api)) == stopped_at
    assert bot.scheduler.runner.names("digest") == set()


async def test_after_downtime_one_digest_covers_the_period_and_its_missed_fires(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    first, fake = await start_bot(max_concurrent_runs=0)
    reply = await fake.submit_view("routine_create", modal_values(
        name="tick", prompt="Tick.", repo_url=git_repo, branch="main",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"))
    assert reply.status == 200 and reply.text == ""
    await fake.slash('schedule tick "every 1m"')
    await fake.slash("digest here daily 09:00", channel=CHANNEL)
    await first.stop()
    first.port = 0
    with first.db.session() as session:  # as if the bot had been down for three days
        session.execute(update(Routine).values(last_fire_at=utcnow() - timedelta(minutes=10)))
        session.execute(update(DigestSubscription).values(
            last_sent_at=utcnow() - timedelta(days=3)))

    second, _ = await start_bot(max_concurrent_runs=0)

    posted = digests_in(slack_api)
    assert len(posted) == 1  # three were due: one digest, never a burst
    shown = sections(posted[0])
    assert "9 scheduled run(s) did not fire" in shown["summary"]
    assert "1 queued or running now" in shown["summary"]  # the one catch-up run
    missed = shown["Scheduled runs that did not fire"]
    assert missed.startswith("*Scheduled runs that did not fire* (9)")
    assert "*tick* · due " in missed and "the bot was not running" in missed
    assert "more missed" not in missed
    header = posted[0]["blocks"][0]["text"]["text"]
    assert (utcnow() - timedelta(days=3)).strftime("%Y-%m-%d") in header
    assert second.scheduler.runner.names("digest") == {CHANNEL}  # and the job is back
