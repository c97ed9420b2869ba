"""One small loop for every background sweep: it runs its step every `period` seconds,
and at once when woken from any thread. The claim loop, the approval desk and the App
Home each own one.

`min_gap` spaces the steps of a loop woken by every change: a burst of API triggers
wakes the App Home once per group commit, and a Home a second old is as good as one
refreshed fifty times in that second. A wake inside the gap is kept, not lost: the step
runs when the gap is over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from bot.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


class WakeLoop:
    def __init__(self, name: str, step: Callable[[], Awaitable[None]], period: float,
                 min_gap: float = 0.0) -> None:
        self.name = name
        self.step = step
        self.period = period
        self.min_gap = min_gap
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._forever(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop, again until it ends: on 3.11 a cancel landing as the period's
        timeout expires can come out of `asyncio.timeout` as a TimeoutError, which the loop
        takes for the end of its wait (a `routines worker` then never stopped on SIGTERM)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopped = True
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def wake(self) -> None:
        """Thread-safe: services publish from whichever thread did the work."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def wake_here(self) -> None:
        """From the loop's own thread."""
        self._wake.set()

    async def _forever(self) -> None:
        while not self._stopped:
            started = time.monotonic()
            try:
                await self.step()
            except DatabaseUnavailable as exc:  # an outage, not a bug: no traceback each round
                log.warning("%s: %s", self.name, exc)
            except Exception:  # the database or Slack hiccuped: the next round retries
                log.exception("%s: one round failed", self.name)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel that
            # stop() sends when it lands as the event fires, and stop() then hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period):
                    await self._wake.wait()
            gap = self.min_gap - (time.monotonic() - started)
            if self._wake.is_set() and gap > 0:
                await asyncio.sleep(gap)
            self._wake.clear()
