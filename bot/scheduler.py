"""The scheduler as a door: APScheduler (through `bot.schedule.ScheduleRunner`, the one
module that touches it) calls the service, exactly like the Slack and HTTP doors.

The database is the truth: at start-up the jobs are rebuilt from the saved schedules,
after one catch-up decision per routine for the fires missed while the bot was down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from bot.errors import RoutinesError
from bot.models import utcnow
from bot.schedule import Schedule, ScheduleRunner
from bot.service import MissedFires, RoutineService

log = logging.getLogger(__name__)
AnnounceMissed = Callable[[MissedFires], Awaitable[None]]


class Scheduler:
    def __init__(self, service: RoutineService, announce_missed: AnnounceMissed,
                 grace_seconds: int) -> None:
        self.service = service
        self.announce_missed = announce_missed
        self.grace_seconds = grace_seconds
        self.runner = ScheduleRunner(self._fire, grace_seconds, missed=self._missed)
        self._loop: asyncio.AbstractEventLoop | None = None
        service.on_schedule_changed(self._changed)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        now = utcnow()
        for missed in await asyncio.to_thread(self.service.catch_up_schedules, now,
                                              self.grace_seconds):
            await self._announce(missed)
        self.runner.start()
        for name, when in (await asyncio.to_thread(self.service.schedules)).items():
            self.runner.set(name, when, after=now)

    def stop(self) -> None:
        self.runner.shutdown()

    def _changed(self, name: str, when: Schedule | None) -> None:
        """Thread-safe: the service calls it from whichever thread saved the schedule."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply, name, when)

    def _apply(self, name: str, when: Schedule | None) -> None:
        if when is None:
            self.runner.remove(name)
        else:
            self.runner.set(name, when)

    async def _fire(self, name: str, scheduled_for: datetime) -> None:
        try:
            await asyncio.to_thread(self.service.schedule_fired, name, scheduled_for)
        except RoutinesError as exc:  # rate limited, routine deleted...: said, not raised
            log.warning("scheduled run of %s at %s not queued: %s", name, scheduled_for, exc)

    async def _missed(self, name: str, scheduled_for: datetime) -> None:
        missed = await asyncio.to_thread(self.service.schedule_missed, name,
                                         (scheduled_for,), "the scheduler was late")
        await self._announce(missed)

    async def _announce(self, missed: MissedFires) -> None:
        try:
            await self.announce_missed(missed)
        except Exception:
            log.exception("could not announce missed fires of %s", missed.routine.name)
