"""The in-container agent's tools keep to the workspace and hide the agent's credentials."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx2
import pytest

from runner.contract import api_status_code
from runner.inside import agent


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(agent, "WORKSPACE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "a/../../x"])
def test_file_tools_refuse_paths_outside_the_workspace(workspace: Path, path: str) -> None:
    output, is_error = agent.run_tool("read_file", {"path": path})
    assert is_error and "outside the workspace" in output


def test_write_then_edit_then_read(workspace: Path) -> None:
    assert agent.run_tool("write_file", {"path": "d/f.txt", "content": "a b c"}) == (
        "wrote 5 characters to d/f.txt", False)
    assert agent.run_tool("edit_file", {"path": "d/f.txt", "old": "b", "new": "B"})[1] is False
    assert agent.run_tool("read_file", {"path": "d/f.txt"}) == ("a B c", False)


def test_shell_commands_do_not_see_the_api_key(
    workspace: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value")
    output, is_error = agent.run_tool("run_shell", {"command": "env"})
    assert not is_error and "sk-ant-secret-value" not in output


def test_long_output_is_truncated_with_a_note() -> None:
    text = agent.truncate("x" * 20_000, limit=100)
    assert text.startswith("x" * 100) and "truncated 19900 characters" in text


REQUEST = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")


@pytest.mark.parametrize(("error", "code", "summary"), [
    (anthropic.OverloadedError("Error code: 529 - overloaded", body=None,
                               response=httpx2.Response(529, request=REQUEST)), 529,
     "Anthropic API error: OverloadedError: Error code: 529 - overloaded"),
    (anthropic.AuthenticationError("Error code: 401 - invalid x-api-key", body=None,
                                   response=httpx2.Response(401, request=REQUEST)), 401,
     "Anthropic API error: AuthenticationError: Error code: 401 - invalid x-api-key"),
    (anthropic.APIConnectionError(request=REQUEST), None,
     "Anthropic API error: APIConnectionError: Connection error."),
])
def test_an_api_error_result_carries_the_http_status_as_data(
    error: anthropic.APIError, code: int | None, summary: str,
) -> None:
    event = agent.api_error_result(error)
    assert event == {"type": "result", "kind": "api_error", "status_code": code,
                     "summary": summary}
    assert api_status_code(json.loads(json.dumps(event))) == code  # as the host reads it
