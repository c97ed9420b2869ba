"""The scheduler door's APScheduler adapter (bot/doors/scheduler/jobs.py): jobs set, replaced
and removed, firing for real each second with the scheduled times, a past time run once or
reported as missed, and digest jobs beside routine jobs in the one scheduler."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot.core.schedule import fires_between, next_fire_times, parse_schedule
from bot.doors.scheduler.jobs import ScheduleRunner


def test_an_unstarted_runner_knows_its_jobs() -> None:
    runner = ScheduleRunner(_never_fire, grace_seconds=60)
    runner.set("nightly", parse_schedule("0 3 * * *", "Europe/Paris"))
    runner.set("nightly", parse_schedule("0 4 * * *", "Europe/Paris"))  # replaces
    assert runner.names() == {"nightly"}
    upcoming = runner.next_fire_time("nightly")
    assert upcoming is not None and upcoming > datetime.now(UTC)
    assert upcoming.hour == 4  # in the schedule's zone
    runner.remove("nightly")
    runner.remove("never-added")
    assert runner.names() == set() and runner.next_fire_time("nightly") is None
    runner.shutdown()  # never started: nothing to do


async def _never_fire(name: str, when: datetime) -> None:
    raise AssertionError(f"{name} fired for {when}")


@pytest.mark.timeout(15)
async def test_the_runner_fires_each_second_with_the_scheduled_times() -> None:
    fired: asyncio.Queue[tuple[str, datetime]] = asyncio.Queue()

    async def fire(name: str, when: datetime) -> None:
        fired.put_nowait((name, when))

    runner = ScheduleRunner(fire, grace_seconds=5, missed=_never_fire)
    runner.start()
    try:
        runner.set("tick", parse_schedule("every 1s", min_interval_seconds=1))
        assert runner.names() == {"tick"}
        upcoming = runner.next_fire_time("tick")
        first = await asyncio.wait_for(fired.get(), timeout=3)
        second = await asyncio.wait_for(fired.get(), timeout=3)
        runner.remove("tick")
        assert runner.names() == set()
    finally:
        runner.shutdown()
        runner.shutdown()
        await asyncio.sleep(0.05)  # APScheduler shuts down in a callback on the loop
    assert first[0] == second[0] == "tick"
    assert first[1] == upcoming and first[1].microsecond == 0
    assert second[1] - first[1] == timedelta(seconds=1)


@pytest.mark.timeout(15)
@pytest.mark.parametrize(("grace", "outcome"), [(3 * 86_400, "fired"), (1, "missed")])
async def test_set_after_a_past_time_runs_once_or_reports_the_miss(grace: int,
                                                                   outcome: str) -> None:
    # `after` two days back: two daily fires are due at once. Coalesced into the latest,
    # it runs when within the grace period and is reported when not; never both, never two.
    events: asyncio.Queue[tuple[str, str, datetime]] = asyncio.Queue()

    async def fire(name: str, when: datetime) -> None:
        events.put_nowait(("fired", name, when))

    async def missed(name: str, when: datetime) -> None:
        events.put_nowait(("missed", name, when))

    schedule = parse_schedule("every 1d")
    now = datetime.now(UTC)
    runner = ScheduleRunner(fire, grace_seconds=grace, missed=missed)
    runner.start()
    try:
        runner.set("daily", schedule, after=now - timedelta(days=2))
        event = await asyncio.wait_for(events.get(), timeout=3)
        await asyncio.sleep(0.2)
        assert events.empty()
        assert runner.next_fire_time("daily") == next_fire_times(schedule, now, 1)[0]
    finally:
        runner.shutdown()
        await asyncio.sleep(0.05)
    assert event == (outcome, "daily", fires_between(schedule, now - timedelta(days=1), now)[-1])


@pytest.mark.timeout(15)
async def test_digest_jobs_share_the_scheduler_without_touching_routine_jobs() -> None:
    fired: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def routine(name: str, when: datetime) -> None:
        fired.put_nowait(("routine", name))

    async def digest(name: str, when: datetime) -> None:
        fired.put_nowait(("digest", name))

    runner = ScheduleRunner(routine, grace_seconds=5)
    runner.register("digest", digest)
    every_second = parse_schedule("every 1s", min_interval_seconds=1)
    runner.start()
    try:
        runner.set("same", parse_schedule("0 3 * * *"))
        runner.set("same", every_second, kind="digest")  # the same name, another kind
        assert runner.names() == {"same"} and runner.names("digest") == {"same"}
        assert runner.next_fire_time("same") != runner.next_fire_time("same", kind="digest")
        assert await asyncio.wait_for(fired.get(), timeout=3) == ("digest", "same")
        runner.remove("same", kind="digest")
        assert runner.names("digest") == set() and runner.names() == {"same"}
        with pytest.raises(ValueError, match="unknown job kind"):
            runner.set("x", every_second, kind="nope")
        with pytest.raises(ValueError, match="plain word"):
            runner.register("a:b", digest)
    finally:
        runner.shutdown()
        await asyncio.sleep(0.05)


@pytest.mark.timeout(15)
async def test_names_sharing_a_schedule_fire_together_once_per_time() -> None:
    """One job per schedule: every name due is handed over in one call, each time once; a
    name that joins later gets only the fires after it joined; the last one out takes the
    job with it."""
    fired: asyncio.Queue[tuple[tuple[str, ...], datetime]] = asyncio.Queue()

    async def fire_all(names: tuple[str, ...], when: datetime) -> None:
        fired.put_nowait((names, when))

    every_second = parse_schedule("every 1s", min_interval_seconds=1)
    runner = ScheduleRunner(grace_seconds=5)
    runner.register_group("", fire_all, missed=_never_fire_all)
    runner.start()
    try:
        many = [f"r{index:03d}" for index in range(200)]
        for name in many:
            runner.set(name, every_second)
        assert runner.names() == set(many)
        first = await asyncio.wait_for(fired.get(), timeout=3)
        runner.set("late", every_second)
        second = await asyncio.wait_for(fired.get(), timeout=3)
        assert runner.next_fire_time("late") == runner.next_fire_time("r000")
        for name in [*many, "late"]:
            runner.remove(name)
        assert runner.names() == set() and runner.next_fire_time("r000") is None
    finally:
        runner.shutdown()
        await asyncio.sleep(0.05)
    assert first[0] == tuple(many)
    assert second == (tuple(sorted([*many, "late"])), first[1] + timedelta(seconds=1))


async def _never_fire_all(names: tuple[str, ...], when: datetime) -> None:
    raise AssertionError(f"{names} fired for {when}")


@pytest.mark.timeout(15)
async def test_a_dropped_fire_of_a_shared_schedule_is_reported_once_for_every_name() -> None:
    # `after` two days back and one second of grace: the shared fire is too late to run,
    # so it is reported missed, once, with every name, and never run.
    events: asyncio.Queue[tuple[str, tuple[str, ...], datetime]] = asyncio.Queue()

    async def fire_all(names: tuple[str, ...], when: datetime) -> None:
        events.put_nowait(("fired", names, when))

    async def missed_all(names: tuple[str, ...], when: datetime) -> None:
        events.put_nowait(("missed", names, when))

    schedule = parse_schedule("every 1d")
    now = datetime.now(UTC)
    runner = ScheduleRunner(grace_seconds=1)
    runner.register_group("", fire_all, missed=missed_all)
    runner.start()
    try:
        for name in ("a", "b", "c"):
            runner.set(name, schedule, after=now - timedelta(days=2))
        event = await asyncio.wait_for(events.get(), timeout=3)
        await asyncio.sleep(0.2)
        assert events.empty()
    finally:
        runner.shutdown()
        await asyncio.sleep(0.05)
    latest = fires_between(schedule, now - timedelta(days=1), now)[-1]
    assert event == ("missed", ("a", "b", "c"), latest)
