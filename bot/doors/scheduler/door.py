"""The scheduler as a door: APScheduler's jobs (`bot.doors.scheduler.jobs.ScheduleRunner`)
call the services, exactly like the Slack and HTTP doors.

The database is the truth: at start-up the jobs are rebuilt from the saved schedules,
after one catch-up decision per routine for the fires missed while the bot was down; a
change made through this process applies at once (`ScheduleChanged`), and one made by
another process (`routines apply`, another bot) at the next resync, every
`sync_seconds`.

One scheduler across every `serve` process of a database (docs/scale-out.md): each tries
every third of `lease_seconds` to take or renew the `scheduler` lease under its worker id,
and only the holder has jobs. Taking it (at start, or over from a holder that died) is
what start-up was: the catch-up, then the jobs. A holder that could not renew in time stops
at once: every fire, digest and missed-fire notice checks the lease first, and the jobs go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from bot.core.backoff import Backoff
from bot.core.digest import Digest
from bot.core.lease import SCHEDULER, Holding, LeaseStep, lease_step
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
                 sync_seconds: float = 30.0, holder: str = "local",
                 lease_seconds: float = 30.0) -> None:
        self.services = services
        self.digests = services.digests
        self.announce_missed = announce_missed
        self.post_digest = post_digest
        self.grace_seconds = grace_seconds
        self.runner = self._new_runner()
        self.holder = holder  # this process's worker id, on the lease while it holds it
        self.lease_seconds = lease_seconds
        self._holding = Holding()  # until when this process holds the lease
        self._leading = False  # whether the jobs are set here
        self._lease_task: asyncio.Task[None] | None = None
        # Taking the lease runs the catch-up beside the renewals (it may outlast a lease).
        self._lead_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sync_seconds = sync_seconds
        self._known: dict[str, Schedule] = {}  # the routines' jobs as last set here
        self._known_digests: dict[str, Schedule] = {}  # and the channels' digest jobs
        self._sync: asyncio.Task[None] | None = None
        # Digests Slack could not take (down, 5xx, 429): sent again, covering their whole
        # period, once its Retry-After or the backoff is over (`_send_owed`).
        self._slack = Backoff()
        self._owed: set[str] = set()
        self._sending: set[str] = set()
        self._owed_task: asyncio.Task[None] | None = None
        self.owed_seconds = 1.0

    def _new_runner(self) -> ScheduleRunner:
        runner = ScheduleRunner(grace_seconds=self.grace_seconds)
        # Every routine due at one time is queued together (`ScheduleService.fired_all`).
        runner.register_group(ROUTINES, self._fire_all, missed=self._missed_all)
        runner.register(DIGEST, self._fire_digest)  # a late digest covers it all
        return runner

    async def start(self) -> None:
        """Try the lease once (the holder leads before the bot says it is ready), then go
        on trying in the background."""
        self._loop = asyncio.get_running_loop()
        await self._try_lease()
        if self._lead_task is not None:
            await self._lead_task
        self._lease_task = asyncio.create_task(self._lease_forever(), name="scheduler-lease")
        self._owed_task = asyncio.create_task(self._send_owed_forever(), name="digests-owed")

    def leading(self) -> bool:
        """Whether this process is the scheduler now: it holds the lease, not past its end
        (checked before each fire, so a holder cut off stops at once)."""
        return self._leading and self._holding.holds(utcnow())

    def lease(self) -> Holding:
        """Until when this process holds the lease, as far as it knows."""
        return self._holding

    async def _lease_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            await self._try_lease()

    async def _try_lease(self) -> None:
        """Take or renew the lease, and lead or step down as `lease_step` says. A try that
        does not answer within a third of the lease counts as failed."""
        now = utcnow()
        try:
            got = await asyncio.wait_for(asyncio.to_thread(
                self.services.leases.hold, SCHEDULER, self.holder, self.lease_seconds,
                self._holding.holds(now), now), timeout=self.lease_seconds / 3)
        except Exception as exc:  # the database out of reach, or too slow: not renewed
            log.warning("could not take or renew the scheduler lease: %s", exc or type(exc))
            got = None
        step, self._holding = lease_step(self._holding, utcnow(), got)
        starting = self._lead_task is not None and not self._lead_task.done()
        if step == LeaseStep.LOST or (step == LeaseStep.TAKEN and (self._leading or starting)):
            # Taken again after it lapsed here: another may have fired meanwhile, so the
            # catch-up is made again, from a clean start.
            if self._leading or starting:
                log.warning("the scheduler lease lapsed: %s stops firing", self.holder)
            self._step_down()
            starting = False
        if step == LeaseStep.TAKEN or (step == LeaseStep.KEPT and not self._leading
                                       and not starting):
            self._lead_task = asyncio.create_task(self._lead(), name="scheduler-lead")

    async def _lead(self) -> None:
        """What start-up does, on taking the lease: the one catch-up, then the jobs."""
        log.info("%s holds the scheduler lease: catching up, then firing", self.holder)
        try:
            now = utcnow()
            for missed in await asyncio.to_thread(self.services.schedules.catch_up, now,
                                                  self.grace_seconds):
                await self._announce(missed)
            self._leading = True
            self.runner.start()
            self._known = await asyncio.to_thread(self.services.schedules.all)
            for name, when in self._known.items():
                self.runner.set(name, when, after=now)
            await self._start_digests(now)
        except Exception:  # tried again, from the catch-up, at the next renewal
            log.exception("could not start the scheduler")
            self._step_down()
            return
        self._sync = asyncio.create_task(self._resync_forever(), name="schedule-resync")

    def _step_down(self) -> None:
        """No job left here: another process fires from now on."""
        self._leading = False
        if self._lead_task is not None and self._lead_task is not asyncio.current_task():
            self._lead_task.cancel()
        if self._sync is not None:
            self._sync.cancel()
            self._sync = None
        self.runner.shutdown()
        self.runner = self._new_runner()
        self._known, self._known_digests = {}, {}
        self._owed.clear()

    async def _send_owed_forever(self) -> None:
        while True:
            await asyncio.sleep(self.owed_seconds)
            if not self.leading():
                continue
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
                # Subscribed through another serve process: its event was not heard here.
                self.resync_digests(await asyncio.to_thread(self.digests.schedules))
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

    def resync_digests(self, saved: dict[str, Schedule]) -> None:
        """The same for the channels' digests."""
        for channel in self._known_digests.keys() - saved.keys():
            self._apply_digest(channel, None)
        for channel, when in saved.items():
            if self._known_digests.get(channel) != when:
                self._apply_digest(channel, when)

    async def _start_digests(self, now: datetime) -> None:
        """One digest now for each channel whose digest fell due while the bot was down
        (covering the whole period: no burst), then the jobs, from the database."""
        for channel in await asyncio.to_thread(self.digests.owed, now):
            await self.send_digest(channel)
        self._known_digests = await asyncio.to_thread(self.digests.schedules)
        for channel, when in self._known_digests.items():
            self.runner.set(channel, when, after=now, kind=DIGEST)

    async def send_digest(self, channel_id: str) -> None:
        """Compose the channel's digest, post it, and start the next period where it ended
        (not before it was posted). While Slack is down the digest is owed, and sent once
        it is back, covering the whole period; one send per channel at a time."""
        if channel_id in self._sending or not self.leading():
            return
        if not self._slack.ready(time.monotonic()):
            self._owed.add(channel_id)
            return
        self._sending.add(channel_id)
        try:
            digest = await asyncio.to_thread(self.digests.compose, channel_id, utcnow())
            if not self.leading():  # right before posting: lost meanwhile, the holder sends
                return
            await self.post_digest(digest)
            self._slack.succeeded()
            self._owed.discard(channel_id)
            if not await asyncio.to_thread(self.digests.mark_sent, digest):
                log.warning("the digest of %s from %s was marked sent by another process",
                            channel_id, digest.start.isoformat())
        except SlackUnavailable as exc:
            wait = self._slack.failed(time.monotonic(), exc.retry_after)
            self._owed.add(channel_id)
            log.warning("the digest of %s waits for Slack (%s): next try in %.0fs",
                        channel_id, exc, wait)
        except Exception:
            log.exception("could not send the digest of %s", channel_id)
        finally:
            self._sending.discard(channel_id)

    async def stop(self) -> None:
        """Stop firing, and give the lease up so another process takes it at once."""
        for task in (self._lease_task, self._owed_task):
            if task is not None:
                task.cancel()
        was_holding = self._holding.holds(utcnow())
        self._step_down()
        self._holding = Holding()
        if was_holding:
            try:
                await asyncio.to_thread(self.services.leases.release, SCHEDULER, self.holder)
            except Exception as exc:  # it ends by itself within the lease
                log.warning("could not release the scheduler lease: %s", exc)

    def schedule_changed(self, event: ScheduleChanged) -> None:
        """Thread-safe: published from whichever thread saved the schedule."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply, event.routine, event.schedule)

    def _apply(self, name: str, when: Schedule | None) -> None:
        if not self._leading:
            return  # no jobs here: taking the lease reads every schedule
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
        if not self._leading:
            return
        if when is None:
            self.runner.remove(channel_id, kind=DIGEST)
            self._known_digests.pop(channel_id, None)
        else:
            self.runner.set(channel_id, when, kind=DIGEST)
            self._known_digests[channel_id] = when

    async def _fire_digest(self, channel_id: str, scheduled_for: datetime) -> None:
        if not self.leading():
            return
        subscribed = await asyncio.to_thread(self.digests.subscription, channel_id)
        if subscribed is not None:  # not if unsubscribed as it fired
            await self.send_digest(channel_id)

    async def _fire_all(self, names: tuple[str, ...], scheduled_for: datetime) -> None:
        """Queue every routine due at this time; the ones the database could not take
        (locked, out of reach) are tried again a few times: the time is their runs'
        reference, so a second try never queues twice."""
        for attempt in range(1, FIRE_ATTEMPTS + 1):
            if not self.leading():  # the lease ended: the new holder's catch-up has them
                return
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
        if not self.leading():
            return
        for missed in await asyncio.to_thread(self.services.schedules.missed_all, names,
                                              (scheduled_for,), "the scheduler was late"):
            await self._announce(missed)

    async def _announce(self, missed: MissedFires) -> None:
        try:
            await self.announce_missed(missed)
        except Exception:
            log.exception("could not announce missed fires of %s", missed.routine.name)
