"""Who serves the database (docs/scale-out.md): a process is a worker by its stable id
"host/name", alive while its heartbeat is younger than the lease."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class WorkerRole(StrEnum):
    SERVE = "serve"  # the doors (Slack, HTTP), the scheduler's candidate, and runs unless off
    WORKER = "worker"  # runs only


class WorkerState(StrEnum):
    ALIVE = "alive"  # its heartbeat is within the lease
    SILENT = "silent"  # no heartbeat within the lease: dead, or cut off; its runs are lost
    STOPPED = "stopped"  # it said so as it stopped


@dataclass(frozen=True)
class WorkerIdentity:
    host: str
    name: str
    role: WorkerRole
    executes: bool
    pid: int

    @property
    def id(self) -> str:
        return f"{self.host}/{self.name}"


def worker_state(heartbeat_at: datetime, stopped_at: datetime | None, now: datetime,
                 lease_seconds: float) -> WorkerState:
    if stopped_at is not None:
        return WorkerState.STOPPED
    if now - heartbeat_at > timedelta(seconds=lease_seconds):
        return WorkerState.SILENT
    return WorkerState.ALIVE


@dataclass(frozen=True)
class LapsedLease:
    """A running run whose worker stopped renewing its lease (dead, cut off, frozen): it
    is failed as interrupted by whichever process sees it first, the worker named, so the
    routine's retry policy applies as for any infrastructure fault."""

    run_id: int
    worker_id: str
    heartbeat_at: datetime | None  # the worker's last, None if it never registered

    @property
    def reason(self) -> str:
        last = ("never registered" if self.heartbeat_at is None
                else f"last heartbeat {self.heartbeat_at:%H:%M:%S}Z")
        return f"interrupted: worker {self.worker_id} stopped renewing its lease ({last})"


def beat_interval(lease_seconds: float) -> float:
    """How often a process beats and renews its runs' leases: three beats per lease, so
    one late or lost beat never lets a lease lapse."""
    return lease_seconds / 3
