"""A run's writes while its container runs, kept through a database outage.

The container goes on whether or not the database answers: an event or the container id
that the database could not take (PostgreSQL restarting, SQLite locked) is held in
memory and written, in order, with the next one; the verdict is written by
`record_until_done`, which waits the outage out with backoff. So a run that was running
when the database went away is recorded once it is back, and nothing of it is lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from bot.core.backoff import Backoff
from bot.errors import DatabaseProblem, DatabaseUnavailable
from runner.contract import Event

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunWrites(Protocol):
    def record_event(self, run_id: int, seq: int, event: Event) -> None: ...
    def record_container(self, run_id: int, container_id: str) -> None: ...


class RunRecorder:
    """Thread-safe: the container's reader thread and the gateway's loop both emit."""

    def __init__(self, writes: RunWrites, run_id: int) -> None:
        self.writes = writes
        self.run_id = run_id
        self._events: list[tuple[int, Event]] = []
        self._container: str | None = None
        self._lock = threading.Lock()
        self._problem = DatabaseProblem.UNREACHABLE  # the last outage seen

    def event(self, seq: int, event: Event) -> None:
        with self._lock:
            self._events.append((seq, event))
            self._write_held()

    def started(self, container_id: str) -> None:
        with self._lock:
            self._container = container_id
            self._write_held()

    def flush(self) -> None:
        """Write what is held; `DatabaseUnavailable` if the database still refuses."""
        with self._lock:
            if not self._write_held():
                raise DatabaseUnavailable(self._problem)

    @property
    def held(self) -> int:
        return len(self._events) + (self._container is not None)

    def _write_held(self) -> bool:
        try:
            if self._container is not None:
                self.writes.record_container(self.run_id, self._container)
                self._container = None
            while self._events:
                seq, event = self._events[0]
                self.writes.record_event(self.run_id, seq, event)
                self._events.pop(0)
        except DatabaseUnavailable as exc:
            if self.held == 1:
                log.warning("run %s: %s; its events are held until it is back",
                            self.run_id, exc)
            self._problem = exc.problem
            return False
        return True


async def record_until_done(write: Callable[[], T], what: str,
                            giving_up: Callable[[], bool]) -> T:
    """`write()` in a thread, again after each `DatabaseUnavailable` (backoff up to 10s),
    until it succeeds or `giving_up()` (the bot is stopping: the next start reconciles)."""
    backoff = Backoff(base=0.5, most=10.0)
    while True:
        try:
            return await asyncio.to_thread(write)
        except DatabaseUnavailable as exc:
            if giving_up():
                raise
            wait = backoff.failed(time.monotonic())
            log.warning("could not record %s (%s): trying again in %.1fs", what, exc, wait)
            await asyncio.sleep(wait)
