"""How the model gateway reads usage and the self-report from an answer as it passes:
pure parsing, fed the Messages API's own event sequence in arbitrary chunks."""

from __future__ import annotations

import json

import pytest

from runner.contract import Report
from runner.host.gateway import SseMeter, json_call
from tests.standins.anthropic_api import report, stream_events, text


def message(*blocks: dict[str, object], usage: tuple[int, int] = (1200, 80)) -> dict[str, object]:
    content = [dict(b, id=f"toolu_{i}") if b["type"] == "tool_use" else b
               for i, b in enumerate(blocks)]
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": content, "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}


def wire(events: list[tuple[str, dict[str, object]]]) -> bytes:
    return b"".join(f"event: {n}\r\ndata: {json.dumps(d)}\r\n\r\n".encode() for n, d in events)


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_usage_and_report_are_read_whatever_the_chunks(size: int) -> None:
    raw = wire(stream_events(message(text("Done, reporting."),
                                     report("success", 'all "green" \u2713'))))
    meter = SseMeter()
    for start in range(0, len(raw), size):
        meter.feed(raw[start:start + size])
    call = meter.call("/v1/messages", "m", 200)
    assert (call.input_tokens, call.output_tokens) == (1200, 80)
    assert call.report == Report("success", 'all "green" \u2713')


def test_a_final_input_count_in_message_delta_replaces_the_start() -> None:
    events = stream_events(message(text("hi"), usage=(10, 5)))
    name, delta = events[-2]
    events[-2] = (name, dict(delta, usage={"input_tokens": 12, "output_tokens": 5}))
    meter = SseMeter()
    meter.feed(wire(events))
    assert (meter.input_tokens, meter.output_tokens) == (12, 5)
    assert meter.report is None


def test_only_the_first_report_counts_and_junk_counts_nothing() -> None:
    meter = SseMeter()
    meter.feed(b"data: not json\n\ndata: [1]\n\n")
    meter.feed(wire(stream_events(message(report("failure", "first"),
                                          report("success", "second")))))
    assert meter.report == Report("failure", "first")


def test_a_json_answer_gives_its_usage_and_report() -> None:
    body = json.dumps(message(text("x"), report("success", "ok"), usage=(3, 4))).encode()
    call = json_call("/v1/messages", "m", 200, body)
    assert (call.input_tokens, call.output_tokens, call.report) == (3, 4, Report("success", "ok"))
    assert json_call("/v1/messages", "m", 502, b"<html>").input_tokens == 0
