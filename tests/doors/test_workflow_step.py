"""The Workflow Builder step "Run a routine", driven by signed `function_executed` events:
the run goes through every rule as the workflow's user, the step completes with the run's
outputs when it succeeds and fails with the reason otherwise, and a refusal fails it at once."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from bot.app import Bot
from bot.core.statuses import RunStatus, TriggerKind
from tests.standins.anthropic_api import AnthropicStandIn, report, text
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import ALICE, BOB
from tests.support.slack_requests import FakeSlack, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


def function_executed(execution_id: str, **inputs: str) -> dict[str, Any]:
    """The event as Slack sends it to the app of a custom step."""
    return {
        "type": "function_executed",
        "function": {"id": "Fn0ROUTINE1", "callback_id": "run_routine",
                     "title": "Run a routine", "type": "app", "app_id": "A0001",
                     "date_created": 1_700_000_000, "date_updated": 1_700_000_000},
        "inputs": inputs, "function_execution_id": execution_id,
        "workflow_execution_id": f"Wx{execution_id}", "event_ts": f"{time.time():.6f}",
        "bot_access_token": "xwfp-test-function-token",
    }


async def setup(start_bot: BotFactory, git_repo: str, prompt: str) -> tuple[Bot, FakeSlack]:
    bot, fake = await start_bot()
    reply = await fake.submit_view("routine_create", modal_values(
        name="triage", prompt=prompt, repo_url=git_repo, branch="main",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"))
    assert reply.status == 200 and reply.text == "", reply.text
    return bot, fake


async def test_a_step_runs_the_routine_as_the_workflows_user_and_completes_with_its_outputs(
    start_bot: BotFactory, git_repo: str, slack_api: SlackApiStandIn,
    anthropic_api: AnthropicStandIn,
) -> None:
    marker = anthropic_api.script("step-ok", [report("success", "triaged 3 issues")])
    bot, fake = await setup(start_bot, git_repo, f"Triage. {marker}")

    event = function_executed("Fx0001", routine="triage", user=BOB, payload="issue #42 </x>")
    assert (await fake.event(event)).status == 200
    assert (await fake.event(event)).status == 200  # Slack delivers it again: one run

    done = await slack_api.wait_for("functions.completeSuccess",
                                    {"function_execution_id": "Fx0001"}, timeout=90)
    runs = bot.services.routines.history("triage")
    assert len(runs) == 1
    run = runs[0].run
    assert (run.status, run.trigger_kind, run.triggered_by, run.trigger_ref) == (
        RunStatus.SUCCEEDED, TriggerKind.WORKFLOW, BOB, "Fx0001")
    assert json.loads(done.params["outputs"]) == {
        "run_id": str(run.id), "status": "succeeded", "summary": "triaged 3 issues"}
    prompt = anthropic_api.requests_for("step-ok")[0].body["messages"][0]["content"]
    assert "triggered by a Slack workflow (Workflow Builder step)" in prompt
    fence = re.search(r"<(untrusted-data-[0-9a-f]{16})>\n(.*)\n</\1>$", prompt, re.S)
    assert fence is not None, prompt
    assert json.loads(fence.group(2)) == {"text": "issue #42 </x>"}  # as data, fenced
    result = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                      contains=f"run #{run.id}: ")
    assert f"Triggered by workflow <@{BOB}>" in json.dumps(result.params["blocks"])
    assert slack_api.calls_to("functions.completeError") == []
    assert len(slack_api.calls_to("functions.completeSuccess")) == 1


async def test_a_failed_run_fails_the_step_with_its_reason(
    start_bot: BotFactory, git_repo: str, slack_api: SlackApiStandIn,
    anthropic_api: AnthropicStandIn,
) -> None:
    marker = anthropic_api.script("step-silent", [text("done, I think")], [text("really")])
    bot, fake = await setup(start_bot, git_repo, f"Triage. {marker}")

    await fake.event(function_executed("Fx0002", routine="triage", user=ALICE))

    failed = await slack_api.wait_for("functions.completeError",
                                      {"function_execution_id": "Fx0002"}, timeout=90)
    run = bot.services.routines.history("triage")[0].run
    assert run.status == RunStatus.FAILED
    assert failed.params["error"] == f"triage run #{run.id} failed: {run.reason}"
    assert slack_api.calls_to("functions.completeSuccess") == []


async def test_a_refusal_fails_the_step_at_once(
    start_bot: BotFactory, git_repo: str, slack_api: SlackApiStandIn,
) -> None:
    bot, fake = await setup(start_bot, git_repo, "Triage.")
    assert (await fake.slash("pause triage", user=ALICE)).status == 200

    await fake.event(function_executed("Fx0003", routine="triage", user=ALICE))
    await fake.event(function_executed("Fx0004", routine="nope", user=ALICE))

    paused = await slack_api.wait_for("functions.completeError",
                                      {"function_execution_id": "Fx0003"}, timeout=10)
    assert "paused" in paused.params["error"] and "*" not in paused.params["error"]
    unknown = await slack_api.wait_for("functions.completeError",
                                       {"function_execution_id": "Fx0004"}, timeout=10)
    assert "nope" in unknown.params["error"]
    assert bot.services.routines.history("triage") == []
    assert paused.headers["Authorization"] == "Bearer xwfp-test-function-token"
