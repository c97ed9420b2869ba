"""A run's token budget: the agent stops itself when it is reached, and the host kills a
run that goes on calling the API anyway. The real agent in the real container, its
turns (and their usage) scripted by the Anthropic stand-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.standins.anthropic_api import AnthropicStandIn, Turn, report, tool
from tests.support.bots import SANDBOX_IMAGE
from tests.support.run_specs import spec
from tests.support.sandbox_runs import execute, make_sandbox

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


async def test_the_host_kills_a_run_that_goes_on_after_its_budget(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    # An agent that does not stop is simulated by usage lines written straight to the
    # agent's stdout (process 1) from its shell: 120 + 6000 + 6000 reaches the budget,
    # so the third line is a call made after it was spent.
    forged = json.dumps({"type": "usage", "input_tokens": 6000, "output_tokens": 0})
    marker = anthropic_api.script(
        "runaway",
        [tool("run_shell", command=f"for i in 1 2 3; do echo '{forged}' > /proc/1/fd/1;"
                                   " done; echo partial > partial.txt; sleep 100")],
        [report("success", "never reached")],
    )
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)

    seen = await execute(sandbox, spec(23, f"Run away. {marker}", git_repo,
                                       max_tokens=10_000, timeout_seconds=150))

    assert seen.result.token_budget_exceeded
    assert not seen.result.timed_out and seen.result.final is None
    assert seen.result.input_tokens == 100 + 3 * 6000
    assert "+partial" in seen.result.diff  # the work so far is kept, as on a timeout
    assert docker_client.containers.list(
        all=True, filters={"label": f"org.routines.instance={sandbox.config.instance}"}) == []
