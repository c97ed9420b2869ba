"""The scheduler door under its lease, two schedulers on one real database (as two serve
processes): only the holder has jobs and fires; the other takes over when the holder
stops (released) and catches up first; a holder whose lease another took once it ended
stops firing and drops its jobs. On SQLite, and PostgreSQL with -m postgres."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import select

from bot.core.digest import Digest
from bot.core.lease import SCHEDULER
from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.statuses import TriggerKind
from bot.doors.scheduler import Scheduler
from bot.services import ServicePolicy, Services
from bot.services.views import MissedFires
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import Lease, Routine, Run, utcnow
from tests.support.slack_flows import wait_until

pytestmark = pytest.mark.postgres
A, B = "host-a/main", "host-b/main"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


class Process:
    """One scheduler with services of its own, and what it would have posted in Slack."""

    def __init__(self, db: Database, holder: str) -> None:
        policy = ServicePolicy("m", 60, RoutineLimits(1, 99, True, 1), 5,
                               triggers_per_minute=10**6)
        self.services = Services(db, policy, Redactor(()))
        self.missed: list[MissedFires] = []
        self.digests: list[Digest] = []
        self.scheduler = Scheduler(self.services, self._missed, self._digest,
                                   grace_seconds=60, sync_seconds=0.5, holder=holder,
                                   lease_seconds=3)

    async def _missed(self, missed: MissedFires) -> None:
        self.missed.append(missed)

    async def _digest(self, digest: Digest) -> None:
        self.digests.append(digest)


def runs(db: Database) -> list[str]:
    with db.session() as session:
        return [r for r in session.exec(select(Run.trigger_ref).where(
            Run.trigger_kind == TriggerKind.SCHEDULE)).all() if r]


def create_ticking(services: Services) -> None:
    services.routines.create(RoutineDraft(
        name="tick", prompt="Tick.", repo_url="file:///r", channel_id="C0123ABC",
        schedule="every 1s", schedule_tz="UTC"), "U0OWNER01")


@pytest.mark.timeout(60)
async def test_only_the_holder_fires_and_the_other_takes_over_when_it_stops(
        db: Database) -> None:
    one, other = Process(db, A), Process(db, B)
    create_ticking(one.services)
    await one.scheduler.start()
    await other.scheduler.start()
    try:
        assert one.scheduler.leading() and not other.scheduler.leading()
        assert one.scheduler.runner.names() == {"tick"}
        assert other.scheduler.runner.names() == set()
        await wait_until(lambda: len(runs(db)) >= 2, timeout=10)
        await one.scheduler.stop()
        held = other.services.leases.holder(SCHEDULER)
        with db.session() as session:  # as if it had been away a while: fires to catch up
            session.execute(update(Routine).values(
                last_fire_at=utcnow() - timedelta(seconds=30)))
        assert held is None  # released as it stopped: free at once
        await wait_until(other.scheduler.leading, timeout=5)
        before = len(runs(db))
        await wait_until(lambda: len(runs(db)) >= before + 2, timeout=10)
        shown = other.services.leases.holder(SCHEDULER)
        assert shown is not None and shown.holder == B
        assert other.scheduler.runner.names() == {"tick"}
        assert [m.why for m in other.missed] == ["the bot was not running"]  # its catch-up
        assert sorted(set(runs(db))) == sorted(runs(db))  # none doubled
    finally:
        await one.scheduler.stop()
        await other.scheduler.stop()


@pytest.mark.timeout(60)
async def test_a_holder_whose_lease_was_taken_after_its_end_stops_firing(
        db: Database) -> None:
    one = Process(db, A)
    create_ticking(one.services)
    await one.scheduler.start()
    try:
        assert one.scheduler.leading()
        await wait_until(lambda: len(runs(db)) >= 1, timeout=10)
        with db.session() as session:  # another process holds it now (it was paused past it)
            session.execute(update(Lease).values(holder=B,
                                                 until=utcnow() + timedelta(minutes=5)))
        await wait_until(lambda: not one.scheduler.leading(), timeout=10)
        assert one.scheduler.runner.names() == set()
        stopped_at = len(runs(db))
        await wait_until(lambda: not one.scheduler.lease().holds(utcnow()), timeout=5)
        await asyncio.sleep(2)  # two more tries at the lease (every lease / 3), refused
        assert len(runs(db)) == stopped_at
        shown = one.services.leases.holder(SCHEDULER)
        assert shown is not None and shown.holder == B
    finally:
        await one.scheduler.stop()


@pytest.mark.timeout(60)
async def test_a_digest_subscribed_through_another_process_is_sent_by_the_holder_once(
        db: Database) -> None:
    one, other = Process(db, A), Process(db, B)
    await one.scheduler.start()
    await other.scheduler.start()
    try:
        other.services.digests.subscribe("C0DIGEST1", "every 1s", "UTC", "U0OWNER01")
        await wait_until(lambda: len(one.digests) >= 2, timeout=10)  # within a resync
        assert one.scheduler.runner.names("digest") == {"C0DIGEST1"}
        assert other.scheduler.runner.names("digest") == set() and other.digests == []
        periods = [(d.start, d.end) for d in one.digests]
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(periods))  # none sent twice
    finally:
        await one.scheduler.stop()
        await other.scheduler.stop()
