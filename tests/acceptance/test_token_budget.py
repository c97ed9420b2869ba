"""A run's token budget: the agent stops itself when it is reached, and the host's model
gateway refuses a call made after it anyway (the run is failed, its container killed).
The real agent in the real container, its turns (and their usage) scripted by the
Anthropic stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import pytest

from runner.contract import Event
from runner.host.following import RunControl
from tests.standins.anthropic_api import AnthropicStandIn, Turn, report, text, tool
from tests.support.bots import SANDBOX_IMAGE
from tests.support.run_specs import spec
from tests.support.sandbox_runs import (
    execute,
    gateway_client,
    gateway_socket,
    make_sandbox,
    run_token,
)
from tests.support.slack_flows import wait_until

pytestmark = pytest.mark.docker


async def test_the_agent_stops_with_token_budget_when_the_budget_is_reached(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "budget",
        Turn([tool("run_shell", command="echo one > one.txt")], usage=(1000, 200)),
        Turn([tool("run_shell", command="echo two > two.txt")], usage=(1000, 200)),
        Turn([tool("run_shell", command="echo three > three.txt")], usage=(1000, 200)),
        Turn([report("success", "never reached")]),
    )
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)

    seen = await execute(sandbox, spec(21, f"Spend. {marker}", git_repo, max_tokens=2500))

    final = seen.result.final
    assert final is not None
    assert (final["kind"], final["summary"]) == (
        "token_budget", "token budget exhausted (3600 of 2500 tokens)")
    assert (seen.result.input_tokens, seen.result.output_tokens) == (3000, 600)
    assert not seen.result.token_budget_exceeded  # the agent stopped by itself
    # No call after the budget was reached, and each one asked for no more output
    # than what was left of it.
    sent = anthropic_api.requests_for("budget")
    assert [r.body["max_tokens"] for r in sent] == [2500, 1300, 100]
    # The last turn's tool call was not run.
    assert "+one" in seen.result.diff and "+two" in seen.result.diff
    assert "three" not in seen.result.diff
    assert len(seen.of_type("tool_output")) == 2


async def test_a_report_in_the_turn_that_reaches_the_budget_still_counts(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "last-word", Turn([report("success", "done just in time")], usage=(900, 300)))
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)

    seen = await execute(sandbox, spec(22, f"Finish. {marker}", git_repo, max_tokens=1000))

    assert seen.result.final is not None
    assert (seen.result.final["kind"], seen.result.final["outcome"]) == ("report", "success")
    assert not seen.result.token_budget_exceeded


async def test_the_gateway_refuses_the_call_after_the_budget_and_the_run_fails(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    # An agent that does not stop is played by the test itself: while the run's shell
    # waits, the run's token (read from the container's config, as the host can) calls
    # the run's gateway with the real SDK. 120 + 6000 + 6000 reaches the budget, so the
    # third call is one made after it was spent. (Lines a tool writes count nothing: see
    # test_forged_verdict.py.)
    marker = anthropic_api.script(
        "runaway",
        [tool("run_shell", command="echo partial > partial.txt; sleep 100")],
        Turn([text("more")], usage=(6000, 0)),
    )
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)
    events: list[Event] = []
    running = asyncio.create_task(asyncio.to_thread(
        sandbox.execute, spec(23, f"Run away. {marker}", git_repo, max_tokens=10_000,
                              timeout_seconds=150),
        lambda _seq, event: events.append(event), lambda _id: None, RunControl()))
    await wait_until(lambda: any(e.get("type") == "tool_call" for e in events))
    client = gateway_client(gateway_socket(sandbox, 23), run_token(docker_client, sandbox, 23))
    conversation: list[Any] = [{"role": "user", "content": f"Run away. {marker}"},
                               {"role": "assistant", "content": "ok"},
                               {"role": "user", "content": "go on"}]
    for _ in range(2):
        await client.messages.create(model="claude-test", max_tokens=100,
                                     messages=conversation)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(model="claude-test", max_tokens=100,
                                     messages=conversation)
    await client.close()
    result = await running

    assert refused.value.status_code == 400
    assert refused.value.body == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "token budget exhausted (12120 of 10000 tokens)"}}
    assert len(anthropic_api.requests_for("runaway")) == 3  # the refused call went nowhere
    assert result.token_budget_exceeded
    assert not result.timed_out and result.final is None
    assert (result.input_tokens, result.output_tokens) == (100 + 2 * 6000, 20)
    assert "+partial" in result.diff  # the work so far is kept, as on a timeout
    assert docker_client.containers.list(
        all=True, filters={"label": f"org.routines.instance={sandbox.config.instance}"}) == []
    calls = [e for e in events if e.get("type") == "model_call"]
    assert [(c["status"], c.get("refused")) for c in calls] == [
        (200, None), (200, None), (200, None),
        (400, "token budget exhausted (12120 of 10000 tokens)")]
