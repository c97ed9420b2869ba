"""The processes serving this database: registered at start, beating while they live,
marked when they stop; what `/metrics`, `routines doctor` and the App Home show."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlmodel import col, select

from bot.core.statuses import RunStatus
from bot.core.worker import WorkerIdentity, WorkerRole, WorkerState, worker_state
from bot.errors import WorkerIdInUse
from bot.services.context import Service
from bot.store.tables import Run, Worker, as_utc, utcnow


@dataclass(frozen=True)
class WorkerView:
    id: str
    role: WorkerRole
    executes: bool
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    state: WorkerState
    running_runs: tuple[int, ...]  # the runs it holds now


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has that pid (a worker id names a host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerService(Service):
    def register(self, me: WorkerIdentity,
                 alive: Callable[[int], bool] = pid_alive) -> None:
        """Say this process serves the database under its id; refused while a live process
        of this host holds the same id (it would adopt this one's containers)."""
        now = utcnow()
        with self.db.session() as session:
            row = session.get(Worker, me.id, with_for_update=True)
            if (row is not None and row.stopped_at is None and row.pid != me.pid
                    and alive(row.pid)):
                raise WorkerIdInUse(me.id, row.pid)
            if row is None:
                row = Worker(id=me.id, host=me.host, name=me.name, role=me.role, pid=me.pid)
            row.role, row.executes, row.pid = me.role, me.executes, me.pid
            row.started_at = row.heartbeat_at = now
            row.stopped_at = None
            session.add(row)

    def beat(self, worker_id: str) -> None:
        with self.db.session() as session:
            session.execute(update(Worker).where(col(Worker.id) == worker_id)
                            .values(heartbeat_at=utcnow()))

    def stopped(self, worker_id: str) -> None:
        with self.db.session() as session:
            session.execute(update(Worker).where(col(Worker.id) == worker_id)
                            .values(stopped_at=utcnow()))

    def all(self, lease_seconds: float) -> list[WorkerView]:
        """Every worker ever registered, with its state and the runs it holds now."""
        now = utcnow()
        with self.db.session() as session:
            workers = session.exec(select(Worker).order_by(col(Worker.id))).all()
            held: dict[str, list[int]] = {}
            for worker_id, run_id in session.exec(
                    select(Run.worker_id, Run.id).where(
                        Run.status == RunStatus.RUNNING, col(Run.worker_id).is_not(None))
                    .order_by(col(Run.id))).all():
                if worker_id is not None and run_id is not None:
                    held.setdefault(worker_id, []).append(run_id)
            return [WorkerView(
                w.id, WorkerRole(w.role), w.executes, w.pid, as_utc(w.started_at),
                as_utc(w.heartbeat_at),
                worker_state(as_utc(w.heartbeat_at),
                             as_utc(w.stopped_at) if w.stopped_at else None, now,
                             lease_seconds),
                tuple(held.get(w.id, ()))) for w in workers]
