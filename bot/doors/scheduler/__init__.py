"""The scheduler as a door: APScheduler fires schedules and digests into the services."""

from bot.doors.scheduler.door import Scheduler

__all__ = ["Scheduler"]
