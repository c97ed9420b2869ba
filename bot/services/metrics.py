"""Prometheus metrics, read from the database (and the Docker engine) at scrape time.

The database is the truth: several processes may run routines against it and any of
them may restart, so nothing is counted in memory. Each scrape runs a handful of
aggregate queries; run durations are bucketed by the database itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import ColumnElement, case, extract, func, select
from sqlmodel import col

from bot.core.statuses import PENDING_STATUSES, RunStatus
from bot.core.worker import WorkerState
from bot.services.workers import WorkerView
from bot.store.database import Database
from bot.store.tables import KillSwitch, Lease, Routine, Run, as_utc, utcnow
from runner.contract import LABEL_INSTANCE, LABEL_POOL, LABEL_RUN_ID

log = logging.getLogger(__name__)
# Runs last from seconds (a refusal by the engine) to hours (the longest timeout).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
                    3600.0, 7200.0, 14400.0)
ContainerCount = Callable[[], int]
# The processes serving the database, as `WorkerService.all` sees them now.
WorkersSeen = Callable[[], list[WorkerView]]
SCHEDULER_LEASE = "scheduler"  # the `Lease` row of the one process that schedules


def running_containers(docker_client: Any, instance: str) -> ContainerCount:
    """Counts this deployment's run containers that the engine reports running."""

    def count() -> int:
        labels = [f"{LABEL_INSTANCE}={instance}", LABEL_RUN_ID]
        cold = len(docker_client.containers.list(
            filters={"label": labels, "status": "running"}, sparse=True))
        # A warm container given a run has no run-id label (runner.host.pool): its name says.
        warm = docker_client.containers.list(filters={"label": [
            f"{LABEL_INSTANCE}={instance}", LABEL_POOL], "status": "running"})
        return cold + sum(1 for c in warm if "-run-" in c.name)

    return count


def build_registry(db: Database, containers: ContainerCount,
                   workers: WorkersSeen | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoutinesCollector(db, containers, workers))
    return registry


class RoutinesCollector(Collector):
    def __init__(self, db: Database, containers: ContainerCount,
                 workers: WorkersSeen | None = None) -> None:
        self.db = db
        self.containers = containers
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        yield from self._from_database()
        if self.workers is not None:
            yield from self._of_workers(self.workers())
        yield from self._from_engine()

    def _of_workers(self, workers: list[WorkerView]) -> Iterator[Metric]:
        """Every process that served this database: when it last beat, whether that is
        within the lease, the runs it holds; and which one holds the scheduler lease."""
        heartbeat = GaugeMetricFamily(
            "routines_worker_heartbeat_timestamp_seconds",
            "Unix time of the worker's last heartbeat.", labels=["worker", "role"])
        alive = GaugeMetricFamily(
            "routines_worker_alive",
            "1 while the worker's heartbeat is within the lease, else 0 (silent or stopped).",
            labels=["worker", "role"])
        running = GaugeMetricFamily(
            "routines_worker_running_runs", "Runs the worker holds now.", labels=["worker"])
        for worker in workers:
            labels = [worker.id, worker.role.value]
            heartbeat.add_metric(labels, worker.heartbeat_at.timestamp())
            alive.add_metric(labels, 1 if worker.state == WorkerState.ALIVE else 0)
            running.add_metric([worker.id], len(worker.running_runs))
        yield heartbeat
        yield alive
        yield running
        with self.db.session() as session:
            lease = session.get(Lease, SCHEDULER_LEASE)
        holder = GaugeMetricFamily(
            "routines_scheduler_holder",
            "1 for the worker holding the scheduler lease while it holds it, 0 once it "
            "has run out (absent before any process took it).", labels=["worker"])
        if lease is not None:
            holder.add_metric([lease.holder], 1 if as_utc(lease.until) > utcnow() else 0)
        yield holder

    def _from_database(self) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "routines_runs", "Finished runs, by routine and final status.",
            labels=["routine", "status"])
        pending = GaugeMetricFamily(
            "routines_runs_pending", "Runs not finished yet, by routine and status.",
            labels=["routine", "status"])
        tokens = CounterMetricFamily(
            "routines_tokens", "Anthropic API tokens used by finished runs.",
            labels=["routine", "type"])
        queued = 0
        with self.db.session() as session:
            by_status = session.execute(
                select(col(Routine.name), col(Run.status), func.count(),
                       func.sum(Run.input_tokens), func.sum(Run.output_tokens))
                .join(Routine, col(Routine.id) == col(Run.routine_id))
                .group_by(Routine.name, Run.status).order_by(Routine.name, Run.status)).all()
            durations = session.execute(self._duration_query()).all()
            routines = session.execute(
                select(col(Routine.paused_at).is_(None), func.count())
                .group_by(col(Routine.paused_at).is_(None))).all()
            switch = KillSwitch.current(session)
        used: dict[str, list[int]] = {}
        for name, status, count, input_tokens, output_tokens in by_status:
            status = RunStatus(status)
            if status in PENDING_STATUSES:
                pending.add_metric([name, status.value], count)
                queued += count if status == RunStatus.QUEUED else 0
            else:
                finished.add_metric([name, status.value], count)
            totals = used.setdefault(name, [0, 0])
            totals[0] += int(input_tokens or 0)
            totals[1] += int(output_tokens or 0)
        for name, (input_tokens, output_tokens) in used.items():
            tokens.add_metric([name, "input"], input_tokens)
            tokens.add_metric([name, "output"], output_tokens)
        yield finished
        yield pending
        yield GaugeMetricFamily("routines_queue_depth",
                                "Runs queued, waiting for a free slot.", value=queued)
        yield _histogram(durations)
        yield tokens
        states = GaugeMetricFamily("routines_routines", "Routines, by state.",
                                   labels=["state"])
        counts = {bool(active): int(count) for active, count in routines}
        states.add_metric(["active"], counts.get(True, 0))
        states.add_metric(["paused"], counts.get(False, 0))
        yield states
        yield GaugeMetricFamily(
            "routines_kill_switch_engaged",
            "1 while the kill switch is engaged (every trigger held), else 0.",
            value=1 if switch.engaged else 0)

    def _duration_query(self) -> Any:
        seconds = _duration_seconds(self.db.engine.dialect.name)
        return (
            select(col(Routine.name), func.count(), func.sum(seconds),
                   *[func.sum(case((seconds <= bound, 1), else_=0))
                     for bound in DURATION_BUCKETS])
            .join(Routine, col(Routine.id) == col(Run.routine_id))
            .where(col(Run.started_at).is_not(None), col(Run.finished_at).is_not(None))
            .group_by(Routine.name).order_by(Routine.name)
        )

    def _from_engine(self) -> Iterator[Metric]:
        try:
            running: int | None = self.containers()
        except Exception as exc:  # a scrape must still answer when the engine does not
            log.warning("metrics: Docker engine unreachable: %s", exc)
            running = None
        yield GaugeMetricFamily("routines_docker_up",
                                "1 if the Docker engine answered this scrape, else 0.",
                                value=0 if running is None else 1)
        if running is not None:
            yield GaugeMetricFamily(
                "routines_running_containers",
                "Run containers of this deployment that the engine reports running.",
                value=running)


def _duration_seconds(dialect: str) -> ColumnElement[Any]:
    """Seconds from start to finish, computed by the database."""
    if dialect == "sqlite":  # timestamps are stored as UTC text
        return (func.julianday(Run.finished_at) - func.julianday(Run.started_at)) * 86400.0
    return extract("epoch", col(Run.finished_at) - col(Run.started_at))


def _histogram(rows: Sequence[Any]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "routines_run_duration_seconds",
        "Time from a run's start to its verdict, for finished runs.", labels=["routine"])
    for name, count, total, *cumulative in rows:
        buckets = [(str(bound), float(n or 0)) for bound, n in
                   zip(DURATION_BUCKETS, cumulative, strict=True)]
        buckets.append(("+Inf", float(count)))
        family.add_metric([name], buckets, float(total or 0.0))
    return family
