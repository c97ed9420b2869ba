"""The agent's tool output, pure: a long output is cut to the limit with a note of how much."""

from __future__ import annotations

from runner.inside import agent


def test_long_output_is_truncated_with_a_note() -> None:
    text = agent.truncate("x" * 20_000, limit=100)
    assert text.startswith("x" * 100) and "truncated 19900 characters" in text
