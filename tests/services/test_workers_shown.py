"""The workers made visible, on a real database: `/metrics` names each process serving
it with its last heartbeat, whether it is alive and the runs it holds, and which one
holds the scheduler lease (parsed with prometheus_client's own parser)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlmodel import col

from bot.core.routine import RoutineDraft
from bot.core.trigger import manual
from bot.core.worker import WorkerIdentity, WorkerRole
from bot.services import Services
from bot.services.metrics import SCHEDULER_LEASE, build_registry
from bot.store.tables import Lease, Run, Worker, utcnow
from tests.services.test_group_commit import services_on

pytestmark = pytest.mark.postgres
ADMIN = "U0ADMIN01"
LEASE = 30.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(services: Services) -> Samples:
    registry = build_registry(services.workers.db, lambda: 0,
                              lambda: services.workers.all(LEASE))
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples}


def workers_of_three_kinds(services: Services) -> int:
    """h1/serve alive holding nothing, h2/w2 silent holding a run, h1/old stopped; the
    id of the silent worker's run."""
    for host, name, role in [("h1", "serve", WorkerRole.SERVE), ("h2", "w2", WorkerRole.WORKER),
                             ("h1", "old", WorkerRole.WORKER)]:
        services.workers.register(WorkerIdentity(host, name, role, True, os.getpid() + 1),
                                  alive=lambda _pid: False)
    services.workers.stopped("h1/old")
    services.routines.create(RoutineDraft(name="tidy", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), ADMIN)
    services.triggers.trigger("tidy", manual(ADMIN))
    view = services.runs.claim_next()
    assert view is not None and view.run.id is not None
    with services.workers.db.session() as session:
        session.execute(update(Run).where(col(Run.id) == view.run.id).values(worker_id="h2/w2"))
        session.execute(update(Worker).where(col(Worker.id) == "h2/w2").values(
            heartbeat_at=utcnow() - timedelta(seconds=LEASE * 3)))
    return view.run.id


def test_metrics_name_every_worker_its_heartbeat_and_its_runs(database_url: str) -> None:
    services = services_on(database_url)
    workers_of_three_kinds(services)
    beats = {w.id: w.heartbeat_at.timestamp() for w in services.workers.all(LEASE)}

    samples = scrape(services)

    def of(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    for worker, role, alive, running in [("h1/serve", "serve", 1, 0), ("h2/w2", "worker", 0, 1),
                                         ("h1/old", "worker", 0, 0)]:
        assert of("routines_worker_heartbeat_timestamp_seconds", worker=worker,
                  role=role) == pytest.approx(beats[worker])
        assert of("routines_worker_alive", worker=worker, role=role) == alive
        assert of("routines_worker_running_runs", worker=worker) == running
    assert not any(name == "routines_scheduler_holder" for name, _ in samples)  # no lease yet

    with services.workers.db.session() as session:  # part of the scheduler's work: a lease
        session.add(Lease(name=SCHEDULER_LEASE, holder="h1/serve",
                          until=utcnow() + timedelta(seconds=LEASE), taken_at=utcnow()))
    assert scrape(services)[("routines_scheduler_holder",
                             frozenset({("worker", "h1/serve")}))] == 1
    with services.workers.db.session() as session:  # its holder died: the lease ran out
        session.execute(update(Lease).values(until=utcnow() - timedelta(seconds=1)))
    assert scrape(services)[("routines_scheduler_holder",
                             frozenset({("worker", "h1/serve")}))] == 0


def test_metrics_without_workers_say_none(database_url: str) -> None:
    services = services_on(database_url)
    samples = scrape(services)
    assert not any(name.startswith("routines_worker_") for name, _ in samples)
    assert ("routines_queue_depth", frozenset()) in samples  # the rest still answers
