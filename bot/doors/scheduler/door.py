"""The scheduler as a door: APScheduler's jobs (`bot.doors.scheduler.jobs.ScheduleRunner`)
call the services, exactly like the Slack and HTTP doors.

The database is the truth: at start-up the jobs are rebuilt from the saved schedules,
after one catch-up decision per routine for the fires missed while the bot was down; a
change made through this process applies at once (`ScheduleChanged`), and one made by
another process (`routines apply`, another bot) at the next resync, every
`sync_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from bot.core.backoff import Backoff
from bot.core.digest import Digest
from bot.core.schedule import Schedule
from bot.doors.scheduler.jobs import ROUTINES, ScheduleRunner
from bot.errors import DatabaseUnavailable, RoutinesError, SlackUnavailable
from bot.services import Services
from bot.services.events import DigestScheduleChanged, ScheduleChanged
from bot.services.views import MissedFires
from bot.store.tables import utcnow

log = logging.getLogger(__name__)
AnnounceMissed = Callable[[MissedFires], Awaitable[None]]
PostDigest = Callable[[Digest], Awaitable[None]]
DIGEST = "digest"  # the job kind of channel digests, beside routines
FIRE_ATTEMPTS = 3  # tries of a fire the database could not take
FIRE_RETRY_SECONDS = 1.0


class Scheduler:
    def __init__(self, services: Services, announce_missed: AnnounceMissed,
                 post_digest: PostDigest, grace_seconds: int,
                 sync_seconds: float = 30.0) -> None:
        self.services = services
        self.digests = services.digests
        self.announce_missed = announce_missed
        self.post_digest = post_digest
        self.grace_seconds = grace_seconds
        self.runner = ScheduleRunner(grace_seconds=grace_seconds)
        # Every routine due at one time is queued together (`ScheduleService.fired_all`).
        self.runner.register_group(ROUTINES, self._fire_all, missed=self._missed_all)
        self.runner.register(DIGEST, self._fire_digest)  # a late digest covers it all
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sync_seconds = sync_seconds
        self._known: dict[str, Schedule] = {}  # the routines' jobs as last set here
        self._sync: asyncio.Task[None] | None = None
        # Digests Slack could not take (down, 5xx, 429): sent again, covering their whole
        # period, once its Retry-After or the backoff is over (`_send_owed`).
        self._slack = Backoff()
        self._owed: set[str] = set()
        self._sending: set[str] = set()
        self._owed_task: asyncio.Task[None] | None = None
        self.owed_seconds = 1.0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        now = utcnow()
        for missed in await asyncio.to_thread(self.services.schedules.catch_up, now,
                                              self.grace_seconds):
            await self._announce(missed)
        self.runner.start()
        self._known = await asyncio.to_thread(self.services.schedules.all)
        for name, when in self._known.items():
            self.runner.set(name, when, after=now)
        await self._start_digests(now)
        self._sync = asyncio.create_task(self._resync_forever(), name="schedule-resync")
        self._owed_task = asyncio.create_task(self._send_owed_forever(), name="digests-owed")

    async def _send_owed_forever(self) -> None:
        while True:
            await asyncio.sleep(self.owed_seconds)
            for channel in sorted(self._owed):
                if not self._slack.ready(time.monotonic()):
                    break
                if await asyncio.to_thread(self.digests.subscription, channel) is None:
                    self._owed.discard(channel)  # unsubscribed meanwhile: nothing owed
                    continue
                await self.send_digest(channel)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sync_seconds)
            try:
                self.resync(await asyncio.to_thread(self.services.schedules.all))
            except Exception:
                log.exception("could not read the schedules")

    def resync(self, saved: dict[str, Schedule]) -> None:
        """Set the jobs whose schedule changed elsewhere, remove those gone; leave the
        others alone (setting a job again would move its next fire)."""
        for name in self._known.keys() - saved.keys():
            self._apply(name, None)
        for name, when in saved.items():
            if self._known.get(name) != when:
                self._apply(name, when)

    async def _start_digests(self, now: datetime) -> None:
        """One digest now for each channel whose digest fell due while the bot was down
        (covering the whole period: no burst), then the jobs, from the database."""
        for channel in await asyncio.to_thread(self.digests.owed, now):
            await self.send_digest(channel)
        for channel, when in (await asyncio.to_thread(self.digests.schedules)).items():
            self.runner.set(channel, when, after=now, kind=DIGEST)

    async def send_digest(self, channel_id: str) -> None:
        """Compose the channel's digest, post it, and start the next period where it ended
        (not before it was posted). While Slack is down the digest is owed, and sent once
        it is back, covering the whole period; one send per channel at a time."""
        if channel_id in self._sending:
            return
        if not self._slack.ready(time.monotonic()):
            self._owed.add(channel_id)
            return
        self._sending.add(channel_id)
        try:
            digest = await asyncio.to_thread(self.digests.compose, channel_id, utcnow())
            await self.post_digest(digest)
            self._slack.succeeded()
            self._owed.discard(channel_id)
            await asyncio.to_thread(self.digests.mark_sent, digest)
        except SlackUnavailable as exc:
            wait = self._slack.failed(time.monotonic(), exc.retry_after)
            self._owed.add(channel_id)
            log.warning("the digest of %s waits for Slack (%s): next try in %.0fs",
                        channel_id, exc, wait)
        except Exception:
            log.exception("could not send the digest of %s", channel_id)
        finally:
            self._sending.discard(channel_id)

    def stop(self) -> None:
        for task in (self._sync, self._owed_task):
            if task is not None:
                task.cancel()
        self.runner.shutdown()

    def schedule_changed(self, event: ScheduleChanged) -> None:
        """Thread-safe: published from whichever thread saved the schedule."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply, event.routine, event.schedule)

    def _apply(self, name: str, when: Schedule | None) -> None:
        if when is None:
            self.runner.remove(name)
            self._known.pop(name, None)
        else:
            self.runner.set(name, when)
            self._known[name] = when

    def digest_schedule_changed(self, event: DigestScheduleChanged) -> None:
        """Thread-safe, as `schedule_changed`."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply_digest, event.channel, event.schedule)

    def _apply_digest(self, channel_id: str, when: Schedule | None) -> None:
        if when is None:
            self.runner.remove(channel_id, kind=DIGEST)
        else:
            self.runner.set(channel_id, when, kind=DIGEST)

    async def _fire_digest(self, channel_id: str, scheduled_for: datetime) -> None:
        subscribed = await asyncio.to_thread(self.digests.subscription, channel_id)
        if subscribed is not None:  # not if unsubscribed as it fired
            await self.send_digest(channel_id)

    async def _fire_all(self, names: tuple[str, ...], scheduled_for: datetime) -> None:
        """Queue every routine due at this time; the ones the database could not take
        (locked, out of reach) are tried again a few times: the time is their runs'
        reference, so a second try never queues twice."""
        for attempt in range(1, FIRE_ATTEMPTS + 1):
            try:
                fires = await asyncio.to_thread(self.services.schedules.fired_all, names,
                                                scheduled_for)
            except RoutinesError as exc:
                log.warning("scheduled runs of %d routine(s) at %s not queued: %s",
                            len(names), scheduled_for, exc)
                return
            names = tuple(name for name, refusal in fires.refused.items()
                          if isinstance(refusal, DatabaseUnavailable))
            for name, refusal in fires.refused.items():  # rate limited, deleted...: said
                if name not in names or attempt == FIRE_ATTEMPTS:
                    log.warning("scheduled run of %s at %s not queued: %s", name,
                                scheduled_for, refusal)
            if not names or attempt == FIRE_ATTEMPTS:
                return
            await asyncio.sleep(FIRE_RETRY_SECONDS)

    async def _missed_all(self, names: tuple[str, ...], scheduled_for: datetime) -> None:
        for missed in await asyncio.to_thread(self.services.schedules.missed_all, names,
                                              (scheduled_for,), "the scheduler was late"):
            await self._announce(missed)

    async def _announce(self, missed: MissedFires) -> None:
        try:
            await self.announce_missed(missed)
        except Exception:
            log.exception("could not announce missed fires of %s", missed.routine.name)
