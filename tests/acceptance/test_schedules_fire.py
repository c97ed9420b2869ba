"""Schedules through the running bot: set from Slack, firing for real, paused, caught up
once after downtime, missed fires announced, kept across restarts."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from bot.app import Bot
from bot.core.redaction import Redactor
from bot.services import ServicePolicy, Services
from bot.store.tables import Routine, utcnow
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import ALICE
from tests.support.slack_requests import FakeSlack, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


async def scheduled_bot(start_bot: BotFactory, git_repo: str, **overrides: object,
                        ) -> tuple[Bot, FakeSlack]:
    bot, fake = await start_bot(max_concurrent_runs=0, **overrides)
    reply = await fake.submit_view("routine_create", modal_values(
        name="tick", prompt="Tick.", repo_url=git_repo, branch="main",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"))
    assert reply.status == 200 and reply.text == ""
    return bot, fake


def schedule_runs(bot: Bot) -> list[str]:
    return [v.run.trigger_ref or "" for v in bot.services.routines.history("tick", limit=100)
            if v.run.trigger_kind == "schedule"]


async def wait_for_runs(bot: Bot, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(runs := schedule_runs(bot)) < count:
        assert time.monotonic() < deadline, f"only {len(runs)} scheduled runs"
        await asyncio.sleep(0.1)
    return runs


async def test_bad_schedules_are_refused_with_the_reason_and_nothing_is_saved(
    start_bot: BotFactory, git_repo: str,
) -> None:
    _, fake = await scheduled_bot(start_bot, git_repo)

    answers = {text: (await fake.slash(f"schedule tick {text}")).json()["text"] for text in (
        '"* * * *"', '"61 * * * *"', '"every 10s"', '"0 9 * * *" Mars/Olympus')}
    status = json.dumps((await fake.slash("status tick")).json())

    assert "5 fields" in answers['"* * * *"']
    assert "61" in answers['"61 * * * *"']
    assert "60" in answers['"every 10s"']  # the minimum interval is named
    assert "IANA" in answers['"0 9 * * *" Mars/Olympus']
    assert "*Schedule*" not in status


async def test_status_shows_the_next_fire_times_in_the_zone(
    start_bot: BotFactory, git_repo: str,
) -> None:
    _, fake = await scheduled_bot(start_bot, git_repo)

    reply = (await fake.slash("schedule tick 0 9 * * mon-fri Europe/Paris")).json()

    shown = json.dumps(reply["blocks"])
    assert "`0 9 * * mon-fri` (Europe/Paris)" in shown
    assert shown.count(" UTC") >= 3  # three next fire times


async def test_a_schedule_fires_for_real_and_pause_holds_it(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await scheduled_bot(start_bot, git_repo, min_schedule_interval_seconds=1)

    await fake.slash('schedule tick "every 1s"')
    refs = await wait_for_runs(bot, 2)
    await fake.slash("pause tick")
    await asyncio.sleep(0.2)
    held = len(schedule_runs(bot))
    await asyncio.sleep(2.5)

    assert len(set(refs)) == len(refs)  # one run per scheduled time
    assert len(schedule_runs(bot)) == held  # paused: the schedule skips
    await fake.slash("resume tick")
    await wait_for_runs(bot, held + 1)


async def test_downtime_gives_one_catch_up_run_and_announces_the_rest(
    start_bot: BotFactory, git_repo: str, slack_api: SlackApiStandIn,
) -> None:
    first, fake = await scheduled_bot(start_bot, git_repo)
    await fake.slash('schedule tick "every 1m"')
    await first.stop()
    first.port = 0
    with first.db.session() as session:  # as if the bot had been down for ten minutes
        session.execute(update(Routine).values(last_fire_at=utcnow() - timedelta(minutes=10)))

    second, _ = await start_bot(max_concurrent_runs=0)

    assert len(schedule_runs(second)) == 1  # coalesced: never a burst
    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains="missed", timeout=5)
    assert call.params["text"].startswith("Routine tick missed 9 scheduled run(s)")
    assert "the bot was not running" in call.params["text"]


async def test_fires_past_the_grace_period_are_not_run_but_said(
    start_bot: BotFactory, git_repo: str, slack_api: SlackApiStandIn,
) -> None:
    first, fake = await scheduled_bot(start_bot, git_repo)
    await fake.slash('schedule tick "0 0 1 1 *"')  # every 1 January
    await first.stop()
    first.port = 0
    with first.db.session() as session:
        session.execute(update(Routine).values(last_fire_at=utcnow() - timedelta(days=800)))

    second, _ = await start_bot(max_concurrent_runs=0)

    assert schedule_runs(second) == []
    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains="missed", timeout=5)
    assert "missed 2 scheduled run(s)" in call.params["text"]


async def test_schedules_survive_a_restart(start_bot: BotFactory, git_repo: str) -> None:
    first, fake = await scheduled_bot(start_bot, git_repo, min_schedule_interval_seconds=1)
    await fake.slash('schedule tick "every 1s"')
    await first.stop()
    first.port = 0

    second, fake = await start_bot(max_concurrent_runs=0, min_schedule_interval_seconds=1)

    await wait_for_runs(second, len(schedule_runs(second)) + 2)
    assert "every 1s" in json.dumps((await fake.slash("status tick")).json())


async def test_the_create_form_takes_a_schedule_and_checks_it_inline(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await start_bot(max_concurrent_runs=0, min_schedule_interval_seconds=1)
    fields = dict(name="formed", prompt="Tick.", repo_url=git_repo, branch="main",
                  channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60")

    bad = await fake.submit_view("routine_create", modal_values(
        **fields, schedule="every 1s", schedule_tz="Nowhere/Atlantis"))
    worse = await fake.submit_view("routine_create", modal_values(
        **fields, schedule="* * *", schedule_tz="Europe/Paris"))
    good = await fake.submit_view("routine_create", modal_values(
        **fields, schedule="every 1s", schedule_tz="Europe/Paris"))

    assert list(bad.json()["errors"]) == ["schedule_tz"]
    assert list(worse.json()["errors"]) == ["schedule"]
    assert good.status == 200 and good.text == ""
    deadline = time.monotonic() + 10
    while not [v for v in bot.services.routines.history("formed")
               if v.run.trigger_kind == "schedule"]:
        assert time.monotonic() < deadline, "the schedule from the form never fired"
        await asyncio.sleep(0.1)


async def test_a_schedule_saved_by_another_process_applies_at_the_next_resync(
    start_bot: BotFactory, git_repo: str,
) -> None:
    """`routines apply` or another bot writes the schedule to the database only: this bot
    picks it up at its next resync, and a schedule cleared elsewhere stops firing."""
    bot, _ = await scheduled_bot(start_bot, git_repo, min_schedule_interval_seconds=1,
                                 schedule_sync_seconds=0.5)
    elsewhere = Services(bot.db, ServicePolicy.from_settings(bot.settings), Redactor(()))

    await asyncio.to_thread(elsewhere.schedules.set, "tick", "every 1s", "", ALICE)
    refs = await wait_for_runs(bot, 2)
    assert len(set(refs)) == len(refs)

    await asyncio.to_thread(elsewhere.schedules.clear, "tick", ALICE)
    await asyncio.sleep(1.5)  # the resync, and any fire already under way
    stopped = len(schedule_runs(bot))
    await asyncio.sleep(2.5)
    assert len(schedule_runs(bot)) == stopped
