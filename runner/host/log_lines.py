"""The container's log as lines, each of bounded size.

The container's stdout is the agent's, and the agent is not trusted: a line with no end
(a tool that prints a huge file, on purpose or not) must not grow the host's buffer
without bound. A line longer than `MAX_LINE_BYTES` is cut there, a marker says how much
was dropped, and the rest of it is dropped as it arrives, never held. The cut line is no
longer JSON, so it is kept as an `output` event (`runner.contract.parse_event_line`).
The agent's own events are far smaller (it truncates tool output).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

MAX_LINE_BYTES = 1024**2


def capped_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The complete (newline-ended) lines of `chunks`, without their newline, none longer
    than `max_line` plus the marker. An unfinished last line is not a line (the stream
    ended or was closed mid-write) and is not yielded."""
    line = bytearray()
    dropped = 0
    for chunk in chunks:
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            room = max_line - len(line)
            line += piece[:room]
            dropped += max(0, len(piece) - room)
            if end < 0:
                break
            yield bytes(line) + (f" [... {dropped} more bytes dropped]".encode()
                                 if dropped else b"")
            line.clear()
            dropped = 0
            start = end + 1
