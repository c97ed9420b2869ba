"""Triggers: the rules every door's run request passes, in one place."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot.core import payload as payloads
from bot.core.ratelimit import RateWindow
from bot.core.statuses import (
    ApprovalKind,
    RiskLevel,
    RunStatus,
    TriggerKind,
)
from bot.core.trigger import Trigger
from bot.errors import (
    NothingToRetry,
    RateLimited,
    RoutinePaused,
    RunStillPending,
)
from bot.services.approvals import ApprovalService
from bot.services.context import Service, Shared
from bot.services.events import ApprovalRequested, RunQueued
from bot.services.killswitch import KillSwitchService
from bot.services.spend import SpendService
from bot.services.views import (
    RunView,
    Triggered,
)
from bot.store import audit, queries, trigger_hits
from bot.store.queries import row_id
from bot.store.tables import (
    Routine,
    Run,
    utcnow,
)


class TriggerService(Service):
    def __init__(self, shared: Shared, kill_switch: KillSwitchService, spend: SpendService,
                 approvals: ApprovalService) -> None:
        super().__init__(shared)
        self.kill_switch = kill_switch
        self.spend = spend
        self.approvals = approvals

    def trigger(self, name: str, trigger: Trigger) -> Triggered:
        """Queue a run, whichever door it came through. Written before this returns, so an
        acknowledgement never lies; a repeated `trigger.ref` returns the first run."""
        with self.db.session() as session:
            triggered = self.trigger_in(session, self._require(session, name), trigger)
        self.queued(triggered)
        return triggered

    def trigger_in(self, session: Session, routine: Routine, trigger: Trigger,
                   requester: str | None = None) -> Triggered:
        """The rules of every trigger, inside the caller's unit of work (one commit).

        `requester` is who may not approve the run (the actor, or an API token's creator).
        """
        self.kill_switch.refuse_if_engaged(session)
        if routine.paused:
            raise RoutinePaused(routine.name, routine.paused_by)
        earlier = queries.run_for_ref(session, routine, trigger)
        if earlier is not None:
            return Triggered(RunView(earlier, routine), replayed=True)
        # The budgets first: a refusal is audited in a session of its own, which on SQLite
        # must not wait for the write lock the rate window takes next.
        self.spend.enforce(session, routine)
        now = utcnow()
        retry_after = self.rate_windows(session, [row_id(routine)], now)[row_id(routine)] \
            .retry_after()
        if retry_after is not None:
            raise RateLimited(routine.name, retry_after)
        run = self.new_run(routine, trigger)
        try:
            with self.db.savepoint(session):  # a conflict undoes this run only
                session.add(run)
                session.flush()  # assigns the id; the row's other values are known
        except IntegrityError:  # the same ref, committed a moment ago by another call
            earlier = queries.run_for_ref(session, routine, trigger)
            assert earlier is not None
            return Triggered(RunView(earlier, routine), replayed=True)
        trigger_hits.record(session, [(row_id(routine), now)])
        approval = None
        if run.status == RunStatus.AWAITING_APPROVAL:
            approval = self.approvals.request(session, run, routine, ApprovalKind.START,
                                              requester or trigger.actor)
        audit.record(session, trigger.actor, "run", routine.name,
               f"run #{run.id} by {trigger.kind}" + (" (awaiting approval)" if approval else ""))
        return Triggered(RunView(run, routine), replayed=False, approval=approval)

    def rate_windows(self, session: Session, routine_ids: Iterable[int],
                     now: datetime) -> dict[int, RateWindow]:
        """The rate limit's window of each routine by id, locked until the caller's unit of
        work ends: shared by every door and every process (`bot.store.trigger_hits`). The
        caller records the hits of the triggers it accepts in that unit of work."""
        limit = self.policy.triggers_per_minute
        return trigger_hits.windows(session, dict.fromkeys(routine_ids, limit), now)

    @staticmethod
    def new_run(routine: Routine, trigger: Trigger) -> Run:
        """The run a trigger that passed the rules queues, not yet written."""
        return Run(**TriggerService.run_values(routine, trigger))

    @staticmethod
    def run_values(routine: Routine, trigger: Trigger) -> dict[str, Any]:
        """What the run row of a trigger that passed the rules holds (the table's defaults
        aside): the payload mapped into the prompt by the routine's template
        (`PayloadRejected` if it cannot be), a high-risk routine's run waiting for its
        approval. Plain values, so a group commit writes many rows without building them."""
        values: dict[str, Any] = {
            "routine_id": row_id(routine), "trigger_kind": trigger.kind,
            "triggered_by": trigger.actor, "trigger_ref": trigger.ref,
            "prompt": routine.prompt, "status": RunStatus.QUEUED}
        if trigger.has_payload:
            rendered = payloads.render(routine.payload_template, trigger.payload)
            values["prompt"] = payloads.compose_prompt(routine.prompt, trigger.describe(),
                                                       rendered)
            values["payload_hash"] = payloads.payload_hash(trigger.payload)
        if routine.risk == RiskLevel.HIGH:
            values["status"] = RunStatus.AWAITING_APPROVAL
        return values

    def queued(self, triggered: Triggered) -> None:
        """After the trigger's unit of work is committed: say what now waits."""
        if triggered.replayed:
            return
        self.bus.publish(ApprovalRequested() if triggered.approval else RunQueued())

    def retry(self, run_id: int, actor: str) -> Triggered:
        """Run a finished, unsuccessful run again: same prompt and payload provenance, by
        `actor`, through every rule of a trigger. Twice for one run gives the first retry."""
        with self.db.session() as session:
            failed, routine = queries.run_with_routine(session, run_id)
            if not RunStatus(failed.status).finished:
                raise RunStillPending(run_id, failed.status)
            if failed.status == RunStatus.SUCCEEDED:
                raise NothingToRetry(run_id, routine.name)
            triggered = self.trigger_in(session, routine, Trigger(
                TriggerKind.MANUAL, actor, ref=f"retry-of-{run_id}"))
            if not triggered.replayed:
                run = triggered.view.run
                run.prompt, run.payload_hash, run.retry_of = (failed.prompt, failed.payload_hash,
                                                             run_id)
                audit.record(session, actor, "run_retried", routine.name, f"#{run_id} as #{run.id}")
        self.queued(triggered)
        return triggered
