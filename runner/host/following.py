"""Following a run's container: its log as one sequence of events, when it started, waiting
for it to end (or to be killed, detached from, timed out, over budget), and what the engine
says when something goes wrong (`runner.host.sandbox` follows with these)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions

from runner.contract import Event, RunResult, RunSpec, parse_event_line
from runner.host import pool
from runner.host.gateway import GatewayRun
from runner.host.log_lines import capped_lines

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


class RunControl:
    """Lets the bot stop waiting for a run (`detach`) or end it (`kill`) from another thread."""

    def __init__(self) -> None:
        self.detached = threading.Event()
        self.kill_requested = threading.Event()

    def detach(self) -> None:
        self.detached.set()

    def kill(self) -> None:
        self.kill_requested.set()


def wait_for_end(spec: RunSpec, container: Any, control: RunControl, door: GatewayRun,
                 started: float, result: RunResult) -> bool:
    """Until the container exits, times out, is killed or over budget; True when the bot
    detached from it instead (it runs on, to be adopted). An engine that stops
    answering meanwhile (restarted) is waited for, and noted as an infrastructure
    fault when the agent never reported."""
    deadline = started + spec.timeout_seconds
    engine_lost = False
    while True:
        if control.detached.is_set():
            return True
        if control.kill_requested.is_set():
            result.killed = True
            break
        if door.budget_exceeded:  # the gateway refused a call: the agent went on
            break
        remaining = deadline - time.time()
        if remaining <= 0:
            result.timed_out = True
            break
        try:
            status = container.wait(timeout=min(1.0, remaining))
        except requests.exceptions.ReadTimeout:
            continue
        except requests.exceptions.ConnectionError:  # also how a read timeout may show
            if not engine_answers(container):  # restarted or stopped: wait for it
                engine_lost = True
                time.sleep(0.5)
            continue
        result.exit_code = int(status.get("StatusCode", -1))
        # Killed from outside while we waited (the bot kills containers directly).
        result.killed = control.kill_requested.is_set()
        break
    if engine_lost and door.report is None and not (result.killed or result.timed_out):
        # Not the agent's doing: the engine took the container down with it.
        result.infra_error = ("the Docker engine stopped during the run and the "
                              f"container with it (exit code {result.exit_code})")
    return False


def read_events(stream: Any, result: RunResult, log: RunLog, skip_events: int) -> None:
    """The container's lines, in order. They count nothing: only a `result` line is
    kept, as the container's own account of how it ended (it can only fail a run)."""
    seen = 0
    for line in capped_lines(chunks(stream)):  # no line can exhaust the host's memory
        if not line.strip():
            continue
        seen += 1
        event = parse_event_line(line.decode("utf-8", errors="replace"))
        if event.get("type") == "result":
            result.final = event
        if seen > skip_events:
            log.emit(event)
    result.events_seen = seen


def kill_quietly(container: Any) -> None:
    """Kill it if it still runs (an engine refusal is no error here)."""
    with contextlib.suppress(docker.errors.APIError):
        container.kill()
