"""A run's live message, driven from outside: `/routine run` as a signed request, the real
agent in its container, and what the Slack stand-in received. One message per run, posted
when it starts, updated in place with the steps it goes through, ending as the result;
updates stay within a set rate however many runs there are, a 429 is honoured, and a
silent run says so. Only calls are counted: no timing is asserted."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.slack_api import SlackApiStandIn, SlackCall
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import ALICE, routine, view_log, wait_until
from tests.support.slack_requests import FakeSlack

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

LIVE: dict[str, Any] = dict(live_progress=True, progress_update_seconds=0.2,
                            progress_updates_per_second=20.0, progress_idle_seconds=300.0)


async def start_run(fake: FakeSlack, name: str) -> str:
    body = (await fake.slash(f"run {name}")).json()
    assert "queued" in body["text"], body
    return str(body["text"].split("#")[1].split(" ")[0])


async def result_of(slack_api: SlackApiStandIn, name: str, run_id: str,
                    timeout: float = 120) -> SlackCall:
    """The chat.update that turned the run's live message into its result."""
    return await slack_api.wait_for("chat.update", {"channel": RESULTS_CHANNEL},
                                    contains=f'"{name} run #{run_id}: ', timeout=timeout)


def live_posts(slack_api: SlackApiStandIn, run_id: str) -> list[SlackCall]:
    """The messages posted for the run in the channel itself (not in a thread)."""
    def about_it(text: str) -> bool:
        return f"run #{run_id} is running" in text or f"run #{run_id}: " in text

    return [c for c in slack_api.calls_to("chat.postMessage")
            if c.params.get("channel") == RESULTS_CHANNEL and "thread_ts" not in c.params
            and about_it(str(c.params.get("text")))]


def updates_of(slack_api: SlackApiStandIn, ts: str) -> list[str]:
    return [str(c.params["text"]) for c in slack_api.calls_to("chat.update")
            if c.params.get("ts") == ts]


async def test_one_message_updated_with_the_steps_and_ending_as_the_result(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "steps",
        [tool("run_shell", command="sleep 1; echo first")],
        [tool("write_file", path="src/app.py", content="print('hi')\n")],
        [tool("run_shell", command="sleep 1; echo second")],
        [report("success", "Ran both steps.")],
    )
    _, fake = await start_bot(**LIVE)
    await routine(fake, "stepper", f"Do the steps. {marker}", git_repo)
    run_id = await start_run(fake, "stepper")

    result = await result_of(slack_api, "stepper", run_id)

    posts = live_posts(slack_api, run_id)
    assert len(posts) == 1, [p.params["text"] for p in posts]  # one message, no second
    ts = posts[0].response["ts"]
    assert result.params["ts"] == ts
    assert posts[0].params["text"].startswith(f"stepper run #{run_id} is running")
    texts = updates_of(slack_api, ts)
    assert texts[-1] == f"stepper run #{run_id}: succeeded"
    live = texts[:-1]
    assert len(live) >= 2, texts
    assert any("running `sleep 1; echo first`" in t for t in live), texts
    assert any("running `sleep 1; echo second`" in t for t in live), texts
    shown = json.dumps([c.params["blocks"] for c in slack_api.calls_to("chat.update")
                        if c.params.get("ts") == ts][:-1])
    assert "tokens " in shown and "so far" in shown
    assert "Ran both steps." in json.dumps(result.params["blocks"])
    # View log lands in that one message's thread.
    thread = await view_log(fake, slack_api, {"run_id": run_id, "ts": ts})
    assert "echo second" in thread


async def test_twenty_concurrent_runs_stay_under_the_update_rate(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    rate = 4.0
    marker = anthropic_api.script(
        "crowd",
        [tool("run_shell", command="sleep 1; echo one")],
        [tool("run_shell", command="sleep 1; echo two")],
        [report("success", "done")],
    )
    bot, fake = await start_bot(**dict(LIVE, progress_updates_per_second=rate,
                                       progress_update_seconds=0.5),
                                max_concurrent_runs=20, triggers_per_minute=100)
    await routine(fake, "crowd", f"Work. {marker}", git_repo)
    run_ids = [await start_run(fake, "crowd") for _ in range(20)]

    results = await asyncio.gather(*(result_of(slack_api, "crowd", r, 300) for r in run_ids))

    assert len({r.params["ts"] for r in results}) == 20  # each run its own one message
    board = [c for c in slack_api.calls
             if c.method in ("chat.postMessage", "chat.update")
             and " is running" in str(c.params.get("text"))]
    assert len(board) >= 20  # at least every live message was posted
    # Counted on the stand-in: in any one second of its clock, no more board calls than
    # the set rate allows (one more for a call on the window's edge).
    for first in board:
        within = [c for c in board if first.at <= c.at < first.at + 1.0]
        assert len(within) <= rate + 1, len(within)
    # Coalesced: fewer updates than the events the runs sent.
    events = sum(len(bot.services.runs.events(int(r))) for r in run_ids)
    assert len(board) < events


async def test_a_429_is_honoured_and_the_run_still_ends_as_one_message(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "limited",
        [tool("run_shell", command="sleep 1; echo one")],
        [tool("run_shell", command="sleep 2; echo two")],
        [tool("run_shell", command="sleep 1; echo three")],
        [report("success", "done despite Slack")],
    )
    _, fake = await start_bot(**LIVE)
    await routine(fake, "limited", f"Work. {marker}", git_repo)
    slack_api.rate_limit("chat.update", times=1, retry_after=2)
    run_id = await start_run(fake, "limited")

    result = await result_of(slack_api, "limited", run_id)

    assert len(slack_api.rate_limited) == 1  # the scripted 429, answered once...
    assert slack_api.too_early == []  # ...and nothing came before its Retry-After was over
    ts = live_posts(slack_api, run_id)[0].response["ts"]
    assert result.params["ts"] == ts
    refused_at = slack_api.rate_limited[0].at
    after = [c for c in slack_api.calls_to("chat.update") if c.at > refused_at]
    assert after and after[-1] is result  # updates went on after the wait


async def test_a_silent_run_is_shown_as_without_activity_on_the_same_message(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "quiet", [tool("run_shell", command="sleep 6; echo awake")],
        [report("success", "woke up")])
    _, fake = await start_bot(**dict(LIVE, progress_idle_seconds=2.0))
    await routine(fake, "quiet", f"Sleep. {marker}", git_repo)
    run_id = await start_run(fake, "quiet")

    notice = await slack_api.wait_for("chat.update", {"channel": RESULTS_CHANNEL},
                                      contains="no activity for", timeout=90)
    result = await result_of(slack_api, "quiet", run_id)

    ts = live_posts(slack_api, run_id)[0].response["ts"]
    assert notice.params["ts"] == ts == result.params["ts"]
    assert f"quiet run #{run_id} is running — no activity for" in notice.params["text"]
    assert "no activity" not in json.dumps(result.params["blocks"])
    assert ALICE in json.dumps(result.params["blocks"])  # the result, by whom it was run


async def test_a_live_message_that_cannot_be_updated_leaves_the_result_posted(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "gone", [tool("run_shell", command="sleep 1; echo one")], [report("success", "ok")])
    bot, fake = await start_bot(**LIVE)
    await routine(fake, "gone", f"Work. {marker}", git_repo)
    slack_api.fail("chat.update", "message_not_found")  # someone deleted it
    run_id = await start_run(fake, "gone")

    posted = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                      contains=f'"gone run #{run_id}: ', timeout=90)

    assert posted.params["text"] == f"gone run #{run_id}: succeeded"
    first = live_posts(slack_api, run_id)[0]
    assert first.params["text"].startswith(f"gone run #{run_id} is running")
    tried = [c for c in slack_api.calls_to("chat.update")
             if c.params.get("ts") == first.response["ts"]]
    assert tried[-1].params["text"] == f"gone run #{run_id}: succeeded"  # tried first
    # The thread follows the result: View log goes under the message that says it.
    # (recorded on the run just after Slack answered the post)
    await wait_until(lambda: bot.services.runs.get(int(run_id)).run.announce_ts
                     == posted.response["ts"])
    thread = await view_log(fake, slack_api, {"run_id": run_id, "ts": posted.response["ts"]})
    assert "echo one" in thread


async def test_a_publish_approval_goes_in_the_runs_thread(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "change", [tool("run_shell", command="sleep 1; echo fixed > FIX.md")],
        [report("success", "Added FIX.md.")])
    _, fake = await start_bot(**LIVE)
    await routine(fake, "fixer", f"Fix it. {marker}", git_repo, "risk=medium")
    run_id = await start_run(fake, "fixer")

    result = await result_of(slack_api, "fixer", run_id)
    request = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                       contains=f"run #{run_id} of", timeout=30)

    assert request.params["thread_ts"] == result.params["ts"]
    assert request.params["reply_broadcast"] is True  # still seen in the channel
    assert len(live_posts(slack_api, run_id)) == 1
