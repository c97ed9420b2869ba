"""The one adapter to APScheduler's runtime: jobs in memory that fire coroutines.

The schedule math (parsing, fire times, the catch-up decision) is pure and lives in
`bot.core.schedule`; this module is the only code that runs an APScheduler scheduler, so
an upgrade touches these two files.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import (  # type: ignore[import-untyped]
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
)
from apscheduler.jobstores.base import JobLookupError  # type: ignore[import-untyped]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from bot.core.schedule import Schedule, next_fire_times, trigger_for

log = logging.getLogger(__name__)

Fire = Callable[[str, datetime], Awaitable[None]]


class ScheduleRunner:
    """The one adapter to APScheduler: fires `fire(name, scheduled_time)` on each schedule.

    Jobs live in memory. After a restart APScheduler knows nothing of the fires it missed,
    so catching up is `catch_up`'s decision; pass the `now` given to it as `set(...,
    after=now)` so no fire time falls between the two. While running, each fire is coalesced
    (at most one run for several due times), one at a time per routine, and dropped when
    it is more than `grace_seconds` late (the event loop was blocked) or the previous fire
    of the routine is still running: a dropped fire goes to `missed`, so it is never silent.
    Keep `fire` short (queue a run and return): `shutdown` cancels fires still in progress.

    Jobs of other kinds (channel digests) share the scheduler: `register(kind, fire)`, then
    pass `kind=` to `set`, `remove`, `next_fire_time` and `names`. Their jobs are keyed
    `kind:name` (routine names have no colon), so they never replace a routine's job.
    """

    def __init__(self, fire: Fire, grace_seconds: int, missed: Fire | None = None) -> None:
        self._kinds: dict[str, tuple[Fire, Fire | None]] = {"": (fire, missed)}
        self._grace_seconds = grace_seconds
        self._due: dict[str, datetime] = {}
        self._notices: set[asyncio.Task[None]] = set()
        self._started = False
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_listener(
            self._on_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        """Start firing; call it from inside the running event loop, which APScheduler uses."""
        self._scheduler.start()
        self._started = True

    def shutdown(self) -> None:
        """Stop firing without waiting for fires in progress (APScheduler cancels them).

        APScheduler does the actual shutdown in a callback on the event loop, so it completes
        at the loop's next turn, not when this returns. Calling it twice is harmless.
        """
        if self._started:
            self._started = False
            self._scheduler.shutdown(wait=False)

    def register(self, kind: str, fire: Fire, missed: Fire | None = None) -> None:
        """Another kind of job (say `digest`): its fires call `fire(name, scheduled_time)`."""
        if not kind.isidentifier():
            raise ValueError(f"schedule: a job kind is a plain word, not {kind!r}")
        self._kinds[kind] = (fire, missed)

    def set(self, name: str, schedule: Schedule, after: datetime | None = None,
            kind: str = "") -> None:
        """Add the routine's job or replace it; it first fires after `after` (default: now).

        A first fire time already past when the job is added still runs if it is within the
        grace period, so `after` closes the gap between a start-up `catch_up` and this call.
        """
        if kind not in self._kinds:
            raise ValueError(f"schedule: unknown job kind {kind!r}")
        job_id = _job_id(kind, name)
        if not self._started:  # before start, APScheduler's replace_existing keeps both jobs
            self.remove(name, kind)
        timing: dict[str, Any] = {}
        if after is not None:
            timing["next_run_time"] = next_fire_times(schedule, after, 1)[0]
        self._scheduler.add_job(
            self._run, trigger_for(schedule), args=(job_id,), id=job_id, name=job_id,
            replace_existing=True, coalesce=True, max_instances=1,
            misfire_grace_time=self._grace_seconds, **timing)

    def remove(self, name: str, kind: str = "") -> None:
        """Stop firing the routine; removing an unknown name does nothing.

        A fire already submitted still runs: it was due before the removal.
        """
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(_job_id(kind, name))

    def next_fire_time(self, name: str, kind: str = "") -> datetime | None:
        """When the routine fires next, or None if it has no job."""
        job = self._scheduler.get_job(_job_id(kind, name))
        if job is None:
            return None
        if job.pending:  # added before start(): APScheduler computes the time only at start
            pending: datetime | None = job.trigger.get_next_fire_time(None, datetime.now(UTC))
            return pending
        scheduled: datetime | None = job.next_run_time
        return scheduled

    def names(self, kind: str = "") -> builtins.set[str]:  # `set` would be the method above
        """The routines (or the names of another kind) that have a job."""
        keys = (_split_job_id(str(job.id)) for job in self._scheduler.get_jobs())
        return {name for job_kind, name in keys if job_kind == kind}

    async def _run(self, job_id: str) -> None:
        # APScheduler 3 does not pass the scheduled time to the job function, but it announces
        # it in the JobSubmissionEvent (`scheduled_run_times`, coalesced to the latest one).
        # `_process_jobs` submits the job (the asyncio executor only creates this task) and
        # dispatches that event in the same event-loop callback, so `_on_event` has recorded
        # the time before this coroutine takes its first step. max_instances=1 means no other
        # submission of this job can overwrite it in between (it would be refused instead).
        scheduled = self._due.pop(job_id, None)
        if scheduled is None:
            raise RuntimeError(f"schedule: no scheduled time recorded for {job_id!r}")
        kind, name = _split_job_id(job_id)
        await self._kinds[kind][0](name, scheduled)

    def _on_event(self, event: Any) -> None:
        # Runs on the event loop: APScheduler dispatches from its wakeup callback and from
        # the executor's done-callbacks.
        job_id = str(event.job_id)
        if event.code == EVENT_JOB_SUBMITTED:
            self._due[job_id] = event.scheduled_run_times[-1]
            return
        if event.code == EVENT_JOB_MISSED:  # submitted, then refused as too late to run
            when: datetime = event.scheduled_run_time
            if self._due.get(job_id) == when:
                del self._due[job_id]
        else:  # EVENT_JOB_MAX_INSTANCES: the previous fire of this routine is still running
            when = event.scheduled_run_times[-1]
        log.warning("schedule: %s did not fire for %s", job_id, when.isoformat())
        kind, name = _split_job_id(job_id)
        missed = self._kinds[kind][1]
        if missed is not None:
            notice = asyncio.get_running_loop().create_task(self._notify(missed, name, when))
            self._notices.add(notice)
            notice.add_done_callback(self._notices.discard)

    @staticmethod
    async def _notify(missed: Fire, name: str, when: datetime) -> None:
        try:
            await missed(name, when)
        except Exception:
            log.exception("schedule: reporting the missed fire of %s failed", name)


def _job_id(kind: str, name: str) -> str:
    return f"{kind}:{name}" if kind else name


def _split_job_id(job_id: str) -> tuple[str, str]:
    kind, colon, name = job_id.partition(":")
    return (kind, name) if colon else ("", job_id)


