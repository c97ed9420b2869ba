"""The `claude-code` engine: Claude Code's CLI as the run's agent, on the same contract.

`runner.inside.agent` hands over to `run` once the forwarder is up and the setup script
has passed. This runs `claude -p` headless (`command`), reads its `stream-json` lines and
writes the contract's events for them (`StreamMapper`): a tool call with its input, its
output, the model's text, and last a `result` whose `kind` says how it ended.

What the lines say is for people, as with the built-in agent: the CLI talks to the host's
model gateway (ANTHROPIC_BASE_URL, with the run's token), which meters every call and
observes the self-report itself, the `StructuredOutput` tool call `--json-schema` makes
the model use (`REPORT_SCHEMA`). Claude Code's own `subtype: success` is not a report:
without a structured report the result is `no_report` (the green-status trap).

A repository's CLAUDE.md, skills and agents are read (the project setting source stays
on); the code a repository could have run on its own is off unless the spec trusts it
(`repo_config == "trusted"`): hooks (`disableAllHooks`), its MCP servers
(`--strict-mcp-config`: only the servers given on the command line, none) and an
`apiKeyHelper` (replaced by one that prints the run's token).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

from runner.contract import WORKSPACE, Event, RunSpec, api_error_event

CLAUDE = "claude"
MAX_TOOL_OUTPUT = 16_000
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "outcome": {"type": "string", "enum": ["success", "failure"]},
        "summary": {"type": "string"},
    },
    "required": ["outcome", "summary"],
}
APPEND_PROMPT = (
    "You are running a scheduled routine in a sandbox; the repository is in /workspace. "
    'When you are done, return the structured report: outcome "success" only if the task '
    'was achieved, "failure" otherwise, with a short summary a teammate can act on. '
    "A run that ends without that report counts as failed.")
# Off in every run: nothing leaves but the model calls through the gateway.
QUIET_ENV = {"DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
             "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
             "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1"}
# Untrusted repository: what its .claude/settings.json could run is replaced or off.
UNTRUSTED_SETTINGS: dict[str, Any] = {"disableAllHooks": True,
                                      "apiKeyHelper": "printenv ANTHROPIC_API_KEY"}
# Claude Code's failing result subtypes -> the contract's result kinds.
SUBTYPE_KINDS = {"error_max_turns": "turn_limit", "error_max_budget_usd": "token_budget"}

Emit = Callable[[Event], None]


def command(spec: RunSpec) -> list[str]:
    """The headless invocation: stream-json out, the routine's model and turns, edits and
    commands allowed without asking (the container is the boundary; it runs non-root)."""
    args = [CLAUDE, "-p", spec.prompt, "--output-format", "stream-json", "--verbose",
            "--model", spec.model, "--max-turns", str(spec.max_turns),
            "--json-schema", json.dumps(REPORT_SCHEMA),
            "--append-system-prompt", APPEND_PROMPT,
            "--dangerously-skip-permissions"]
    if spec.repo_config != "trusted":
        args += ["--settings", json.dumps(UNTRUSTED_SETTINGS), "--strict-mcp-config"]
    return args


def environment(base: dict[str, str]) -> dict[str, str]:
    """The CLI's environment: the agent's (the run token, the gateway's and proxy's
    loopback URLs) less the spec, plus everything non-essential switched off."""
    env = {k: v for k, v in base.items() if k != "ROUTINE_RUN_SPEC"}
    env.update(QUIET_ENV)
    return env


class StreamMapper:
    """Claude Code's stream-json lines -> the contract's events, and its end -> a result."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.final: Event | None = None

    def line(self, raw: str) -> None:
        text = raw.strip()
        if not text:
            return
        try:
            message = json.loads(text)
        except ValueError:
            self.emit({"type": "output", "text": text})
            return
        if isinstance(message, dict):
            self.message(message)

    def message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "system" and message.get("subtype") == "init":
            self.emit({"type": "engine_started", "engine": "claude-code",
                       "version": str(message.get("claude_code_version", "")),
                       "model": str(message.get("model", "")),
                       "permission_mode": str(message.get("permissionMode", "")),
                       "mcp_servers": len(message.get("mcp_servers") or [])})
        elif kind == "assistant":
            for block in _blocks(message):
                if block.get("type") == "text" and str(block.get("text", "")).strip():
                    self.emit({"type": "assistant_text", "text": str(block["text"])})
                elif block.get("type") == "tool_use":
                    args = block.get("input")
                    self.emit({"type": "tool_call", "id": str(block.get("id", "")),
                               "name": str(block.get("name", "")),
                               "input": args if isinstance(args, dict) else {}})
        elif kind == "user":
            for block in _blocks(message):
                if block.get("type") == "tool_result":
                    self.emit({"type": "tool_output", "id": str(block.get("tool_use_id", "")),
                               "output": _truncate(_text_of(block.get("content"))),
                               "is_error": bool(block.get("is_error"))})
        elif kind == "result":
            self.final = result_event(message)

    def finish(self, exit_code: int) -> Event:
        """The run's `result`: from the CLI's result line, or an exit without one."""
        if self.final is not None:
            return self.final
        return {"type": "result", "kind": "no_report", "exit_code": exit_code,
                "summary": f"Claude Code exited with code {exit_code} without a result"}


def result_event(message: dict[str, Any]) -> Event:
    """The contract's `result` for Claude Code's result line. Only a structured report
    is a report; `subtype: success` alone is `no_report`."""
    subtype = str(message.get("subtype", ""))
    turns = message.get("num_turns")
    if subtype in SUBTYPE_KINDS:
        errors = "; ".join(str(e) for e in message.get("errors") or [])
        return {"type": "result", "kind": SUBTYPE_KINDS[subtype], "subtype": subtype,
                "num_turns": turns, "summary": errors or f"Claude Code ended: {subtype}"}
    status = message.get("api_error_status")
    if isinstance(status, int) and not isinstance(status, bool):
        return dict(api_error_event(f"Anthropic API error via Claude Code: "
                                    f"{message.get('result') or subtype}", status),
                    subtype=subtype)
    structured = message.get("structured_output")
    if subtype == "success" and isinstance(structured, dict):
        outcome = "success" if structured.get("outcome") == "success" else "failure"
        return {"type": "result", "kind": "report", "outcome": outcome,
                "summary": str(structured.get("summary", "")), "num_turns": turns}
    if subtype == "success":
        return {"type": "result", "kind": "no_report", "subtype": subtype, "num_turns": turns,
                "summary": "Claude Code finished (subtype success) without a structured report"}
    errors = "; ".join(str(e) for e in message.get("errors") or [])
    return {"type": "result", "kind": "no_report", "subtype": subtype, "num_turns": turns,
            "summary": errors or f"Claude Code ended without a report: {subtype}"}


def run(spec: RunSpec, emit: Emit, env: dict[str, str] | None = None) -> Event:
    """Run the CLI to its end in the workspace; returns the final `result` event."""
    mapper = StreamMapper(emit)
    try:
        proc = subprocess.Popen(command(spec), cwd=WORKSPACE, env=environment(
            dict(os.environ) if env is None else env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1)
    except OSError as exc:
        return {"type": "result", "kind": "no_report",
                "summary": f"Claude Code could not start: {exc}"}
    assert proc.stdout is not None
    for raw in proc.stdout:
        mapper.line(raw)
    code = proc.wait()
    return mapper.finish(code)


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    inner = message.get("message")
    content = inner.get("content") if isinstance(inner, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content
                         if isinstance(b, dict) and b.get("type") == "text")
    return "" if content is None else json.dumps(content)


def _truncate(text: str) -> str:
    if len(text) <= MAX_TOOL_OUTPUT:
        return text
    return text[:MAX_TOOL_OUTPUT] + f"\n[... truncated {len(text) - MAX_TOOL_OUTPUT} characters]"
