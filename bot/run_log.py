"""A run's event log as readable lines, cut to fit where it is shown. Pure."""

from __future__ import annotations

import json

from runner.contract import Event

LINE_LIMIT = 600


def log_lines(events: list[Event]) -> list[str]:
    return [_line(event) for event in events]


def _line(event: Event) -> str:
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
    else:
        rest = {k: v for k, v in event.items() if k not in {"type", "ts"}}
        text = f"{kind}: {json.dumps(rest)}" if rest else str(kind)
    if len(text) > LINE_LIMIT:
        text = text[:LINE_LIMIT] + f" [... {len(text) - LINE_LIMIT} more characters]"
    return text


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
