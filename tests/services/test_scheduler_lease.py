"""The scheduler's lease on a real database (SQLite; PostgreSQL with -m postgres): taken,
renewed, refused while another holds it, taken over once past its time, released; and
many threads racing for a free lease never give it to two."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bot.core.lease import SCHEDULER
from bot.core.redaction import Redactor
from bot.core.routine import RoutineLimits
from bot.services import ServicePolicy, Services
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import utcnow

A, B = "host-a/main", "host-b/main"

pytestmark = pytest.mark.postgres


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    database = Database(database_url)
    schema.upgrade(database)
    yield Services(database, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5),
                   Redactor(()))
    database.close()


def test_a_free_lease_is_taken_and_shown_with_its_holder(services: Services) -> None:
    now = utcnow()
    until = services.leases.hold(SCHEDULER, A, 30, now=now)
    shown = services.leases.holder(SCHEDULER)
    assert until == now + timedelta(seconds=30)
    assert shown is not None
    assert (shown.holder, shown.until, shown.taken_at) == (A, until, now)
    assert shown.held(now) and not shown.held(until)


def test_the_holder_renews_keeping_when_it_took_it(services: Services) -> None:
    now = utcnow()
    services.leases.hold(SCHEDULER, A, 30, now=now)
    later = now + timedelta(seconds=10)
    renewed = services.leases.hold(SCHEDULER, A, 30, renewing=True, now=later)
    again = services.leases.hold(SCHEDULER, A, 30, now=later + timedelta(seconds=1))  # upsert
    shown = services.leases.holder(SCHEDULER)
    assert renewed == later + timedelta(seconds=30)
    assert again == later + timedelta(seconds=31)
    assert shown is not None and (shown.holder, shown.until, shown.taken_at) == (A, again, now)


def test_another_process_is_refused_while_it_is_held(services: Services) -> None:
    now = utcnow()
    until = services.leases.hold(SCHEDULER, A, 30, now=now)
    refused = services.leases.hold(SCHEDULER, B, 30, now=now + timedelta(seconds=29))
    not_renewed = services.leases.hold(SCHEDULER, B, 30, renewing=True,
                                       now=now + timedelta(seconds=29))
    shown = services.leases.holder(SCHEDULER)
    assert refused is None and not_renewed is None
    assert shown is not None and (shown.holder, shown.until) == (A, until)


def test_past_its_time_it_is_taken_over_and_the_old_holder_cannot_renew(
        services: Services) -> None:
    now = utcnow()
    services.leases.hold(SCHEDULER, A, 3, now=now)
    later = now + timedelta(seconds=4)
    taken = services.leases.hold(SCHEDULER, B, 3, now=later)
    renewed = services.leases.hold(SCHEDULER, A, 3, renewing=True, now=later)
    shown = services.leases.holder(SCHEDULER)
    assert taken == later + timedelta(seconds=3)
    assert renewed is None
    assert shown is not None and (shown.holder, shown.taken_at) == (B, later)


def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(
        services: Services) -> None:
    now = utcnow()
    services.leases.hold(SCHEDULER, A, 30, now=now)
    assert not services.leases.release(SCHEDULER, B)
    assert services.leases.release(SCHEDULER, A)
    assert services.leases.holder(SCHEDULER) is None
    assert services.leases.hold(SCHEDULER, B, 30, now=now) is not None
    shown = services.leases.holder(SCHEDULER)
    assert shown is not None and shown.holder == B


def test_many_racing_for_a_free_lease_give_it_to_one(services: Services) -> None:
    holders = [f"host-{index}/main" for index in range(8)]
    won: list[str] = []
    start = threading.Barrier(len(holders))
    now = utcnow()

    def race(holder: str) -> None:
        start.wait()
        if services.leases.hold(SCHEDULER, holder, 30, now=now) is not None:
            won.append(holder)

    threads = [threading.Thread(target=race, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shown = services.leases.holder(SCHEDULER)
    assert len(won) == 1
    assert shown is not None and shown.holder == won[0]
