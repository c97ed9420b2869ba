"""The program that runs inside the sandbox container: setup script, then the agent loop.

It speaks the contract in `runner.contract`: the spec arrives in an environment
variable (in a warm container, later, as a file: `runner.inside.warm`), every step is
printed as one JSON line, and the last line is a `result` event. It must never end
silently: whatever happens, a `result` event is attempted.

Those lines are for people: the host takes usage and the self-report from its model
gateway, which this agent reaches with a run token (never the real key) through the
loopback ports `runner.inside.forwarder` opens. The process makes itself non-dumpable
first, so the tools it runs (same uid) can neither read its environment (the token)
through /proc nor write into its stdout, and blanks the token in its original
environment block as well.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic

from runner.contract import (
    SPEC_ENV,
    WARM_ENV,
    WORKSPACE,
    Engine,
    Event,
    RunSpec,
    api_error_event,
)
from runner.inside import claude_code, forwarder, warm

MAX_TOOL_OUTPUT = 16_000
SHELL_TIMEOUT = 600
SECRET_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", SPEC_ENV)
TOKEN_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")  # the run token's names
PR_SET_DUMPABLE = 4  # <linux/prctl.h>
# How long a model call waits for the host's gateway to come back: the socket is served
# by the bot, and a bot that crashed and restarts serves it again within seconds.
GATEWAY_RETURN_SECONDS = 90.0

SYSTEM_PROMPT = """You are an engineering agent running a scheduled routine in a sandbox.
The repository is checked out in /workspace. Use the tools to inspect and change it.
When you are done, you MUST call report_result exactly once: outcome "success" if the
task was achieved, "failure" otherwise, with a short summary a teammate can act on.
A run that ends without report_result counts as failed."""

TOOLS: list[dict[str, Any]] = [
    {
        "name": "run_shell",
        "description": "Run a shell command in /workspace and return its exit code and output.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
    {
        "name": "read_file",
        "description": "Read a text file in the workspace.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
    {
        "name": "write_file",
        "description": "Create or overwrite a text file in the workspace.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "edit_file",
        "description": "Replace one exact occurrence of `old` with `new` in a workspace file.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old": {"type": "string"},
                "new": {"type": "string"},
            },
            "required": ["path", "old", "new"],
        },
    },
    {
        "name": "report_result",
        "description": "Report how the routine ended. Call exactly once, as the last step.",
        "input_schema": {
            "type": "object",
            "properties": {
                "outcome": {"type": "string", "enum": ["success", "failure"]},
                "summary": {"type": "string"},
            },
            "required": ["outcome", "summary"],
        },
    },
]


def emit(event: Event) -> None:
    """One event, one whole line on stdout, however large. Written with `os.write` until
    every byte is out: under gVisor the stdout pipe can be non-blocking, and a buffered
    write that meets EAGAIN loses the rest of the line (and joins the next one to it)."""
    event.setdefault("ts", round(time.time(), 3))
    data = memoryview((json.dumps(event) + "\n").encode())
    sys.stdout.flush()
    while data:
        try:
            data = data[os.write(1, data):]
        except BlockingIOError:
            select.select([], [1], [], 1.0)


def truncate(text: str, limit: int = MAX_TOOL_OUTPUT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... truncated {len(text) - limit} characters]"


def tool_env() -> dict[str, str]:
    """The environment tools see: the agent's credentials are not theirs to read."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}


def workspace_path(relative: str) -> Path:
    """Resolve a path inside the workspace; refuse anything that escapes it."""
    root = Path(WORKSPACE).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {relative!r} is outside the workspace")
    return target


def run_shell(command: str) -> tuple[str, bool]:
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=WORKSPACE,
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT,
            env=tool_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"command timed out after {SHELL_TIMEOUT}s", True
    output = f"exit code {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return truncate(output), proc.returncode != 0


def run_tool(name: str, args: dict[str, Any]) -> tuple[str, bool]:
    """Execute one tool call; returns (output, is_error). Errors go back to the model."""
    try:
        if name == "run_shell":
            return run_shell(str(args["command"]))
        if name == "read_file":
            return truncate(workspace_path(str(args["path"])).read_text()), False
        if name == "write_file":
            path = workspace_path(str(args["path"]))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(args["content"]))
            return f"wrote {len(str(args['content']))} characters to {args['path']}", False
        if name == "edit_file":
            path = workspace_path(str(args["path"]))
            text = path.read_text()
            if text.count(str(args["old"])) != 1:
                return "`old` must occur exactly once in the file", True
            path.write_text(text.replace(str(args["old"]), str(args["new"]), 1))
            return f"edited {args['path']}", False
    except (OSError, ValueError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}", True
    return f"unknown tool {name!r}", True


def run_setup(script: str) -> int:
    emit({"type": "setup_started"})
    proc = subprocess.run(
        ["/bin/sh", "-c", script],
        cwd=WORKSPACE,
        capture_output=True,
        text=True,
        env=tool_env(),
        check=False,
    )
    emit(
        {
            "type": "setup_finished",
            "exit_code": proc.returncode,
            "output": truncate(proc.stdout + proc.stderr),
        }
    )
    return proc.returncode


def assistant_content(blocks: list[Any]) -> list[dict[str, Any]]:
    """Echo the model's turn back in request form (only the fields the API accepts)."""
    content: list[dict[str, Any]] = []
    for block in blocks:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    return content


def agent_loop(spec: RunSpec, client: anthropic.Anthropic) -> Event:
    """Talk to the model until it reports; return the final `result` event."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": spec.prompt}]
    reminded = False
    spent = 0
    for _ in range(spec.max_turns):
        response = create_message(
            client,
            model=spec.model,
            max_tokens=turn_max_tokens(spec, spent),
            system=SYSTEM_PROMPT,
            tools=TOOLS,
            messages=messages,
        )
        # No usage line: the host's gateway counted this call (its `model_call` event).
        spent += response.usage.input_tokens + response.usage.output_tokens
        messages.append({"role": "assistant", "content": assistant_content(response.content)})
        if spec.max_tokens is not None and spent >= spec.max_tokens:
            return budget_spent(spec.max_tokens, spent, response.content)
        final, results = run_turn(response.content)
        if final is not None:
            return final
        if results:
            messages.append({"role": "user", "content": results})
        elif not reminded:
            reminded = True
            messages.append({"role": "user", "content": "Call report_result to finish."})
        else:
            return {"type": "result", "kind": "no_report",
                    "summary": "the agent stopped without calling report_result"}
    return {"type": "result", "kind": "turn_limit",
            "summary": f"turn limit of {spec.max_turns} reached without a self-report"}


def turn_max_tokens(spec: RunSpec, spent: int) -> int:
    """Output tokens one call may use: never more than what is left of the run's budget,
    so the last call overshoots it by its input only."""
    if spec.max_tokens is None:
        return spec.max_tokens_per_turn
    return max(1, min(spec.max_tokens_per_turn, spec.max_tokens - spent))


def run_turn(blocks: list[Any]) -> tuple[Event | None, list[dict[str, Any]]]:
    """Show the model's turn and run its tool calls; returns the final `result` event
    if it reported, else the tool results to send back."""
    results: list[dict[str, Any]] = []
    for block in blocks:
        if block.type == "text":
            emit({"type": "assistant_text", "text": block.text})
        elif block.type == "tool_use":
            args = dict(block.input) if isinstance(block.input, dict) else {}
            emit({"type": "tool_call", "id": block.id, "name": block.name, "input": args})
            if block.name == "report_result":
                return report_event(args), results
            output, is_error = run_tool(block.name, args)
            emit({"type": "tool_output", "id": block.id, "output": output,
                  "is_error": is_error})
            results.append({"type": "tool_result", "tool_use_id": block.id,
                            "content": output, "is_error": is_error})
    return None, results


def report_event(args: dict[str, Any]) -> Event:
    outcome = "success" if args.get("outcome") == "success" else "failure"
    return {"type": "result", "kind": "report", "outcome": outcome,
            "summary": str(args.get("summary", ""))}


def budget_spent(max_tokens: int, spent: int, blocks: list[Any]) -> Event:
    """The budget is reached: no further call and no tool runs. A report in this last
    turn still counts (it costs nothing more); anything else ends with `token_budget`."""
    for block in blocks:
        if block.type == "text":
            emit({"type": "assistant_text", "text": block.text})
        elif block.type == "tool_use" and block.name == "report_result":
            args = dict(block.input) if isinstance(block.input, dict) else {}
            emit({"type": "tool_call", "id": block.id, "name": block.name, "input": args})
            return report_event(args)
    return {"type": "result", "kind": "token_budget",
            "summary": f"token budget exhausted ({spent} of {max_tokens} tokens)"}


def create_message(client: anthropic.Anthropic, **request: Any) -> Any:
    """One model call; while the gateway cannot be reached at all (the bot restarting),
    asked again each second for up to GATEWAY_RETURN_SECONDS. A timeout is not retried
    here: that call reached the gateway, which may have forwarded it."""
    deadline = time.monotonic() + GATEWAY_RETURN_SECONDS
    while True:
        try:
            return client.messages.create(**request)
        except anthropic.APITimeoutError:
            raise
        except anthropic.APIConnectionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def api_error_result(exc: anthropic.APIError) -> Event:
    """The API's HTTP status as data (None: it never answered), its words for people."""
    code = getattr(exc, "status_code", None)
    return api_error_event(f"Anthropic API error: {type(exc).__name__}: {exc}",
                           code if isinstance(code, int) else None)


def make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): /proc/1/{environ,fd,mem...} become root's, out of reach
    of the tools (which run as the same uid; a child's exec makes it dumpable again)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(errno)}")


def scrub_environ(names: tuple[str, ...] = TOKEN_ENV) -> None:
    """Blank the values of `names` in the environment block the process started with:
    that block is what /proc/1/environ shows, while `os.environ` (which the SDK reads)
    is Python's own copy. Where a runtime does not hide a non-dumpable process's /proc
    files from its uid (gVisor), this still keeps the run token from the tools."""
    libc = ctypes.CDLL(None)
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    prefixes = tuple(f"{name}=".encode() for name in names)
    index = 0
    while environ[index]:
        address = environ[index]
        entry = ctypes.string_at(address)
        for prefix in prefixes:
            if entry.startswith(prefix):
                ctypes.memset(address + len(prefix), 0, len(entry) - len(prefix))
        index += 1


def main() -> int:
    make_undumpable()
    scrub_environ()
    http_client = None
    if os.environ.get(WARM_ENV):  # a warm container: the run comes later, as a file
        http_client = warm.preload(TOOLS)
        spec, os.environ["ANTHROPIC_API_KEY"] = warm.wait_for_run()
    else:
        spec = RunSpec.from_json(os.environ[SPEC_ENV])
    forwarder.start()  # before the setup script: it may need the proxy
    emit({"type": "started", "run_id": spec.run_id, "model": spec.model,
          "engine": spec.engine})
    if spec.setup_script.strip():
        code = run_setup(spec.setup_script)
        if code != 0:
            emit({"type": "result", "kind": "setup_failed", "exit_code": code,
                  "summary": f"setup script exited with code {code}"})
            return 3
    final = (claude_code.run(spec, emit) if spec.engine == Engine.CLAUDE_CODE
             else builtin(spec, http_client))
    emit(final)
    return 0 if final.get("kind") == "report" else 2


def builtin(spec: RunSpec, http_client: anthropic.DefaultHttpxClient | None = None) -> Event:
    """The built-in agent's run: its loop against the gateway; the final `result`.
    `http_client`: a warm container's, already made (`runner.inside.warm`)."""
    client = anthropic.Anthropic(max_retries=2, http_client=http_client)
    try:
        return agent_loop(spec, client)
    except anthropic.APIError as exc:
        return api_error_result(exc)


if __name__ == "__main__":
    sys.exit(main())
