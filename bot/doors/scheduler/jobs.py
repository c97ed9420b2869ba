"""The one adapter to APScheduler's runtime: jobs in memory that fire coroutines.

The schedule math (parsing, fire times, the catch-up decision) is pure and lives in
`bot.core.schedule`; this module is the only code that runs an APScheduler scheduler, so
an upgrade touches these two files.

One APScheduler job per distinct schedule, not per routine: ten thousand routines on
`* * * * *` are one job, whose fire hands every name due to one callback (`register_group`),
so the door can queue them all in a few transactions. Per-routine jobs cost APScheduler
about 60 µs each at a shared boundary (0.6 s for 10,000 no-op jobs here) before any work.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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

Fire = Callable[[str, datetime], Awaitable[None]]  # one name, its scheduled time
FireGroup = Callable[[tuple[str, ...], datetime], Awaitable[None]]  # every name due then
ROUTINES = ""  # the routines' own kind of job


@dataclass(frozen=True)
class _Callbacks:
    fire: FireGroup
    missed: FireGroup | None


@dataclass
class _Group:
    """The names of one kind that share a schedule, fired by one APScheduler job.

    `owed_after[name]`: the name is owed the fire times strictly after this one (when it
    joined, or the last time it was fired or reported missed), so a name that joins while
    its group's fire is being handled is not given that fire, and no name gets one twice.
    """

    kind: str
    schedule: Schedule
    previous: datetime  # the job's last fire time dealt with (or when it was made)
    owed_after: dict[str, datetime] = field(default_factory=dict)

    def take(self, when: datetime) -> tuple[str, ...]:
        """The names owed the fire at `when`, in name order; from now on they are owed
        only later ones."""
        names = tuple(sorted(n for n, after in self.owed_after.items() if after < when))
        for name in names:
            self.owed_after[name] = when
        self.previous = max(self.previous, when)
        return names


class ScheduleRunner:
    """The one adapter to APScheduler: fires the names due on each schedule.

    Jobs live in memory, one per kind and distinct schedule. After a restart APScheduler
    knows nothing of the fires it missed, so catching up is `catch_up`'s decision; pass the
    `now` given to it as `set(..., after=now)` so no fire time falls between the two. While
    running, each fire is coalesced (at most one fire for several due times), one at a time
    per schedule, and dropped when it is more than `grace_seconds` late (the event loop was
    blocked) or the previous fire of the same schedule is still running: a dropped fire
    goes to `missed` for every name it was due to, so it is never silent. Keep `fire` short
    (queue runs and return): `shutdown` cancels fires still in progress.

    Routines are the kind `ROUTINES`: `ScheduleRunner(fire, ...)` calls `fire(name, time)`
    for each routine due, `register_group(ROUTINES, fire_all, missed_all)` calls
    `fire_all(names, time)` once for all of them. Jobs of other kinds (channel digests)
    share the scheduler: `register(kind, fire)`, then pass `kind=` to `set`, `remove`,
    `next_fire_time` and `names`; the same name in two kinds is two entries.
    """

    def __init__(self, fire: Fire | None = None, grace_seconds: int = 300,
                 missed: Fire | None = None) -> None:
        self._kinds: dict[str, _Callbacks] = {}
        self._grace_seconds = grace_seconds
        self._groups: dict[str, _Group] = {}  # by job id
        self._member_of: dict[tuple[str, str], str] = {}  # (kind, name) -> job id
        self._due: dict[str, tuple[str, datetime, tuple[str, ...]]] = {}
        self._notices: set[asyncio.Task[None]] = set()
        self._started = False
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_listener(
            self._on_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        if fire is not None:
            self.register(ROUTINES, fire, missed)

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
        """A kind of job (say `digest`) whose fires call `fire(name, scheduled_time)` for
        each name due, concurrently."""
        self.register_group(kind, _each(fire), _each(missed) if missed else None)

    def register_group(self, kind: str, fire: FireGroup, missed: FireGroup | None = None,
                       ) -> None:
        """A kind of job whose fires call `fire(names, scheduled_time)` once with every
        name due at that time (and `missed` likewise with every name a fire was dropped
        for)."""
        if kind and not kind.isidentifier():
            raise ValueError(f"schedule: a job kind is a plain word, not {kind!r}")
        self._kinds[kind] = _Callbacks(fire, missed)

    def set(self, name: str, schedule: Schedule, after: datetime | None = None,
            kind: str = ROUTINES) -> None:
        """Add the name's schedule or replace it; it first fires after `after` (default:
        now).

        A first fire time already past when the schedule is set still runs if it is within
        the grace period, so `after` closes the gap between a start-up `catch_up` and this
        call.
        """
        if kind not in self._kinds:
            raise ValueError(f"schedule: unknown job kind {kind!r}")
        self.remove(name, kind)
        owed_after = after if after is not None else datetime.now(UTC)
        job_id = _job_id(kind, schedule)
        group = self._groups.get(job_id)
        if group is None:
            group = self._groups[job_id] = _Group(kind, schedule, owed_after)
            timing: dict[str, Any] = {}
            if after is not None:
                timing["next_run_time"] = next_fire_times(schedule, after, 1)[0]
            self._scheduler.add_job(
                self._run, trigger_for(schedule), args=(job_id,), id=job_id, name=job_id,
                coalesce=True, max_instances=1, misfire_grace_time=self._grace_seconds,
                **timing)
        elif owed_after < group.previous:
            self._owe_earlier(job_id, group, owed_after)
        group.owed_after[name] = owed_after
        self._member_of[(kind, name)] = job_id

    def _owe_earlier(self, job_id: str, group: _Group, after: datetime) -> None:
        """A name joins a schedule's job owed a fire time before the job's next one (its
        `after` is in the past): the job fires from that time, coalesced, and the names
        already in it are not given the fires they had."""
        first = next_fire_times(group.schedule, after, 1)[0]
        upcoming: datetime | None = getattr(self._scheduler.get_job(job_id),
                                            "next_run_time", None)
        if upcoming is None or first < upcoming:
            self._scheduler.modify_job(job_id, next_run_time=first)

    def remove(self, name: str, kind: str = ROUTINES) -> None:
        """Stop firing the name; removing an unknown name does nothing.

        A fire already submitted still runs for it: it was due before the removal.
        """
        job_id = self._member_of.pop((kind, name), None)
        if job_id is None:
            return
        group = self._groups[job_id]
        del group.owed_after[name]
        if not group.owed_after:  # the schedule's last name: its job goes too
            del self._groups[job_id]
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(job_id)

    def next_fire_time(self, name: str, kind: str = ROUTINES) -> datetime | None:
        """When the name fires next, or None if it has no schedule here."""
        job_id = self._member_of.get((kind, name))
        job = self._scheduler.get_job(job_id) if job_id is not None else None
        if job_id is None or job is None:
            return None
        upcoming: datetime | None
        if job.pending:  # added before start(): APScheduler computes the time only at start
            upcoming = job.trigger.get_next_fire_time(None, datetime.now(UTC))
        else:
            upcoming = job.next_run_time
        group = self._groups[job_id]
        owed_after = group.owed_after[name]
        if upcoming is not None and upcoming <= owed_after:  # joined as this fire was handled
            upcoming = next_fire_times(group.schedule, owed_after, 1)[0]
        return upcoming

    def names(self, kind: str = ROUTINES) -> builtins.set[str]:  # `set`: the method above
        """The names of a kind that have a schedule here."""
        return {name for job_kind, name in self._member_of if job_kind == kind}

    async def _run(self, job_id: str) -> None:
        # APScheduler 3 does not pass the scheduled time to the job function, but it announces
        # it in the JobSubmissionEvent (`scheduled_run_times`, coalesced to the latest one).
        # `_process_jobs` submits the job (the asyncio executor only creates this task) and
        # dispatches that event in the same event-loop callback, so `_on_event` has recorded
        # the time and the names due before this coroutine takes its first step.
        # max_instances=1 means no other submission of this job can overwrite it in between
        # (it would be refused instead).
        due = self._due.pop(job_id, None)
        if due is None:
            raise RuntimeError(f"schedule: no scheduled time recorded for {job_id!r}")
        kind, scheduled, names = due
        if names:
            await self._kinds[kind].fire(names, scheduled)

    def _on_event(self, event: Any) -> None:
        # Runs on the event loop: APScheduler dispatches from its wakeup callback and from
        # the executor's done-callbacks.
        job_id = str(event.job_id)
        group = self._groups.get(job_id)
        if event.code == EVENT_JOB_SUBMITTED:
            when: datetime = event.scheduled_run_times[-1]
            if group is not None:
                self._due[job_id] = (group.kind, when, group.take(when))
            return
        if event.code == EVENT_JOB_MISSED:  # submitted, then refused as too late to run
            when = event.scheduled_run_time
            due = self._due.get(job_id)
            if due is None or due[1] != when:
                return
            del self._due[job_id]
            kind, _, names = due
        else:  # EVENT_JOB_MAX_INSTANCES: the previous fire of this schedule is still running
            when = event.scheduled_run_times[-1]
            if group is None:
                return
            kind, names = group.kind, group.take(when)
        if not names:
            return
        log.warning("schedule: %d job(s) of %s did not fire for %s (%s%s)", len(names),
                    job_id, when.isoformat(), ", ".join(names[:5]),
                    ", ..." if len(names) > 5 else "")
        missed = self._kinds[kind].missed
        if missed is not None:
            notice = asyncio.get_running_loop().create_task(self._notify(missed, names, when))
            self._notices.add(notice)
            notice.add_done_callback(self._notices.discard)

    @staticmethod
    async def _notify(missed: FireGroup, names: tuple[str, ...], when: datetime) -> None:
        try:
            await missed(names, when)
        except Exception:
            log.exception("schedule: reporting the missed fire of %s failed", ", ".join(names))


def _each(fire: Fire) -> FireGroup:
    """A per-name callback as a group one: every name's call at once, each one's failure
    logged without stopping the others (as separate jobs would)."""

    async def each(names: tuple[str, ...], when: datetime) -> None:
        outcomes = await asyncio.gather(*(fire(name, when) for name in names),
                                        return_exceptions=True)
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("schedule: the fire of %s for %s failed", name, when.isoformat(),
                          exc_info=outcome)

    return each


def _job_id(kind: str, schedule: Schedule) -> str:
    """One job per kind and schedule (routine names and kinds hold no `|`)."""
    return f"{kind}|{schedule.timezone}|{schedule.expression}"
