"""The kill switch with real containers running: everything stops, every door refuses,
the state outlives a restart, and disengaging brings schedules back without a burst."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.app import Bot
from bot.core.statuses import FailureKind, RunStatus
from bot.doors.cli import main
from bot.store.tables import utcnow
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.github_payloads import own
from tests.support.http_doors import WEBHOOK_SECRET, call, deliver
from tests.support.served_bot import is_waiting_warm
from tests.support.slack_flows import ALICE, BOB, CAROL, DAVE, routine, wait_until
from tests.support.slack_requests import FakeSlack

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

INCIDENTS = "C0INCIDENT"
RUNNING = 3


async def containers_running(docker_client: Any, bot: Bot, count: int,
                             timeout: float = 90, drained: bool = False) -> list[Any]:
    """The bot's running run containers; `drained` (the kill switch is engaged): no warm
    container waits either (ROUTINES_TEST_WARM_POOL), once the pool has drained."""
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in docker_client.containers.list(
            filters={"label": f"org.routines.instance={bot.settings.instance}",
                     "status": "running"}) if not is_waiting_warm(c)]
        if len(found) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    if drained:
        await wait_until(lambda: not [c for c in docker_client.containers.list(filters={
            "label": f"org.routines.instance={bot.settings.instance}"}) if is_waiting_warm(c)],
            timeout=10)
    return found


async def runs_of(fake: FakeSlack, name: str) -> str:
    return json.dumps((await fake.slash(f"history {name}")).json())


async def test_engage_stops_all_runs_refuses_every_door_and_survives_a_restart(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, docker_client: Any,
) -> None:
    long = anthropic_api.script("long", [tool("run_shell", command="sleep 600")])
    quick = anthropic_api.script("quick", [report("success", "tick")])
    options: dict[str, Any] = dict(
        admins=(DAVE,), incidents_channel=INCIDENTS, max_concurrent_runs=RUNNING,
        github_webhook_secret=WEBHOOK_SECRET, min_schedule_interval_seconds=1)
    bot, fake = await start_bot(**options)
    await routine(fake, "long", f"Wait. {long}", git_repo, f"approvers=<@{BOB}>")
    token = json.dumps((await fake.slash("token long ci")).json()).split("```")[1]
    for _ in range(RUNNING + 1):  # the last one stays queued
        assert "queued" in (await fake.slash("run long")).json()["text"]
    running = await containers_running(docker_client, bot, RUNNING)
    assert len(running) == RUNNING
    for _ in range(300):  # until every agent is inside its sleep
        if len(anthropic_api.requests_for("long")) >= RUNNING:
            break
        await asyncio.sleep(0.2)

    refused = (await fake.slash("killswitch engage testing", user=CAROL)).json()
    assert "Only admins or approvers may engage the kill switch" in refused["text"]
    reply = (await fake.slash("killswitch engage Bad deploy: stop all agents", user=BOB,
                              channel="C0GENERAL1")).json()
    assert "Kill switch engaged" in json.dumps(reply["blocks"])
    for channel in ("C0GENERAL1", INCIDENTS):
        said = await slack_api.wait_for("chat.postMessage", {"channel": channel},
                                        contains="Kill switch engaged", timeout=5)
        text = json.dumps(said.params["blocks"])
        assert f"<@{BOB}>" in text and "Bad deploy: stop all agents" in text
        assert "3 running run(s) are being killed" in text and "1 queued" in text
    for _ in range(300):
        if sum(": killed" in str(m.get("text")) for m in slack_api.messages_in(RESULTS_CHANNEL)
               ) >= RUNNING:
            break
        await asyncio.sleep(0.1)
    assert await containers_running(docker_client, bot, 0, timeout=0, drained=True) == []
    history = await runs_of(fake, "long")
    assert history.count("killed by the kill switch: Bad deploy") == RUNNING
    killed = [v.run for v in bot.services.routines.history("long")
              if v.run.status == RunStatus.KILLED]
    assert [r.failure_kind for r in killed] == [FailureKind.KILLED] * RUNNING
    assert "queued" in history  # held, not started

    # Every door refuses, saying why.
    answer = (await fake.slash("run long")).json()["text"]
    assert "kill switch is engaged" in answer and "Bad deploy" in answer
    status, body, _ = await call(bot, "POST", "/api/v1/routines/long/runs", token, body=b"{}")
    assert (status, body["error"]) == (503, "kill_switch") and "Bad deploy" in body["message"]
    status, body = await deliver(bot, "pull_request", own("pull_request.opened"), "d-1")
    assert (status, body["error"]) == (503, "kill_switch")
    # Schedules do not fire while engaged (a routine scheduled every second).
    await routine(fake, "tick", f"Tick. {quick}", git_repo)
    await fake.slash('schedule tick "every 1s"')
    await asyncio.sleep(3)
    assert "#" not in (await runs_of(fake, "tick")).split("tick", 2)[-1]

    # A restart keeps it engaged.
    await bot.stop()
    bot, fake = await start_bot(**options)
    status_reply = json.dumps((await fake.slash("killswitch status")).json())
    assert "Kill switch engaged" in status_reply and "Bad deploy" in status_reply
    status, _, _ = await call(bot, "POST", "/api/v1/routines/long/runs", token, body=b"{}")
    assert status == 503
    await asyncio.sleep(2)
    assert not anthropic_api.requests_for("quick")

    # Only an admin disengages; schedules resume from now, without the skipped fires.
    refused = (await fake.slash("killswitch disengage", user=BOB)).json()
    assert "Only admins may disengage the kill switch" in refused["text"]
    disengaged = utcnow()
    shown = json.dumps((await fake.slash("killswitch disengage", user=DAVE)).json())
    assert "Kill switch disengaged" in shown and "1 queued run(s)" in shown
    assert "killswitch drop" in shown
    await slack_api.wait_for("chat.postMessage", {"channel": INCIDENTS},
                             contains="Kill switch disengaged", timeout=5)
    # Stop the schedule once it has fired again, so its runs do not crowd the audit page
    # read below (it shows the newest 20 entries) while the first tick run finishes.
    deadline = time.monotonic() + 30
    while not bot.services.routines.history("tick"):
        assert time.monotonic() < deadline, "the schedule did not resume"
        await asyncio.sleep(0.1)
    await fake.slash("schedule tick off")
    await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                             contains="tick run #", timeout=60)
    ticks = bot.services.routines.history("tick", limit=50)
    assert ticks and all(v.run.trigger_kind == "schedule" for v in ticks)
    # About one fire a second from the disengage on; the ~10 s spent engaged (restart
    # included) are not made up for with a burst.
    first_seconds = [v for v in ticks
                     if _aware(v.run.queued_at) < disengaged + timedelta(seconds=1.5)]
    assert len(first_seconds) <= 2, [v.run.queued_at for v in ticks]
    # The held run is dropped, never started.
    dropped = json.dumps((await fake.slash("killswitch drop", user=DAVE)).json())
    assert "Held runs dropped" in dropped
    assert "cancelled" in await runs_of(fake, "long")
    assert len(anthropic_api.requests_for("long")) == RUNNING
    audit = json.dumps((await fake.slash("audit")).json())
    for action in ("engage", "disengage", "held_dropped"):
        assert f"*{action}*" in audit


async def test_cancel_stops_one_running_run(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, docker_client: Any,
) -> None:
    long = anthropic_api.script("long", [tool("run_shell", command="sleep 600")])
    bot, fake = await start_bot()
    await routine(fake, "long", f"Wait. {long}", git_repo)
    answer = (await fake.slash("run long")).json()["text"]
    run_id = answer.split("#")[1].split(" ")[0]
    await containers_running(docker_client, bot, 1)
    refused = (await fake.slash(f"cancel {run_id}", user=CAROL)).json()
    assert f"Only its owners (<@{ALICE}>) or an admin may cancel" in refused["text"]
    reply = (await fake.slash(f"cancel {run_id}")).json()
    assert "is being stopped" in reply["text"]
    done = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains=f"long run #{run_id}: cancelled", timeout=30)
    assert f"cancelled by <@{ALICE}>" in json.dumps(done.params["blocks"])
    assert bot.services.runs.get(int(run_id)).run.failure_kind == FailureKind.CANCELLED
    assert await containers_running(docker_client, bot, 0, timeout=0) == []


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def test_the_kill_switch_engaged_from_the_cli_stops_the_bots_runs(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, docker_client: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another process (the operator's CLI) writes the stop to the database only; the bot
    running the run carries it out at its next poll."""
    long = anthropic_api.script("cli-long", [tool("run_shell", command="sleep 600")])
    bot, fake = await start_bot(admins=(DAVE,))
    await routine(fake, "long", f"Wait. {long}", git_repo)
    assert "queued" in (await fake.slash("run long")).json()["text"]
    assert len(await containers_running(docker_client, bot, 1)) == 1
    for _ in range(300):
        if anthropic_api.requests_for("cli-long"):
            break
        await asyncio.sleep(0.2)
    for name, value in (("DATABASE_URL", bot.settings.database_url),
                        ("ROUTINES_ADMINS", DAVE), ("ROUTINES_OPERATOR", DAVE)):
        monkeypatch.setenv(name, value)

    code = await asyncio.to_thread(main, ["killswitch", "engage", "from", "the", "cli"])

    assert code == 0, capsys.readouterr().err
    done = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains="run #1: killed", timeout=60)
    assert done.params["text"] == "long run #1: killed"
    run = bot.services.runs.get(1).run
    assert (run.status, run.failure_kind) == (RunStatus.KILLED, FailureKind.KILLED)
    assert await containers_running(docker_client, bot, 1, timeout=0, drained=True) == []
