"""A run's event log as readable lines, cut to fit where it is shown. Pure.

Two cuts, each said where it happens: an event's text longer than `STORED_TEXT_LIMIT`
is cut before storage (the agent already caps a tool's output at 16,000 characters;
this bounds stray output lines); a line longer than `LINE_LIMIT` is cut when shown
in Slack (`routines logs RUN_ID` prints what was stored).
"""

from __future__ import annotations

import json
from typing import Any

from runner.contract import Event
from runner.egress_policy import EGRESS_EVENT

LINE_LIMIT = 1500
STORED_TEXT_LIMIT = 64_000


def clip_event(event: Event, limit: int = STORED_TEXT_LIMIT) -> Event:
    """The event with every over-long string cut, and a note of how much was cut."""
    return {key: _clip(value, limit) for key, value in event.items()}


def _clip(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"\n[... {len(value) - limit} more characters not stored]"
    if isinstance(value, dict):
        return {key: _clip(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_clip(item, limit) for item in value]
    return value


def log_lines(events: list[Event], limit: int | None = LINE_LIMIT) -> list[str]:
    """One readable line per event, each cut at `limit` characters with a note."""
    return [_line(event, limit) for event in events]


def _line(event: Event, limit: int | None) -> str:
    kind = event.get("type")
    if kind == "tool_call":
        text = f"→ {event.get('name')} {json.dumps(event.get('input', {}))}"
    elif kind == "tool_output":
        flag = " (error)" if event.get("is_error") else ""
        text = f"← output{flag}: {event.get('output', '')}"
    elif kind == "assistant_text":
        text = f"agent: {event.get('text', '')}"
    elif kind == "usage":
        text = f"usage: {event.get('input_tokens', 0)} in / {event.get('output_tokens', 0)} out"
    elif kind == "result":
        outcome = event.get("outcome", "")
        text = f"result ({event.get('kind')}): {outcome} {event.get('summary', '')}"
    elif kind == "setup_finished":
        text = f"setup exited {event.get('exit_code')}: {event.get('output', '')}"
    elif kind == EGRESS_EVENT and event.get("source") == "host":
        text = _egress_line(event)
    else:
        rest = {k: v for k, v in event.items() if k not in {"type", "ts"}}
        text = f"{kind}: {json.dumps(rest)}" if rest else str(kind)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f" [... {len(text) - limit} more characters cut]"
    return text


def _egress_line(event: Event) -> str:
    where = f"{event.get('method')} {event.get('host')}:{event.get('port')}"
    if event.get("allowed") is False:
        address = f" ({event.get('address')})" if event.get("address") else ""
        return f"network: refused {where}{address}: {event.get('reason')}"
    outcome = event.get("error") or f"status {event.get('status')}"
    return (f"network: {where} -> {event.get('address')}: {outcome}, "
            f"{event.get('bytes_sent', 0)} bytes out / {event.get('bytes_received', 0)} in")


def egress_refusals(events: list[Event]) -> int:
    """How many of the run's requests the egress proxy refused (its `egress` host events;
    a line from the container claiming that type is not one)."""
    return sum(1 for e in events if e.get("type") == EGRESS_EVENT
               and e.get("source") == "host" and e.get("allowed") is False)


def chunk(lines: list[str], max_chars: int, max_chunks: int) -> tuple[list[str], int]:
    """Pack lines into at most `max_chunks` texts of `max_chars`; return them and how many
    lines did not fit (the oldest are dropped first: the end of a log matters most)."""
    chunks: list[str] = []
    current = ""
    kept = 0
    for line in reversed(lines):
        piece = line[: max_chars - 1]
        if len(current) + len(piece) + 1 > max_chars:
            if len(chunks) + 1 == max_chunks:
                break
            chunks.append(current)
            current = ""
        current = piece + "\n" + current if current else piece
        kept += 1
    if current:
        chunks.append(current)
    return list(reversed(chunks)), len(lines) - kept


def diff_summary(diff: str, max_files: int = 30) -> str:
    """`git diff` text as a short list for an approval request: one line per file with
    its added and removed line counts, then how many more files."""
    counts: dict[str, list[int]] = {}  # file -> [added, removed], in diff order
    current: list[int] | None = None
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            current = counts.setdefault(line.split(" b/", 1)[-1], [0, 0])
        elif current is not None and line[:1] in "+-" and line[:3] not in {"+++", "---"}:
            current[0 if line[0] == "+" else 1] += 1
    if not counts:
        return "no changes"
    shown = [f"{name}  +{added} -{removed}"
             for name, (added, removed) in list(counts.items())[:max_files]]
    more = len(counts) - max_files
    return "\n".join([f"{len(counts)} file(s) changed", *shown]
                     + ([f"... and {more} more file(s)"] if more > 0 else []))
