"""The App Home tab, driven as Slack drives it: a signed `app_home_opened` event, signed
button clicks from the Home view, and `views.publish` calls read from the Slack stand-in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

import aiohttp
import pytest
from slack_sdk.models.views import View

from bot.app import Bot
from bot.core.routine import RoutineDraft
from bot.core.worker import WorkerIdentity, WorkerRole
from bot.store.tables import KillSwitch, utcnow
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_requests import TEAM, FakeSlack, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

ALICE, BOB = "U0ALICE01", "U0BOB0001"


async def create(fake: FakeSlack, name: str, user: str) -> None:
    reply = await fake.submit_view("routine_create", modal_values(
        name=name, prompt="Check things.", repo_url="file:///nowhere", branch="main",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"), user=user)
    assert reply.status == 200 and reply.text == "", reply.text


async def home_bot(start_bot: BotFactory, **overrides: Any) -> tuple[Bot, FakeSlack]:
    """A bot whose runs stay queued (no container needed) with two routines: Alice's, Bob's."""
    bot, fake = await start_bot(max_concurrent_runs=0, home_refresh_seconds=0.5, **overrides)
    await create(fake, "alice-daily", ALICE)
    await create(fake, "bob-weekly", BOB)
    return bot, fake


async def next_home(slack_api: SlackApiStandIn, user: str, after: int,
                    shows: str | Callable[[dict[str, Any]], bool] = "",
                    timeout: float = 30) -> dict[str, Any]:
    """The first Home published for `user` after the `after`-th one that `shows` something
    (a text, or a predicate); checked against slack_sdk's View model on the way."""
    deadline = time.monotonic() + timeout
    while True:
        for view in slack_api.homes_of(user)[after:]:
            if shows(view) if callable(shows) else shows in json.dumps(view):
                View(**view).validate_json()
                assert view["type"] == "home" and len(view["blocks"]) <= 100
                return view
        assert time.monotonic() < deadline, (
            f"no Home for {user} showing {shows!r}; saw {slack_api.homes_of(user)[after:]}")
        await asyncio.sleep(0.05)


async def api_trigger(bot: Bot, routine: str, token: str) -> int:
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{bot.port}/api/v1/routines/{routine}/runs", json={"n": 1},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status


def section_of(view: dict[str, Any], routine: str) -> str:
    return str(next(b["text"]["text"] for b in view["blocks"]
                    if b.get("block_id") == f"routine:{routine}"))


def buttons_of(view: dict[str, Any], routine: str) -> list[str]:
    block = next(b for b in view["blocks"] if b.get("block_id") == f"actions:{routine}")
    return [e["action_id"] for e in block["elements"]]


def headers(view: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in view["blocks"] if b["type"] == "header"]


async def test_opening_home_shows_my_routines_and_the_teams(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    bot, fake = await home_bot(start_bot)
    await fake.slash('schedule bob-weekly "0 9 * * mon" Europe/Paris', user=BOB)

    reply = await fake.open_home(ALICE)

    assert reply.status == 200
    view = await next_home(slack_api, ALICE, 0)
    assert headers(view) == ["Routines", "Your routines (1)", "The team's routines (1)"]
    blocks = [b.get("block_id") for b in view["blocks"]]
    assert blocks.index("routine:alice-daily") < blocks.index("routine:bob-weekly")
    assert "active" in section_of(view, "alice-daily")
    assert "on demand (no schedule)" in section_of(view, "alice-daily")
    assert "never run" in section_of(view, "alice-daily")
    next_fire = bot.services.routines.overview("bob-weekly").next_fires[0]
    assert next_fire.astimezone(UTC).strftime("%Y-%m-%d %H:%M") in section_of(view, "bob-weekly")
    assert buttons_of(view, "bob-weekly") == ["home_run", "home_pause"]
    assert "Kill switch off" in json.dumps(view)
    # Bob sees the same routines the other way round.
    await fake.open_home(BOB)
    assert headers(await next_home(slack_api, BOB, 0))[1:] == [
        "Your routines (1)", "The team's routines (1)"]


async def test_a_forged_home_event_publishes_nothing(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    _, fake = await home_bot(start_bot)

    reply = await fake.open_home(ALICE, signature="v0=" + "0" * 64)
    await fake.open_home(BOB)  # a genuine one, to know the bot has had its chance
    await next_home(slack_api, BOB, 0)

    assert reply.status == 401
    assert slack_api.homes_of(ALICE) == []


async def test_buttons_pause_resume_and_run_through_the_service(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    bot, fake = await home_bot(start_bot)
    await fake.open_home(ALICE)
    await next_home(slack_api, ALICE, 0)
    seen = len(slack_api.homes_of(ALICE))

    reply = await fake.home_click("home_pause", "alice-daily")

    assert reply.status == 200
    view = await next_home(slack_api, ALICE, seen, "paused by")
    assert bot.services.routines.get("alice-daily").paused_by == ALICE
    assert f"paused by <@{ALICE}>" in section_of(view, "alice-daily")
    assert "held (paused)" in section_of(view, "alice-daily")
    assert buttons_of(view, "alice-daily") == ["home_run", "home_resume"]
    assert "Routine alice-daily paused" in view["blocks"][2]["text"]["text"]

    # The service's refusal reaches the clicker, and nothing is queued.
    seen = len(slack_api.homes_of(ALICE))
    await fake.home_click("home_run", "alice-daily")
    view = await next_home(slack_api, ALICE, seen, "is paused")
    assert "`/routine resume alice-daily`" in view["blocks"][2]["text"]["text"]
    assert bot.services.routines.history("alice-daily") == []

    seen = len(slack_api.homes_of(ALICE))
    await fake.home_click("home_resume", "alice-daily")
    view = await next_home(slack_api, ALICE, seen, "resumed")
    assert not bot.services.routines.get("alice-daily").paused
    assert buttons_of(view, "alice-daily") == ["home_run", "home_pause"]

    seen = len(slack_api.homes_of(ALICE))
    await fake.home_click("home_run", "bob-weekly")  # the team's routine, same rules
    view = await next_home(slack_api, ALICE, seen, "queued")
    [run] = bot.services.routines.history("bob-weekly")
    assert run.run.triggered_by == ALICE and run.run.trigger_kind == "manual"
    assert f"#{run.run.id} queued" in section_of(view, "bob-weekly")

    seen = len(slack_api.homes_of(ALICE))
    await fake.home_click("home_pause", "no-such-routine")
    await next_home(slack_api, ALICE, seen, "No routine named")


async def test_changes_from_other_doors_and_processes_refresh_open_homes(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    first, fake = await home_bot(start_bot, admins=(BOB,))
    await fake.open_home(ALICE)
    await next_home(slack_api, ALICE, 0)

    # Bob (an admin) pauses Alice's routine with the slash command: her Home follows.
    seen = len(slack_api.homes_of(ALICE))
    await fake.slash("pause alice-daily", user=BOB)
    view = await next_home(slack_api, ALICE, seen, "paused by")
    assert f"paused by <@{BOB}>" in section_of(view, "alice-daily")

    # The API door queues a run: the Home shows it.
    token = first.services.tokens.create("bob-weekly", "ci", BOB)
    seen = len(slack_api.homes_of(ALICE))
    assert await api_trigger(first, "bob-weekly", token) == 202
    view = await next_home(slack_api, ALICE, seen, "queued")
    assert "queued" in section_of(view, "bob-weekly")

    # Another process engages the kill switch in the shared database.
    seen = len(slack_api.homes_of(ALICE))
    with first.db.session() as session:
        session.add(KillSwitch(id=1, engaged=True, reason="incident <!channel> 42",
                               changed_by=BOB, changed_at=utcnow()))
    view = await next_home(slack_api, ALICE, seen, "Kill switch engaged")
    shown = view["blocks"][1]["text"]["text"]
    assert f"by <@{BOB}>" in shown and "incident &lt;!channel&gt; 42" in shown
    assert "held (kill switch)" in section_of(view, "bob-weekly")

    # A restart keeps the viewers: a change after it still reaches Alice's Home.
    await first.stop()
    first.port = 0
    second, fake = await start_bot(max_concurrent_runs=0, home_refresh_seconds=0.5,
                                   admins=(BOB,))
    seen = len(slack_api.homes_of(ALICE))
    await fake.slash("resume alice-daily", user=BOB)
    view = await next_home(slack_api, ALICE, seen,
                           lambda v: "active" in section_of(v, "alice-daily"))
    assert not second.services.routines.get("alice-daily").paused


async def test_home_over_socket_mode(start_bot: BotFactory, slack_api: SlackApiStandIn) -> None:
    bot, _ = await start_bot(slack_app_token="xapp-1-test-app-token-0000",
                             max_concurrent_runs=0)
    await asyncio.to_thread(bot.services.routines.create, RoutineDraft(
        name="socket-home", prompt="p", repo_url="file:///nowhere", channel_id=RESULTS_CHANNEL),
        ALICE)

    await slack_api.send_envelope("events_api", {
        "type": "event_callback", "team_id": TEAM, "api_app_id": "A0001",
        "event_id": "Ev0SOCKET1", "event_time": int(time.time()),
        "event": {"type": "app_home_opened", "user": ALICE, "tab": "home",
                  "channel": "D0HOME01", "event_ts": "1.2"}})
    await next_home(slack_api, ALICE, 0, "socket-home")
    seen = len(slack_api.homes_of(ALICE))
    await slack_api.send_envelope("interactive", {
        "type": "block_actions", "team": {"id": TEAM}, "user": {"id": ALICE},
        "api_app_id": "A0001", "trigger_id": "3.3.trigger",
        "container": {"type": "view", "view_id": "V0HOME01"},
        "view": {"id": "V0HOME01", "type": "home", "blocks": []},
        "actions": [{"action_id": "home_pause", "block_id": "actions:socket-home",
                     "value": "socket-home", "type": "button", "action_ts": "1.3"}]})

    await next_home(slack_api, ALICE, seen, "paused by")
    assert bot.services.routines.get("socket-home").paused_by == ALICE


async def test_admins_see_the_workers_and_nobody_else_does(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    bot, fake = await home_bot(start_bot, admins=(BOB,))
    bot.services.workers.register(WorkerIdentity("far-host", "w7", WorkerRole.WORKER, True, 1),
                                  alive=lambda _pid: False)

    await fake.open_home(BOB)
    view = await next_home(slack_api, BOB, 0, shows="far-host/w7")
    assert any(h.startswith("Workers (") for h in headers(view))
    workers = next(b["text"]["text"] for b in view["blocks"] if b.get("block_id") == "workers")
    line = next(line for line in workers.split("\n") if "far-host/w7" in line)
    assert line.startswith(":large_green_circle: `far-host/w7` · worker · alive · last heartbeat ")
    assert line.endswith(" · no runs")

    await fake.open_home(ALICE)
    mine = await next_home(slack_api, ALICE, 0)
    assert not any(h.startswith("Workers") for h in headers(mine))
    assert "far-host" not in json.dumps(mine)
