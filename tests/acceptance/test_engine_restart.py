"""The Docker engine restarted in the middle of a run: the run ends `error` saying so, is
retried under the routine's retry policy once the engine is back, and the bot carries on.

The engine restarted is a private `dockerd` of this test (tests/support/private_engine.py),
never the shared one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest

from bot.core.statuses import FailureKind, RunStatus
from runner.contract import LABEL_INSTANCE
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, SANDBOX_IMAGE, BotFactory
from tests.support.private_engine import PrivateEngine, private_engine
from tests.support.slack_flows import create_routine

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


@pytest.fixture(scope="module")
def engine() -> Iterator[PrivateEngine]:
    with private_engine(SANDBOX_IMAGE) as started:
        yield started


async def test_a_run_cut_short_by_an_engine_restart_ends_error_and_is_retried(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, engine: PrivateEngine,
) -> None:
    marker = anthropic_api.script("engine", [tool("run_shell", command="sleep 20")],
                                  [report("success", "done after the restart")])
    bot, fake = await start_bot(docker_host=engine.url, min_retry_backoff_seconds=1)
    await create_routine(fake, slack_api, "steady", f"Wait a little. {marker}", git_repo)
    await fake.slash("retries steady 1 1")
    reply = (await fake.slash("run steady")).json()
    first = int(reply["text"].split("#")[1].split(" ")[0])
    for _ in range(300):  # until the agent is inside its sleep
        if anthropic_api.requests_for("engine"):
            break
        await asyncio.sleep(0.1)
    assert anthropic_api.requests_for("engine"), "the run never reached the model"

    await asyncio.to_thread(engine.restart)

    failed = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                      contains=f"steady run #{first}: ", timeout=90)
    assert failed.params["text"] == (f"steady run #{first}: error — retrying in 1s "
                                     "(attempt 2 of 2)"), json.dumps(failed.params["blocks"])
    row = bot.services.runs.get(first).run
    assert row.status == RunStatus.ERROR, row
    assert row.failure_kind == FailureKind.INFRASTRUCTURE
    assert row.reason is not None and "the Docker engine stopped during the run" in row.reason
    assert "the Docker engine stopped during the run" in json.dumps(failed.params["blocks"])
    retried = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                       contains=f"steady run #{first + 1}: ", timeout=120)
    assert retried.params["text"] == f"steady run #{first + 1}: succeeded", \
        json.dumps(retried.params["blocks"])
    assert bot.services.runs.get(first + 1).run.retry_of == first

    # The bot carried on: healthy, and a new run goes through on the restarted engine.
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bot.port}/healthz") as health:
        assert health.status == 200
    with engine.client() as client:
        assert client.containers.list(all=True, filters={
            "label": f"{LABEL_INSTANCE}={bot.settings.instance}"}) == []
