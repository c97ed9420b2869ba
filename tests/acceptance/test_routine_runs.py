"""The spine, driven only from outside: signed Slack requests in, Slack API calls out,
the real agent in the real container talking to the Anthropic stand-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.core.statuses import FailureKind
from bot.core.trigger import manual
from tests.standins.anthropic_api import AnthropicStandIn, report, text, tool, tool_results
from tests.standins.environment import API_KEY
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import create_routine, run_and_wait, view_log, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


async def test_create_run_success_reaches_the_channel(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "success",
        [text("Writing the proof file."),
         tool("run_shell",
              command="echo hello-from-sandbox > proof.txt && cat proof.txt && id -u")],
        [report("success", "Wrote proof.txt with a greeting.")],
    )
    _, fake = await start_bot()
    await create_routine(fake, slack_api, "say-hello", f"Write a proof file. {marker}", git_repo)

    message = await run_and_wait(fake, slack_api, "say-hello", "succeeded")

    blocks = json.dumps(message["blocks"])
    assert "Wrote proof.txt with a greeting." in blocks
    assert "Triggered by manual <@U0ALICE01>" in blocks
    assert "tokens 201 in / 41 out" in blocks
    # The shell tool really ran in the container, as the non-root sandbox user.
    second = anthropic_api.requests_for("success")[1]
    output = tool_results(second.body)[0]["content"]
    assert "hello-from-sandbox" in output and "10001" in output
    sent_key = second.headers.get("x-api-key") or second.headers.get("Authorization", "")[7:]
    assert sent_key == API_KEY
    # The log, through the View log button, shows the tool call, its output and the diff
    # in the thread of the result message.
    shown = await view_log(fake, slack_api, message, last="Changes (diff)")
    assert "proof.txt" in shown and "hello-from-sandbox" in shown
    assert "+hello-from-sandbox" in shown  # the workspace diff is kept


async def test_exit_without_report_is_a_failure(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script("silent", [text("All done!")], [text("Really, done.")])
    _, fake = await start_bot()
    await create_routine(fake, slack_api, "silent", f"Do it. {marker}", git_repo)

    message = await run_and_wait(fake, slack_api, "silent", "failed")

    assert "no self-report" in json.dumps(message["blocks"])


async def test_reported_failure_carries_the_agents_reason(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script("red", [report("failure", "3 tests fail in test_api.py")])
    _, fake = await start_bot()
    await create_routine(fake, slack_api, "red-tests", f"Run tests. {marker}", git_repo)

    message = await run_and_wait(fake, slack_api, "red-tests", "failed")

    assert "3 tests fail in test_api.py" in json.dumps(message["blocks"])


async def test_timeout_kills_the_container_and_keeps_the_work(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, docker_client: Any,
) -> None:
    marker = anthropic_api.script(
        "slow", [tool("run_shell", command="echo partial > work.txt && sleep 120")])
    bot, fake = await start_bot()
    await create_routine(fake, slack_api, "slowpoke", f"Take forever. {marker}", git_repo,
                         timeout="4")

    message = await run_and_wait(fake, slack_api, "slowpoke", "timed_out")

    assert "timed out after 4s" in json.dumps(message["blocks"])
    run = bot.services.runs.get(int(message["run_id"])).run
    assert "+partial" in run.diff
    leftovers = docker_client.containers.list(all=True, filters={"label": [
        f"org.routines.run_id={message['run_id']}",
        f"org.routines.instance={bot.settings.instance}"]})
    assert leftovers == []


async def test_setup_script_runs_before_the_agent(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "setup", [tool("read_file", path="prepared.txt")], [report("success", "read it")])
    _, fake = await start_bot()
    await create_routine(fake, slack_api, "with-setup", f"Read. {marker}", git_repo,
                         setup="echo prepared-by-setup > prepared.txt")

    await run_and_wait(fake, slack_api, "with-setup", "succeeded")

    second = anthropic_api.requests_for("setup")[1]
    assert tool_results(second.body)[0]["content"].strip() == "prepared-by-setup"


async def test_missing_image_is_an_infrastructure_error(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    _, fake = await start_bot(sandbox_image="routines-sandbox:does-not-exist")
    await create_routine(fake, slack_api, "no-image", "Anything.", git_repo)

    message = await run_and_wait(fake, slack_api, "no-image", "error")

    assert "sandbox image not found" in json.dumps(message["blocks"])


class NoDNS:
    """The sandbox's resolver in these tests: records each question, answers from a table
    (nothing by default), and never asks real DNS."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        return self.answers.get(host, [])


async def test_a_routine_whose_host_is_no_longer_allowed_errors_at_clone_time(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    """Saved while its host was allowed; the setting changed since: refused before any
    lookup or connection, and the run ends `error` (infrastructure) saying why."""
    first, fake = await start_bot(repo_hosts=("github.com", "git.example.org"))
    await create_routine(fake, slack_api, "old-forge", "Anything.",
                         "https://git.example.org/team/repo.git")
    await first.stop()
    first.port = 0
    bot, fake = await start_bot()  # ROUTINES_REPO_HOSTS back to its default
    bot.sandbox.resolve = resolver = NoDNS()

    message = await run_and_wait(fake, slack_api, "old-forge", "error")

    reason = ("clone of https://git.example.org/team/repo.git refused: git.example.org is "
              "not one of the allowed repository hosts (ROUTINES_REPO_HOSTS)")
    assert reason in json.dumps(message["blocks"])
    run = bot.services.routines.history("old-forge")[0].run
    assert (run.status, run.reason, run.failure_kind) == ("error", reason,
                                                          FailureKind.INFRASTRUCTURE)
    assert resolver.asked == []


async def test_a_repository_host_resolving_to_a_private_address_errors_at_clone_time(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    bot, fake = await start_bot()
    bot.sandbox.resolve = resolver = NoDNS({"github.com": ["140.82.121.4", "10.0.0.5"]})
    await create_routine(fake, slack_api, "rebound", "Anything.",
                         "https://github.com/acme/widgets.git")

    message = await run_and_wait(fake, slack_api, "rebound", "error")

    assert ("clone of https://github.com/acme/widgets.git refused: github.com resolves to "
            "10.0.0.5, a private address") in json.dumps(message["blocks"])
    assert resolver.asked == ["github.com"]


async def test_queued_and_running_runs_survive_a_restart(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "restart", [tool("run_shell", command="sleep 3; echo survived > s.txt")],
        [report("success", "survived the restart")])
    first, fake = await start_bot()
    await create_routine(fake, slack_api, "survivor", f"Hold on. {marker}", git_repo)
    reply = await fake.slash("run survivor")
    run_id = int(reply.json()["text"].split("#")[1].split(" ")[0])
    await wait_until(lambda: len(anthropic_api.requests_for("restart")) >= 1)
    await first.stop()  # the container keeps running without the bot

    _, fake = await start_bot()

    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains=f"run #{run_id}: ", timeout=60)
    assert call.params["text"] == f"survivor run #{run_id}: succeeded"
    assert "survived the restart" in json.dumps(call.params["blocks"])
    # The adopted run's gateway kept the usage metered before the restart (100+101 in,
    # 20+21 out: one call before, one after).
    assert "tokens 201 in / 41 out" in json.dumps(call.params["blocks"])


async def test_a_running_run_whose_container_vanished_is_failed_on_start(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    first, fake = await start_bot()
    await create_routine(fake, slack_api, "orphan", "Anything.", git_repo)
    await first.stop()
    # A crash between claiming the run and starting its container.
    first.services.triggers.trigger("orphan", manual("U0ALICE01"))
    claimed = first.services.runs.claim_next()
    assert claimed is not None and claimed.run.status == "running"

    second, _ = await start_bot()

    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains=f"run #{claimed.run.id}: ", timeout=10)
    assert call.params["text"] == f"orphan run #{claimed.run.id}: failed"
    assert "container was gone" in json.dumps(call.params["blocks"])
    assert claimed.run.id is not None
    lost = second.services.runs.get(claimed.run.id).run
    assert lost.failure_kind == FailureKind.INTERRUPTED



async def test_another_deployment_on_the_same_engine_leaves_our_runs_alone(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, tmp_path: Any,
) -> None:
    marker = anthropic_api.script(
        "neighbour", [tool("run_shell", command="sleep 3")], [report("success", "undisturbed")])
    _, fake = await start_bot()
    await create_routine(fake, slack_api, "ours", f"Wait. {marker}", git_repo)
    reply = await fake.slash("run ours")
    run_id = int(reply.json()["text"].split("#")[1].split(" ")[0])
    await wait_until(lambda: len(anthropic_api.requests_for("neighbour")) >= 1)

    # Another bot with its own database reconciles on start: run #1 there is not ours.
    await start_bot(database_url=f"sqlite:///{tmp_path / 'other.db'}")

    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains=f"run #{run_id}: ", timeout=60)
    assert call.params["text"] == f"ours run #{run_id}: succeeded"


async def test_a_leaked_key_is_redacted_in_slack_and_in_the_database(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, settings: Any,
) -> None:
    marker = anthropic_api.script(
        "leak",
        [tool("run_shell", command="tr '\\0' '\\n' < /proc/1/environ | grep ANTHROPIC_API_KEY")],
        [report("success", f"found {API_KEY} in the environment")],
    )
    bot, fake = await start_bot()
    await create_routine(fake, slack_api, "leaky", f"Leak it. {marker}", git_repo)

    message = await run_and_wait(fake, slack_api, "leaky", "succeeded")
    assert "ANTHROPIC_API_KEY" in await view_log(fake, slack_api, message)

    # The agent's shell no longer finds the key (the container never holds it; see
    # test_sandbox_secrets.py), but the model's own report carries it in clear, so
    # redaction, not luck, must keep it out...
    output = tool_results(anthropic_api.requests_for("leak")[1].body)[0]["content"]
    assert API_KEY not in output
    # ...and no Slack call and no byte of the database holds it in clear.
    assert API_KEY not in json.dumps([call.params for call in slack_api.calls])
    assert "found [REDACTED] in the environment" in json.dumps(message["blocks"])
    with bot.db.engine.connect() as conn:
        rows = [conn.exec_driver_sql(f"SELECT * FROM {t}").all() for t in ("run", "runevent")]
    assert rows[1] and API_KEY not in repr(rows)
    if settings.database_url.startswith("sqlite:///"):  # and not in a stale page either
        await bot.stop()
        bot.port = 0
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        stored = [p.read_bytes() for p in database.parent.glob(database.name + "*")]
        assert stored and all(API_KEY.encode() not in data for data in stored)
