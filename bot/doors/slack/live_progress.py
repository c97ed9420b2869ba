"""Every running run's live message: posted when the run starts, updated in place as its
events come, left for the Announcer to turn into the result (one message per run, whose
thread holds its log, retries and approvals).

One task sends for all runs, one call at a time, so the whole process stays within
Slack's rate limits however many runs there are: at most `updates_per_second` calls
together, at least `update_seconds` between two updates of one run (events in between
are coalesced into the next one), and none at all until a 429's `Retry-After` has
passed. slack_sdk's default retry handlers only retry connection errors, so a 429
reaches here as a `SlackApiError` and is honoured here. A run silent for
`idle_seconds` is shown as "no activity for N min" on the same message.

Events are handed over from the threads that follow containers (`run_event` is
thread-safe); losing an update costs nothing, the result is posted anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.pricing import PriceTable
from bot.core.progress import Progress
from bot.doors.slack.messages import Messages
from bot.services import Services
from bot.services.views import RunView
from runner.contract import Event

log = logging.getLogger(__name__)
DEFAULT_RETRY_AFTER = 30.0  # a 429 without a readable Retry-After
MAX_FAILURES = 3  # refused updates in a row before a run's live message is left alone


@dataclass
class _Live:
    """One run's message and what was last sent of it."""

    progress: Progress
    channel: str
    ts: str | None = None  # None: not posted yet
    version: int = 0  # bumped by every event
    sent_version: int = -1
    sent_idle: str = ""
    sent_at: float = float("-inf")  # monotonic time of the last call for this run
    failures: int = 0  # calls in a row Slack refused (a 429 is not one)
    given_up: bool = False  # not posted, or refused too often: the result says it all
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class BoardTimings:
    update_seconds: float = 5.0
    updates_per_second: float = 0.8
    idle_seconds: float = 300.0


class ProgressBoard:
    def __init__(self, client: AsyncWebClient, messages: Messages, services: Services,
                 prices: PriceTable, timings: BoardTimings) -> None:
        self.client = client
        self.messages = messages
        self.services = services
        self.prices = prices
        self.timings = timings
        self._live: dict[int, _Live] = {}
        self._wake = asyncio.Event()
        self._paused_until = 0.0  # monotonic; a 429's Retry-After
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="progress-board")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def run_started(self, view: RunView) -> None:
        """On the loop: the run is running; its message is posted at the next turn (or,
        adopted after a restart, the message the previous process posted is reused)."""
        run = view.run
        assert run.id is not None
        now = datetime.now(UTC)
        started = run.started_at or now
        started = started if started.tzinfo else started.replace(tzinfo=UTC)
        progress = Progress(run.id, view.routine.name, view.routine.model, started, now)
        self._live[run.id] = _Live(progress, run.announce_channel or view.routine.channel_id,
                                   run.announce_ts)
        self._wake.set()

    def run_event(self, run_id: int, event: Event) -> None:
        """Thread-safe: one event of a running run."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_event, run_id, event, datetime.now(UTC))

    def _on_event(self, run_id: int, event: Event, at: datetime) -> None:
        live = self._live.get(run_id)
        if live is None:
            return
        live.progress = live.progress.after(event, at)
        live.version += 1
        self._wake.set()

    async def rate_limit_over(self) -> None:
        """Returns once no 429's Retry-After is running: the result's update waits too."""
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def run_finished(self, run_id: int) -> None:
        """The run ended: no more updates; waits for a call in flight, so that the
        message's ts is recorded before the result is announced."""
        live = self._live.pop(run_id, None)
        if live is not None:
            async with live.lock:
                pass

    async def _run(self) -> None:
        tick = max(0.05, min(self.timings.update_seconds, self.timings.idle_seconds) / 2)
        spacing = 1.0 / max(self.timings.updates_per_second, 0.001)
        while True:
            now = time.monotonic()
            if now < self._paused_until:
                await asyncio.sleep(self._paused_until - now)
                continue
            due = self._next_due(now)
            if due is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), tick)
                continue
            try:
                await self._send(*due)
            except Exception:  # one bad message must not stop every run's updates
                log.exception("could not update the live message of run %s",
                              due[1].progress.run_id)
            await asyncio.sleep(spacing)

    def _next_due(self, now: float) -> tuple[int, _Live] | None:
        """The run most overdue for a call: unposted messages first, then changed ones
        whose last update is at least `update_seconds` old."""
        wall = datetime.now(UTC)
        best: tuple[float, int, _Live] | None = None
        for run_id, live in self._live.items():
            if live.given_up:
                continue
            idle = live.progress.snapshot(wall, self.prices, self.timings.idle_seconds).idle
            if live.ts is None:
                rank = float("-inf")
            elif now - live.sent_at < self.timings.update_seconds:
                continue
            elif live.version != live.sent_version or idle != live.sent_idle:
                rank = live.sent_at
            else:
                continue
            if best is None or rank < best[0]:
                best = (rank, run_id, live)
        return None if best is None else best[1:]

    async def _send(self, run_id: int, live: _Live) -> None:
        async with live.lock:
            if self._live.get(run_id) is not live:
                return  # finished meanwhile: the Announcer has it
            version = live.version
            snap = live.progress.snapshot(datetime.now(UTC), self.prices,
                                          self.timings.idle_seconds)
            message = self.messages.render("run_progress.json.j2", progress=live.progress,
                                           snap=snap)
            live.sent_at = time.monotonic()
            try:
                if live.ts is None:
                    response = await self.client.chat_postMessage(channel=live.channel,
                                                                  **message)
                    live.channel = str(response.get("channel") or live.channel)
                    live.ts = str(response["ts"])
                    await asyncio.to_thread(self.services.runs.record_announcement, run_id,
                                            live.channel, live.ts)
                else:
                    await self.client.chat_update(channel=live.channel, ts=live.ts, **message)
            except SlackApiError as exc:
                if exc.response.status_code == 429:
                    self._paused_until = time.monotonic() + retry_after(exc)
                    log.warning("Slack rate-limited the live messages for %.0fs",
                                self._paused_until - time.monotonic())
                    return
                self._refused(live, exc)
                return
            except Exception as exc:  # Slack unreachable: the same
                self._refused(live, exc)
                return
            live.failures = 0
            live.sent_version, live.sent_idle = version, snap.idle


    @staticmethod
    def _refused(live: _Live, exc: Exception) -> None:
        """A refused call: an unposted message is not tried again, an update three times."""
        live.failures += 1
        live.sent_version = live.version  # retried at the next event, not at once
        live.given_up = live.ts is None or live.failures >= MAX_FAILURES
        log.warning("could not %s the live message of run %s (%s)%s",
                    "update" if live.ts else "post", live.progress.run_id, exc,
                    ": giving up on it" if live.given_up else "")


def retry_after(exc: SlackApiError) -> float:
    """The seconds a 429 asks to wait (`Retry-After`, any header case)."""
    headers = {str(k).lower(): v for k, v in (exc.response.headers or {}).items()}
    raw = headers.get("retry-after")
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    try:
        return max(0.0, float(str(raw)))
    except ValueError:
        return DEFAULT_RETRY_AFTER
