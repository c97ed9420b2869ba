"""Run specs as the host sends them to the sandbox, for the tests."""

from __future__ import annotations

from typing import Any

from runner.contract import RunSpec


def spec(run_id: int, prompt: str, repo_url: str, **overrides: Any) -> RunSpec:
    values: dict[str, Any] = dict(run_id=run_id, routine="nightly", prompt=prompt,
                                  repo_url=repo_url, branch="main", model="claude-test-1",
                                  timeout_seconds=60, max_turns=8)
    return RunSpec(**{**values, **overrides})
