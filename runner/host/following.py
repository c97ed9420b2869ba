"""Following a run's container: its log as one sequence of events, when it started, and
what the engine says when something goes wrong (`runner.host.sandbox` follows with these)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions

from runner.contract import Event
from runner.host import pool

EventSink = Callable[[int, Event], None]


def chunks(stream: Any) -> Any:
    """The log stream's chunks, ending quietly when another thread closes the stream."""
    try:
        yield from stream
    except (OSError, ValueError, AttributeError, requests.exceptions.RequestException):
        return


def stderr_tail(container: Any) -> str:
    try:
        raw = container.logs(stdout=False, stderr=True, tail=20)
    except docker.errors.APIError:
        return ""
    return str(raw.decode("utf-8", errors="replace")).strip()


class RunLog:
    """The run's one sequence of events: the container's lines (the reader thread) and the
    host's own (the gateway's loop), numbered in arrival order."""

    def __init__(self, sink: EventSink, next_seq: int = 1) -> None:
        self._sink = sink
        self._next = next_seq
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            seq, self._next = self._next, self._next + 1
            self._sink(seq, event)


def engine_answers(container: Any) -> bool:
    try:
        return bool(container.client.ping())
    except (requests.exceptions.RequestException, docker.errors.DockerException):
        return False


def started_at(container: Any, root: Path, run_id: int) -> float:
    """When the run started, from the engine (so adoption keeps the same deadline); for a
    warm container, when it was given the run (`runner.host.pool`)."""
    assigned = pool.assigned_at(root, run_id)
    if assigned is not None:
        return assigned
    container.reload()
    raw = str(container.attrs.get("State", {}).get("StartedAt", ""))
    try:
        return datetime.fromisoformat(raw[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return time.time()
