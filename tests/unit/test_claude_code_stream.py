"""How Claude Code's stream-json lines become the run's events and its end a `result`:
the lines as the CLI (2.1.332) writes them, fed to the mapper."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner.contract import Event, RunSpec
from runner.inside.claude_code import REPORT_SCHEMA, StreamMapper, command, result_event


def mapped(*messages: dict[str, Any]) -> tuple[list[Event], StreamMapper]:
    events: list[Event] = []
    mapper = StreamMapper(events.append)
    for message in messages:
        mapper.line(json.dumps(message) + "\n")
    return events, mapper


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "assistant", "message": {"role": "assistant", "content": list(blocks)}}


def test_tool_calls_outputs_and_text_read_as_the_builtin_agents() -> None:
    events, _ = mapped(
        {"type": "system", "subtype": "init", "claude_code_version": "2.1.332",
         "model": "claude-x", "permissionMode": "bypassPermissions", "mcp_servers": [],
         "tools": ["Bash", "Edit"]},
        assistant({"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "On it."},
                  {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                   "input": {"command": "ls"}}),
        {"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
             "content": [{"type": "text", "text": "exit 2"}]}]}},
        {"type": "system", "subtype": "ui_invalidate"},
    )
    assert events == [
        {"type": "engine_started", "engine": "claude-code", "version": "2.1.332",
         "model": "claude-x", "permission_mode": "bypassPermissions", "mcp_servers": 0},
        {"type": "assistant_text", "text": "On it."},
        {"type": "tool_call", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
        {"type": "tool_output", "id": "toolu_1", "output": "exit 2", "is_error": True},
    ]


def test_a_stray_line_is_kept_as_output() -> None:
    events: list[Event] = []
    StreamMapper(events.append).line("not json\n")
    assert events == [{"type": "output", "text": "not json"}]


def test_a_structured_report_is_a_report() -> None:
    final = result_event({"type": "result", "subtype": "success", "num_turns": 3,
                          "structured_output": {"outcome": "success", "summary": "done"}})
    assert (final["kind"], final["outcome"], final["summary"]) == ("report", "success", "done")
    odd = result_event({"type": "result", "subtype": "success",
                        "structured_output": {"outcome": "yes", "summary": "hm"}})
    assert (odd["kind"], odd["outcome"]) == ("report", "failure")  # only an explicit success


def test_subtype_success_alone_is_no_report() -> None:
    final = result_event({"type": "result", "subtype": "success", "result": "All green!",
                          "structured_output": None, "num_turns": 2})
    assert (final["kind"], final["subtype"]) == ("no_report", "success")


@pytest.mark.parametrize(("subtype", "kind"), [
    ("error_max_turns", "turn_limit"), ("error_max_budget_usd", "token_budget"),
    ("error_during_execution", "no_report"),
    ("error_max_structured_output_retries", "no_report")])
def test_failing_subtypes_map_to_the_failure_kinds(subtype: str, kind: str) -> None:
    final = result_event({"type": "result", "subtype": subtype, "errors": ["it ended"]})
    assert (final["kind"], final["summary"]) == (kind, "it ended")


def test_an_api_error_carries_its_status() -> None:
    final = result_event({"type": "result", "subtype": "success", "is_error": True,
                          "api_error_status": 529, "result": "Overloaded"})
    assert (final["kind"], final["status_code"]) == ("api_error", 529)


def test_an_exit_without_a_result_is_no_report() -> None:
    _, mapper = mapped(assistant({"type": "text", "text": "bye"}))
    final = mapper.finish(137)
    assert (final["kind"], final["exit_code"]) == ("no_report", 137)
    assert final["summary"] == "Claude Code exited with code 137 without a result"


def spec(**overrides: Any) -> RunSpec:
    values: dict[str, Any] = dict(run_id=1, routine="r", prompt="Do it.", repo_url="/r",
                                  branch="main", model="claude-x", timeout_seconds=60,
                                  max_turns=7, engine="claude-code")
    return RunSpec(**{**values, **overrides})


def test_the_command_is_headless_with_the_routines_model_turns_and_report_schema() -> None:
    args = command(spec())
    assert args[:3] == ["claude", "-p", "Do it."]
    flag = {args[i]: args[i + 1] for i in range(3, len(args) - 1) if args[i].startswith("--")}
    assert flag["--output-format"] == "stream-json"
    assert (flag["--model"], flag["--max-turns"]) == ("claude-x", "7")
    assert json.loads(flag["--json-schema"]) == REPORT_SCHEMA
    assert "--verbose" in args and "--dangerously-skip-permissions" in args
    assert json.loads(flag["--settings"])["disableAllHooks"] is True
    assert "--strict-mcp-config" in args
    trusted = command(spec(repo_config="trusted"))
    assert "--settings" not in trusted and "--strict-mcp-config" not in trusted
