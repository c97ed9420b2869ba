"""The in-container agent's tools keep to the workspace and hide the agent's credentials
(run here on the host, in a temporary workspace with a real shell; no container)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_agent_blanks_the_token_in_its_environment_block_but_keeps_it_for_the_sdk(
) -> None:
    show = ("import os; from runner.inside.agent import scrub_environ; scrub_environ(); "
            "print(os.environ['ANTHROPIC_API_KEY']); "
            "print(open('/proc/self/environ', 'rb').read())")
    env = {**os.environ, "ANTHROPIC_API_KEY": "rt-run-token-value", "KEEP": "kept-value"}
    shown = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert shown[0] == "rt-run-token-value"  # what the SDK reads
    assert "rt-run-token-value" not in shown[1] and "kept-value" in shown[1]
