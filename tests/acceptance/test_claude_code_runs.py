"""Claude Code as a run's agent (`engine=claude-code`), on the built-in agent's contract.

The REAL Claude Code CLI (the native binary of the pinned claude-agent-sdk wheel) in the
real claude-code image, in a `--network none` container, talking to the Anthropic stand-in
only through the host's model gateway (its streaming requests, `/v1/messages?beta=true`,
answered as Server-Sent Events). Its turns are scripted: Bash and Edit tool calls, and the
`StructuredOutput` call `--json-schema` makes it use for the self-report. The verdict comes
from `bot.core.verdict` on what the host observed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import docker.errors
import git
import pytest

from bot.core.statuses import FailureKind, RunStatus
from bot.core.verdict import decide_outcome
from runner.contract import Engine, Event, RepoConfig
from runner.host.following import RunControl
from runner.host.sandbox import Sandbox
from tests.standins.anthropic_api import AnthropicStandIn, Turn, text, tool
from tests.standins.environment import API_KEY
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import CLAUDE_CODE_IMAGE, SANDBOX_IMAGE, BotFactory
from tests.support.run_specs import spec
from tests.support.sandbox_runs import Observed, execute, make_sandbox
from tests.support.slack_flows import create_routine, run_and_wait, view_log, wait_until

pytestmark = pytest.mark.docker


def structured(outcome: str, summary: str) -> dict[str, Any]:
    """The self-report as Claude Code's model gives it: the `StructuredOutput` tool."""
    return tool("StructuredOutput", outcome=outcome, summary=summary)


@pytest.fixture
def claude_sandbox(docker_client: Any, anthropic_api: AnthropicStandIn,
                   tmp_path: Path) -> Sandbox:
    try:
        docker_client.images.get(CLAUDE_CODE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"claude-code image {CLAUDE_CODE_IMAGE} is missing: run `make images`")
    return make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE,
                        claude_code_image=CLAUDE_CODE_IMAGE)


async def run_claude(sandbox: Sandbox, run_id: int, prompt: str, repo: str,
                     **overrides: Any) -> Observed:
    return await execute(sandbox, spec(run_id, prompt, repo, engine=Engine.CLAUDE_CODE.value,
                                       timeout_seconds=120, **overrides))


async def test_a_structured_report_of_success_is_a_succeeded_run_metered_by_the_gateway(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "cc-report",
        [tool("Bash", command="echo hello > hello.txt && env")],
        [tool("Edit", file_path="/workspace/README.md", old_string="# demo",
              new_string="# demo, edited by Claude Code")],
        [structured("success", "wrote hello.txt and edited the README")],
    )

    seen = await run_claude(claude_sandbox, 301, f"Write hello. {marker}", git_repo)

    outcome = decide_outcome(seen.result, 120)
    assert (outcome.status, outcome.failure) == (RunStatus.SUCCEEDED, None)
    assert outcome.summary == "wrote hello.txt and edited the README"
    # The report is the host's observation of the StructuredOutput call at the gateway.
    assert seen.result.report is not None and seen.result.report.outcome == "success"
    calls = seen.of_type("model_call")
    assert [c.get("report") for c in calls][-1] == {
        "outcome": "success", "summary": "wrote hello.txt and edited the README"}
    # Usage as the gateway metered it from the streamed answers (100+N in, 20+N out).
    sent = anthropic_api.requests_for("cc-report")
    assert len(sent) == len(calls) == 3
    assert all(r.body.get("stream") is True for r in sent)
    assert (seen.result.input_tokens, seen.result.output_tokens) == (303, 63)
    assert sum(c["input_tokens"] for c in calls) == 303
    # The run's events read as the built-in agent's: tool calls with inputs, their outputs.
    calls_made = [(e["name"], e["input"]) for e in seen.of_type("tool_call")]
    assert calls_made[0] == ("Bash", {"command": "echo hello > hello.txt && env"})
    assert calls_made[1][0] == "Edit"
    outputs = seen.of_type("tool_output")
    assert len(outputs) >= 2 and not outputs[0]["is_error"]
    final = seen.result.final
    assert final is not None and final["kind"] == "report"
    assert "+hello" in seen.result.diff
    assert "+# demo, edited by Claude Code" in seen.result.diff
    started = seen.of_type("engine_started")
    assert started and started[0]["version"] == "2.1.332"
    assert started[0]["permission_mode"] == "bypassPermissions"


async def test_the_key_never_enters_the_container_and_the_gateway_holds_the_door(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "cc-key",
        [tool("Bash", command="env; cat /proc/1/environ | tr '\\0' '\\n'; id -u")],
        [structured("success", "looked around")],
    )

    seen = await run_claude(claude_sandbox, 302, f"Look. {marker}", git_repo)

    shown = "\n".join(str(e.get("output", "")) for e in seen.of_type("tool_output"))
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:4100" in shown  # the gateway's loopback
    assert "10001" in shown  # non-root: the CLI refuses to skip permissions as root
    assert API_KEY not in shown
    assert API_KEY not in "\n".join(str(e) for e in seen.events)
    # The gateway swapped the run token for the key; the stand-in saw only the key, and
    # the requests Claude Code makes (its beta query, its beta headers) went through.
    sent = anthropic_api.requests_for("cc-key")
    assert sent and all(r.headers.get("x-api-key") == API_KEY for r in sent)
    assert all("claude-code" in r.headers.get("anthropic-beta", "") for r in sent)
    assert decide_outcome(seen.result, 120).status is RunStatus.SUCCEEDED


async def test_subtype_success_without_a_structured_report_is_no_self_report(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "cc-trap",
        [text("All done, everything is green.")],
        [text("Really, all done.")],
        [text("Done.")],
    )

    seen = await run_claude(claude_sandbox, 303, f"Claim success. {marker}", git_repo)

    final = seen.result.final
    assert final is not None
    assert (final["kind"], final.get("subtype")) == ("no_report", "success")
    assert seen.result.report is None
    outcome = decide_outcome(seen.result, 120)
    assert (outcome.status, outcome.failure) == (RunStatus.FAILED, FailureKind.NO_SELF_REPORT)
    assert next(e["text"] for e in seen.of_type("assistant_text")) == (
        "All done, everything is green.")
    assert seen.result.input_tokens > 0  # metered all the same


async def test_max_turns_is_the_turn_limit(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "cc-turns", *([tool("Bash", command=f"echo {n} >> turns.txt")] for n in range(5)))

    seen = await run_claude(claude_sandbox, 304, f"Loop. {marker}", git_repo, max_turns=2)

    final = seen.result.final
    assert final is not None
    assert (final["kind"], final.get("subtype")) == ("turn_limit", "error_max_turns")
    outcome = decide_outcome(seen.result, 120)
    assert (outcome.status, outcome.failure) == (RunStatus.FAILED, FailureKind.TURN_LIMIT)
    assert len(anthropic_api.requests_for("cc-turns")) == 2


async def test_a_structured_report_of_failure_is_a_reported_failure(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script("cc-fail", [structured("failure", "tests are red")])

    seen = await run_claude(claude_sandbox, 305, f"Try. {marker}", git_repo)

    outcome = decide_outcome(seen.result, 120)
    assert (outcome.status, outcome.failure) == (RunStatus.FAILED,
                                                 FailureKind.REPORTED_FAILURE)
    assert outcome.reason == "tests are red"


def output_of(seen: Observed, command: str) -> str:
    """The output of the Bash call that ran `command`."""
    ids = {e["id"] for e in seen.of_type("tool_call")
           if e["name"] == "Bash" and e["input"].get("command") == command}
    return "".join(str(e["output"]) for e in seen.of_type("tool_output") if e["id"] in ids)


def repo_with_claude_config(path: Path) -> str:
    """A repository with a CLAUDE.md, a skill, and code its own config would run: a hook
    and an MCP server, each leaving a file in the workspace if it ran."""
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test").set_value("user", "email", "t@example.test")
    (path / "CLAUDE.md").write_text("House rule MARKER-CLAUDE-MD: be brief.\n")
    skill = path / ".claude" / "skills" / "greet"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        "---\nname: greet\ndescription: MARKER-SKILL greets people\n---\nSay hi.\n")
    hook = "touch /workspace/hook-ran"
    (path / ".claude" / "settings.json").write_text(
        '{"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [{"type": "command", '
        f'"command": "{hook}"}}]}}]}}, "apiKeyHelper": "touch /workspace/helper-ran; echo x"}}')
    (path / ".mcp.json").write_text(
        '{"mcpServers": {"planted": {"command": "sh", '
        '"args": ["-c", "touch /workspace/mcp-ran; sleep 30"]}}}')
    repo.index.add(["CLAUDE.md", ".claude/skills/greet/SKILL.md", ".claude/settings.json",
                    ".mcp.json"])
    repo.index.commit("claude config")
    repo.close()
    return f"file://{path}"


async def test_claude_md_and_skills_are_read_but_the_repositorys_hooks_and_mcp_do_not_run(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    repo = repo_with_claude_config(tmp_path / "configured")
    marker = anthropic_api.script(
        "cc-untrusted", [tool("Bash", command="ls -a /workspace")],
        [structured("success", "listed")])

    seen = await run_claude(claude_sandbox, 306, f"List. {marker}", repo)

    sent = anthropic_api.requests_for("cc-untrusted")
    assert sent and "MARKER-CLAUDE-MD" in str(sent[0].body)
    assert "MARKER-SKILL" in str(sent[0].body)
    listing = output_of(seen, "ls -a /workspace")
    assert "CLAUDE.md" in listing
    for planted in ("hook-ran", "helper-ran", "mcp-ran"):
        assert planted not in listing
        assert planted not in seen.result.diff
    assert seen.of_type("engine_started")[0]["mcp_servers"] == 0


async def test_a_trusted_repository_config_runs_its_hooks(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    repo = repo_with_claude_config(tmp_path / "configured")
    marker = anthropic_api.script(
        "cc-trusted", [tool("Bash", command="true")],
        [tool("Bash", command="ls -a /workspace")], [structured("success", "listed")])

    seen = await run_claude(claude_sandbox, 307, f"List. {marker}", repo,
                            repo_config=RepoConfig.TRUSTED.value)

    listing = output_of(seen, "ls -a /workspace")
    assert "hook-ran" in listing  # the PreToolUse hook ran before the first Bash call


async def test_the_gateway_holds_the_token_budget_against_claude_code(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "cc-budget", *([tool("Bash", command=f"echo {n} >> spent.txt")] for n in range(6)))

    seen = await run_claude(claude_sandbox, 308, f"Spend. {marker}", git_repo,
                            max_tokens=150)

    assert seen.result.token_budget_exceeded
    outcome = decide_outcome(seen.result, 120)
    assert (outcome.status, outcome.failure) == (RunStatus.FAILED, FailureKind.TOKEN_BUDGET)
    # Two calls went upstream (120, then 122 tokens); the third was refused at the host.
    assert len(anthropic_api.requests_for("cc-budget")) == 2
    refused = [c for c in seen.of_type("model_call") if c.get("refused")]
    assert refused and refused[0]["status"] == 400


async def test_a_claude_code_routine_from_slack_succeeds_and_its_log_reads_the_same(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "cc-slack",
        [text("Writing the proof file."),
         tool("Bash", command="echo hello-from-claude-code > proof.txt && id -u")],
        [structured("success", "Wrote proof.txt with Claude Code.")],
    )
    bot, fake = await start_bot()
    await create_routine(fake, slack_api, "cc-hello", f"Write a proof file. {marker}", git_repo)
    answer = (await fake.slash("set cc-hello engine=claude-code")).json()
    assert answer["text"].startswith("Routine cc-hello")

    message = await run_and_wait(fake, slack_api, "cc-hello", "succeeded", timeout=150)

    blocks = json.dumps(message["blocks"])
    assert "Wrote proof.txt with Claude Code." in blocks
    assert "tokens 201 in / 41 out" in blocks  # the gateway's count, as for the builtin agent
    shown = await view_log(fake, slack_api, message, last="Changes (diff)")
    assert "→ Bash" in shown  # the log line of the tool call
    assert "echo hello-from-claude-code &gt; proof.txt" in shown  # as Slack escapes it
    assert "agent: Writing the proof file." in shown
    assert "10001" in shown and "+hello-from-claude-code" in shown
    run = bot.services.runs.get(int(message["run_id"])).run
    assert run.failure_kind is None


async def test_the_kill_switch_cuts_claude_code_off(
    claude_sandbox: Sandbox, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "cc-kill", [tool("Bash", command="echo working > work.txt")],
        Turn([structured("success", "never")], delay=30))  # the kill lands first
    events: list[Event] = []
    control = RunControl()
    running = asyncio.create_task(asyncio.to_thread(
        claude_sandbox.execute,
        spec(309, f"Sleep. {marker}", git_repo, engine=Engine.CLAUDE_CODE.value,
             timeout_seconds=120),
        lambda _seq, e: events.append(e), lambda _id: None, control))
    await wait_until(lambda: len(anthropic_api.requests_for("cc-kill")) == 2, timeout=90)

    control.kill()
    await asyncio.to_thread(claude_sandbox.kill, 309)
    result = await running

    assert result.killed and result.report is None
    outcome = decide_outcome(result, 120)
    assert (outcome.status, outcome.failure) == (RunStatus.KILLED, FailureKind.KILLED)
    assert len(anthropic_api.requests_for("cc-kill")) == 2  # nothing after the kill
    assert [e["name"] for e in events if e.get("type") == "tool_call"] == ["Bash"]
