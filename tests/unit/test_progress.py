"""The live message's figures from a run's events: the step in plain words, tokens and
cost from the gateway's `model_call` events only, refusals from the proxy's only, and
the no-activity notice once the run is silent for the threshold."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.core.pricing import PriceTable
from bot.core.progress import STARTING, WAITING, Progress, idle_text, step_of
from bot.doors.slack.messages import Messages
from tests.support.block_kit import check_blocks

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PRICES = PriceTable.default()


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": "t1", "name": name, "input": args}


@pytest.mark.parametrize(("event", "step"), [
    (call("run_shell", command="pytest -q"), "running `pytest -q`"),
    (call("edit_file", path="src/app.py", old="a", new="b"), "editing `src/app.py`"),
    (call("write_file", path="src/new.py", content=""), "editing `src/new.py`"),
    (call("read_file", path="README.md"), "reading `README.md`"),
    (call("report_result", outcome="success", summary="s"), "reporting the result"),
    (call("mystery"), "using `mystery`"),
    (call("run_shell", command="echo `id`\n  && ls"), "running `echo 'id' && ls`"),
    ({"type": "tool_output", "id": "t1", "output": "ok"}, WAITING),
    ({"type": "started", "run_id": 1}, WAITING),
    ({"type": "setup_started"}, "running the setup script"),
    ({"type": "setup_finished", "exit_code": 0}, WAITING),
    ({"type": "result", "kind": "report"}, "finishing"),
    ({"type": "assistant_text", "text": "thinking"}, None),
    ({"type": "model_call", "source": "host", "input_tokens": 5}, None),
    ({"type": "tool_call", "name": "run_shell", "input": "not a dict"}, "running `?`"),
])
def test_the_step_in_plain_words(event: dict[str, Any], step: str | None) -> None:
    assert step_of(event) == step


def test_a_long_command_is_cut() -> None:
    step = step_of(call("run_shell", command="x" * 500))
    assert step is not None and len(step) < 100 and step.endswith("…`")


def test_tokens_cost_and_refusals_come_from_host_events_only() -> None:
    progress = Progress(3, "nightly", "claude-sonnet-4-5", T0, T0)
    events = [
        {"type": "started", "run_id": 3},
        {"type": "model_call", "source": "host", "input_tokens": 1000, "output_tokens": 200},
        call("run_shell", command="make test"),
        {"type": "egress", "source": "host", "allowed": False, "host": "evil.test"},
        {"type": "egress", "source": "host", "allowed": True, "host": "pypi.org"},
        {"type": "egress", "allowed": False},  # a container line: not the proxy's
        {"type": "model_call", "input_tokens": 10**9},  # likewise
        {"type": "model_call", "source": "host", "input_tokens": "x", "output_tokens": 50},
    ]
    for number, event in enumerate(events):
        progress = progress.after(event, T0 + timedelta(seconds=number))
    assert (progress.input_tokens, progress.output_tokens, progress.refusals) == (1000, 250, 1)
    assert progress.step == "running `make test`"
    assert progress.steps == (WAITING, "running `make test`")
    snap = progress.snapshot(T0 + timedelta(seconds=90), PRICES, idle_after_seconds=300)
    assert snap.elapsed_seconds == 90
    assert snap.cost_usd == pytest.approx(PRICES.cost_usd("claude-sonnet-4-5", 1000, 250))
    assert snap.idle == ""


def test_silence_past_the_threshold_is_shown() -> None:
    progress = Progress(3, "nightly", "m", T0, T0).after(call("run_shell", command="sleep"), T0)
    assert progress.snapshot(T0 + timedelta(seconds=299), PRICES, 300).idle == ""
    assert progress.snapshot(T0 + timedelta(seconds=300), PRICES, 300).idle == (
        "no activity for 5 min")
    assert idle_text(42.9) == "no activity for 42s"


def test_the_live_message_fits_slack_and_never_reads_as_a_result() -> None:
    progress = Progress(7, "night*ly <b>", "m", T0, T0, step=STARTING, refusals=2)
    for idle in (10.0, 10_000.0):
        snap = progress.snapshot(T0 + timedelta(seconds=601), PRICES, idle)
        message = Messages().render("run_progress.json.j2", progress=progress, snap=snap)
        check_blocks(message)
        assert not message["text"].startswith("night*ly <b> run #7: ")  # a result's text
        shown = json.dumps(message["blocks"])
        assert "elapsed 10m 1s" in shown and "2 requests refused" in shown
        assert "&lt;b&gt;" in shown
        assert ("no activity for 10 min" in shown) == (idle == 10.0)
