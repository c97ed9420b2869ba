"""What services return: rows with their context, as doors show them. Frozen data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bot.core import retry
from bot.core.statuses import RunStatus
from bot.errors import RoutinesError
from bot.store.tables import Approval, KillSwitch, Routine, Run, as_utc


@dataclass(frozen=True)
class RunView:
    """A run with its routine, as adapters show it."""

    run: Run
    routine: Routine
    next_retry: retry.ScheduledRetry | None = None  # queued by the retry policy after it
    egress_refusals: int = 0  # requests the egress proxy refused (its `egress` events)

    @property
    def duration_seconds(self) -> float | None:
        if self.run.started_at and self.run.finished_at:
            return (as_utc(self.run.finished_at) - as_utc(self.run.started_at)).total_seconds()
        return None


@dataclass(frozen=True)
class RoutineOverview:
    routine: Routine
    last_run: Run | None
    next_fires: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class Triggered:
    view: RunView
    replayed: bool  # an earlier run with the same Idempotency-Key or delivery id
    approval: Approval | None = None  # a high-risk run waits for this decision


@dataclass(frozen=True)
class QueuedRun:
    """A trigger's answer without the rows: the run that holds it, and its status. What a
    group commit returns for each call (see `bot.services.trigger_batch`)."""

    run_id: int
    status: RunStatus
    replayed: bool  # an earlier run with the same Idempotency-Key

    @classmethod
    def of(cls, triggered: Triggered) -> QueuedRun:
        run = triggered.view.run
        assert run.id is not None
        return cls(run.id, RunStatus(run.status), triggered.replayed)


@dataclass(frozen=True)
class ApprovalView:
    """An approval request with its run and routine, as the request message shows it."""

    approval: Approval
    run: Run
    routine: Routine


@dataclass(frozen=True)
class Delivery:
    """What one GitHub delivery did, routine by routine."""

    event: str
    fired: list[RunView]
    duplicates: list[RunView]
    refused: dict[str, str]  # routine -> why (paused, rate limited, template failed)


@dataclass(frozen=True)
class MissedFires:
    """Scheduled times that will not run: said in the routine's channel, never silent."""

    routine: Routine
    times: tuple[datetime, ...]
    why: str
    more: bool = False  # older missed times were left out


@dataclass(frozen=True)
class HeldRuns:
    """What the kill switch holds: runs that will not start until released or dropped."""

    queued: int
    awaiting_approval: int

    @property
    def total(self) -> int:
        return self.queued + self.awaiting_approval


@dataclass(frozen=True)
class KillSwitchReport:
    state: KillSwitch
    stopping: int  # running runs being killed (engage)
    held: HeldRuns


@dataclass(frozen=True)
class ScheduledFires:
    """What one scheduled time did to the routines due at it (`ScheduleService.fired_all`)."""

    scheduled_for: datetime
    queued: dict[str, int]  # routine -> its run for this time (new, or queued earlier)
    paused: tuple[str, ...] = ()  # skipped: their triggers are held
    refused: dict[str, RoutinesError] = field(default_factory=dict)  # rate limit, budgets...
    held: bool = False  # the kill switch was engaged: none ran, each was recorded missed
