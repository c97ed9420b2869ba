"""Slack down or rate-limiting while the bot runs: nothing is lost. Results, approval
requests and digests that Slack refused are posted once it is back, each exactly once,
and no call comes before a 429's Retry-After is over."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.standins.anthropic_api import AnthropicStandIn, report
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import ALICE, BOB, create_routine, routine, wait_until
from tests.support.slack_requests import FakeSlack

pytestmark = [pytest.mark.docker, pytest.mark.postgres]
POST = frozenset({"chat.postMessage"})


async def queue(fake: FakeSlack, name: str) -> str:
    body = (await fake.slash(f"run {name}")).json()
    assert "queued" in body["text"], body
    return str(body["text"]).split("#")[1].split(" ")[0]


def results_of(slack_api: SlackApiStandIn, run_id: str) -> list[dict[str, object]]:
    return [m for m in slack_api.messages_in(RESULTS_CHANNEL)
            if f"run #{run_id}: " in str(m.get("text", ""))]


def refused_results(slack_api: SlackApiStandIn, run_id: str) -> int:
    return sum(1 for c in slack_api.refused if c.method == "chat.postMessage"
               and f"run #{run_id}: " in str(c.params.get("text", "")))


@pytest.mark.parametrize("status", [500, 429])
async def test_a_result_slack_refused_is_posted_once_it_is_back(
    status: int, start_bot: BotFactory, slack_api: SlackApiStandIn,
    anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script("quick", [report("success", "Done quickly.")])
    bot, fake = await start_bot()
    await create_routine(fake, slack_api, "quick", f"Be quick. {marker}", git_repo)
    slack_api.outage(seconds=120, status=status, retry_after=3, methods=POST)

    run_id = await queue(fake, "quick")
    # Retried while the bot runs (not only at its next start): a second try during the
    # outage, after the backoff or the Retry-After.
    await wait_until(lambda: refused_results(slack_api, run_id) >= 2, timeout=90)
    assert results_of(slack_api, run_id) == []  # still down: nothing reached the channel
    slack_api.outage_over()

    await wait_until(lambda: len(results_of(slack_api, run_id)) >= 1, timeout=90)
    posted = results_of(slack_api, run_id)
    assert [m["text"] for m in posted] == [f"quick run #{run_id}: succeeded"]
    assert slack_api.too_early == []  # every retry waited out the Retry-After it was given
    assert await _settled(slack_api, run_id)
    view = bot.services.runs.get(int(run_id))
    assert view.run.notified_at is not None  # marked: the next start posts nothing again


async def _settled(slack_api: SlackApiStandIn, run_id: str) -> bool:
    """Still exactly one result a few polls later (no second post by the retry loop)."""
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        if len(results_of(slack_api, run_id)) != 1:
            return False
        await asyncio.sleep(0.5)
    return True


async def test_an_approval_request_is_posted_once_slack_is_back(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script("gated", [report("success", "Did it.")])
    _, fake = await start_bot()
    await routine(fake, "gated", f"Do it. {marker}", git_repo, "risk=high",
                  f"approvers=<@{BOB}>")
    slack_api.outage(seconds=120, status=429, retry_after=2, methods=POST)

    answer = (await fake.slash("run gated", user=ALICE)).json()["text"]
    assert "waits for approval" in answer, answer
    run_id = str(answer).split("#")[1].split(" ")[0]

    def requests(calls: list[object]) -> int:
        return sum(1 for c in calls if f"run #{run_id} of" in str(getattr(c, "params", {})))

    await wait_until(lambda: requests(list(slack_api.refused)) >= 2, timeout=30)
    slack_api.outage_over()
    await wait_until(lambda: requests(list(slack_api.calls_to("chat.postMessage"))) >= 1,
                     timeout=30)
    await asyncio.sleep(4)  # a few sweeps later, still one request
    assert requests(list(slack_api.calls_to("chat.postMessage"))) == 1
    assert slack_api.too_early == []


async def test_a_scheduled_digest_slack_refused_is_sent_when_it_is_back(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    channel = "C0DIGEST9"
    bot, fake = await start_bot(min_schedule_interval_seconds=1, max_concurrent_runs=0)
    slack_api.outage(seconds=120, status=429, retry_after=2, methods=POST)
    await fake.slash('digest here "every 1s"', channel=channel)
    subscribed = bot.services.digests.subscription(channel)
    assert subscribed is not None

    def digests(calls: list[object]) -> int:
        return sum(1 for c in calls if str(getattr(c, "params", {}).get("channel")) == channel
                   and str(getattr(c, "params", {}).get("text", "")).startswith("Digest"))

    await wait_until(lambda: digests(list(slack_api.refused)) >= 2, timeout=30)
    during = bot.services.digests.subscription(channel)
    assert during is not None and during.last_sent_at == subscribed.last_sent_at  # owed
    slack_api.outage_over()
    await wait_until(lambda: digests(list(slack_api.calls_to("chat.postMessage"))) >= 1,
                     timeout=30)

    def marked_sent() -> bool:  # once Slack's answer is back, not when the call arrives
        after = bot.services.digests.subscription(channel)
        return after is not None and after.last_sent_at > subscribed.last_sent_at

    await wait_until(marked_sent, timeout=10)
    assert slack_api.too_early == []  # no digest came before its Retry-After was over

    await fake.slash("digest here off", channel=channel)
    await asyncio.sleep(0.3)
    stopped_at = digests(list(slack_api.calls_to("chat.postMessage")))
    await asyncio.sleep(2.5)
    assert digests(list(slack_api.calls_to("chat.postMessage"))) == stopped_at
