"""Claims and run leases on the real database (SQLite; PostgreSQL with -m postgres): a claim
names its worker and its lease's end; the global limit and a routine's `max-concurrent`
hold when claims race in threads; a heartbeat renews only what its worker holds; a lapsed
lease fails its run once, the worker named, and a renewed one is left alone; a worker
reconciles its own runs and those from before workers, never another's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.statuses import FailureKind, RunStatus
from bot.core.trigger import manual
from bot.core.worker import WorkerIdentity, WorkerRole
from bot.services import ServicePolicy, Services
from bot.store import schema
from bot.store.database import Database
from bot.store.queries import row_id
from bot.store.tables import Run, utcnow

pytestmark = pytest.mark.postgres
OWNER = "U0OWNER01"
W1, W2 = "box/w1", "box/w2"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


@pytest.fixture
def services(db: Database) -> Services:
    services = Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5,
                                          triggers_per_minute=10_000, admins=(OWNER,)),
                        Redactor(()))
    services.routines.create(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), OWNER)
    return services


def queue(services: Services, count: int, name: str = "demo") -> list[int]:
    return [row_id(services.triggers.trigger(name, manual(OWNER)).view.run)
            for _ in range(count)]


def lapse(db: Database, run_id: int) -> None:
    """As if its worker stopped beating a while ago."""
    with db.session() as session:
        session.execute(update(Run).where(col(Run.id) == run_id)
                        .values(lease_until=utcnow() - timedelta(seconds=1)))


def test_a_claim_names_its_worker_and_lease_and_the_global_limit_holds(
        services: Services) -> None:
    queue(services, 3)
    before = utcnow()
    first = services.runs.claim_next(W1, 30, global_limit=2)
    second = services.runs.claim_next(W2, 30, global_limit=2)
    assert first is not None and second is not None
    assert (first.run.worker_id, second.run.worker_id) == (W1, W2)
    assert first.run.lease_until is not None
    assert first.run.lease_until.replace(tzinfo=before.tzinfo) >= before + timedelta(seconds=29)
    assert services.runs.claim_next(W1, 30, global_limit=2) is None  # two run already


@pytest.mark.parametrize("limit", [1, 2])
def test_racing_claims_keep_max_concurrent_and_claim_each_run_once(
        services: Services, limit: int) -> None:
    services.routines.change("demo", {"max_concurrent": limit}, OWNER)
    queue(services, 6)
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    errors: list[BaseException] = []

    def claim(worker: int) -> None:
        start.wait()
        try:
            view = services.runs.claim_next(f"box/w{worker}", 30, global_limit=100)
        except BaseException as exc:  # seen by the test, not lost in the thread
            errors.append(exc)
            return
        if view is not None:
            with lock:
                claimed.append(row_id(view.run))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(claimed) == len(set(claimed)) == limit  # one claim per slot, never more
    assert len(services.runs.with_status(RunStatus.RUNNING)) <= limit


def test_a_beat_renews_only_what_its_worker_holds(services: Services, db: Database) -> None:
    mine, theirs = queue(services, 2)
    assert services.runs.claim_next(W1, 30) is not None
    assert services.runs.claim_next(W2, 30) is not None
    lapse(db, mine)
    assert services.run_leases.renew(W1, [mine, theirs], 30) == {mine}
    assert services.run_leases.lapsed(W2) == []  # renewed: nobody fails it
    services.runs.cancel(theirs, OWNER)  # asked to stop only: still W2's, running
    assert services.run_leases.renew(W2, [theirs], 30) == {theirs}


def test_a_lapsed_lease_fails_its_run_once_naming_the_worker(
        services: Services, db: Database) -> None:
    services.workers.register(WorkerIdentity("box", "w1", WorkerRole.WORKER, True, 1),
                              alive=lambda _: False)
    (run_id,) = queue(services, 1)
    assert services.runs.claim_next(W1, 30) is not None
    assert services.run_leases.lapsed(W2) == []  # within its lease
    lapse(db, run_id)
    assert services.run_leases.lapsed(W1) == []  # its own worker never fails it so
    (lapsed,) = services.run_leases.lapsed(W2)
    assert (lapsed.run_id, lapsed.worker_id) == (run_id, W1) and lapsed.heartbeat_at
    view = services.run_leases.expire(lapsed)
    assert view is not None
    assert (view.run.status, view.run.failure_kind) == (RunStatus.FAILED,
                                                        FailureKind.INTERRUPTED)
    assert view.run.reason == lapsed.reason and "worker box/w1 stopped renewing" in lapsed.reason
    assert services.run_leases.expire(lapsed) is None  # once
    assert services.run_leases.renew(W1, [run_id], 30) == set()  # W1 must kill it now


def test_a_lease_renewed_after_it_was_seen_lapsed_is_not_failed(
        services: Services, db: Database) -> None:
    (run_id,) = queue(services, 1)
    assert services.runs.claim_next(W1, 30) is not None
    lapse(db, run_id)
    (lapsed,) = services.run_leases.lapsed(W2)
    assert services.run_leases.renew(W1, [run_id], 30) == {run_id}  # the beat came late
    assert services.run_leases.expire(lapsed) is None
    assert services.runs.get(run_id).run.status == RunStatus.RUNNING


def test_a_worker_reconciles_its_own_runs_and_those_from_before_workers(
        services: Services) -> None:
    mine, theirs, old = queue(services, 3)
    assert services.runs.claim_next(W1, 30) is not None
    assert services.runs.claim_next(W2, 30) is not None
    assert services.runs.claim_next() is not None  # as before 0009: no worker
    assert [row_id(v.run) for v in services.run_leases.mine_running(W1)] == [mine, old]
    assert services.run_leases.adopt(W1, old, 30)
    assert services.runs.get(old).run.worker_id == W1
    assert not services.run_leases.adopt(W1, theirs, 30)
    assert services.runs.get(theirs).run.worker_id == W2
