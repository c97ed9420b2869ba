"""Runs: claimed, followed, finished with a verdict, retried, announced, cancelled."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core import retry
from bot.core.roles import Action
from bot.core.run_log import clip_event, egress_refusals
from bot.core.statuses import (
    FAILURES,
    NOT_STARTED,
    PENDING_STATUSES,
    ApprovalKind,
    ApprovalStatus,
    FailureKind,
    RiskLevel,
    RunStatus,
    StopKind,
)
from bot.core.verdict import RunOutcome
from bot.errors import (
    RunAlreadyEnded,
)
from bot.services.approvals import ApprovalService
from bot.services.context import Service, Shared
from bot.services.events import ApprovalRequested, RunQueued, StopRequested
from bot.services.views import (
    RunView,
)
from bot.store import audit, queries, rollups
from bot.store.queries import known_id, row_id
from bot.store.tables import (
    Approval,
    KillSwitch,
    Routine,
    Run,
    RunEvent,
    as_utc,
    utcnow,
)
from runner.contract import Event, Resume, RunSpec
from runner.egress_policy import EGRESS_EVENT

# The advisory lock every claim transaction takes on PostgreSQL: any constant of our own,
# not the schema upgrade's (bot/store/schema.py).
CLAIM_LOCK_KEY = 7_305_012
ANNOUNCE_BATCH = 200  # unposted results looked at per pass: Slack takes about one a second


class RunService(Service):
    def __init__(self, shared: Shared, approvals: ApprovalService) -> None:
        super().__init__(shared)
        self.approvals = approvals

    def get(self, run_id: int) -> RunView:
        with self.db.session() as session:
            run, routine = queries.run_with_routine(session, run_id)
            egress = session.exec(select(RunEvent.data).where(
                RunEvent.run_id == run_id, RunEvent.type == EGRESS_EVENT)).all()
            return RunView(run, routine, self._scheduled_retry(session, run, routine),
                           egress_refusals([json.loads(data) for data in egress]))

    def events(self, run_id: int) -> list[Event]:
        self.get(run_id)
        with self.db.session() as session:
            rows = session.exec(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.seq))
            ).all()
            return [json.loads(row.data) for row in rows]

    def claim_next(self, worker_id: str | None = None, lease_seconds: float = 30.0,
                   global_limit: int | None = None) -> RunView | None:
        """Move the oldest startable queued run to `running`, held by `worker_id` until
        its lease ends (renewed by the worker's heartbeat); safe when workers race.

        Startable: the kill switch is off, the run is not held, its retry backoff is over,
        fewer than `global_limit` runs are running in the whole database, and its routine
        is under its own `max_concurrent`. On PostgreSQL the claim transactions of every
        process take one advisory lock, so these counts hold exactly across processes
        (SKIP LOCKED then only passes over rows another transaction is writing, say a
        cancel); on SQLite the write lock does the same and the UPDATE stays conditional."""
        now = utcnow()
        with self.db.session() as session:
            postgres = session.connection().dialect.name == "postgresql"
            if postgres:
                session.connection().exec_driver_sql(
                    f"SELECT pg_advisory_xact_lock({CLAIM_LOCK_KEY})")
            if KillSwitch.current(session).engaged:
                return None
            if global_limit is not None and session.exec(
                    select(func.count()).select_from(Run).where(
                        Run.status == RunStatus.RUNNING)).one() >= global_limit:
                return None
            query = (select(Run.id, Run.routine_id, Routine.max_concurrent)
                     .join(Routine, col(Routine.id) == col(Run.routine_id))
                     .where(Run.status == RunStatus.QUEUED, col(Run.held_at).is_(None),
                            or_(col(Run.not_before).is_(None), col(Run.not_before) <= now))
                     .order_by(col(Run.id)).limit(200))
            if postgres:
                query = query.with_for_update(of=Run, skip_locked=True)
            busy: set[int] = set()
            for run_id, routine_id, limit in session.exec(query).all():
                if routine_id in busy or (limit is not None and session.exec(
                        select(func.count()).select_from(Run).where(
                            Run.routine_id == routine_id,
                            Run.status == RunStatus.RUNNING)).one() >= limit):
                    busy.add(routine_id)
                    continue
                claimed = session.execute(
                    update(Run).where(col(Run.id) == run_id,
                                      col(Run.status) == RunStatus.QUEUED)
                    .values(status=RunStatus.RUNNING, started_at=now, worker_id=worker_id,
                            lease_until=now + timedelta(seconds=lease_seconds)))
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # taken meanwhile (SQLite reads before it writes): the next one
                break
            else:
                return None
        return self.get(known_id(run_id))

    def spec(self, view: RunView) -> RunSpec:
        routine, run = view.routine, view.run
        return RunSpec(
            run_id=row_id(run),
            routine=routine.name,
            prompt=run.prompt,
            repo_url=routine.repo_url,
            branch=routine.branch,
            model=routine.model,
            timeout_seconds=routine.timeout_seconds,
            max_turns=routine.max_turns,
            setup_script=routine.setup_script,
            max_tokens=routine.max_tokens_per_run,
            publish=routine.risk == RiskLevel.MEDIUM,
            egress=routine.egress.with_trusted(self.policy.trusted_hosts).to_spec(),
            engine=routine.engine.value,
            repo_config=routine.repo_config.value,
        )

    def with_status(self, status: RunStatus) -> list[RunView]:
        with self.db.session() as session:
            ids = session.exec(select(Run.id).where(Run.status == status)).all()
        return [self.get(run_id) for run_id in ids if run_id is not None]

    def stop_requested(self, run_ids: list[int]) -> list[int]:
        """Which of these runs were asked to stop (cancel, kill switch), from any process."""
        with self.db.session() as session:
            return [run_id for run_id in session.exec(select(Run.id).where(
                col(Run.id).in_(run_ids), col(Run.stop_kind).is_not(None),
                Run.status == RunStatus.RUNNING)).all() if run_id is not None]

    def record_container(self, run_id: int, container_id: str) -> None:
        with self.db.session() as session:
            session.execute(update(Run).where(col(Run.id) == run_id)
                            .values(container_id=container_id))

    def record_event(self, run_id: int, seq: int, event: Event) -> None:
        """Store one event, redacted. A replayed `seq` (after adoption) is ignored."""
        row = RunEvent(run_id=run_id, seq=seq, type=str(event.get("type")),
                       data=json.dumps(self.redact.structure(clip_event(event))))
        try:
            with self.db.session() as session:
                session.add(row)
        except IntegrityError:
            pass  # already stored by an earlier process following the same container

    def last_event_seq(self, run_id: int) -> int:
        with self.db.session() as session:
            return int(session.exec(
                select(func.coalesce(func.max(RunEvent.seq), 0)).where(RunEvent.run_id == run_id)
            ).one())

    def resume(self, run_id: int) -> Resume:
        """Where following an adopted run picks up: from its stored log (the container
        events to skip, the next seq, the gateway's usage and report so far)."""
        return Resume.from_log(self.events(run_id), self.last_event_seq(run_id))

    def finish(self, run_id: int, outcome: RunOutcome, input_tokens: int,
               output_tokens: int, diff: str, commit: str | None = None) -> RunView:
        """Record the verdict once; a run that already finished keeps its first verdict.

        A medium-risk run that succeeded with a kept `commit` asks for publish approval."""
        return self.finish_once(run_id, outcome, input_tokens, output_tokens, diff, commit)[0]

    def finish_lapsed(self, run_id: int, outcome: RunOutcome, now: datetime) -> RunView | None:
        """Record the verdict of a run whose lease ended before `now` (its worker stopped
        renewing it), only if it is still so: the view if this call finished it, None if
        it had finished already or its lease was renewed meanwhile."""
        view, finished = self.finish_once(run_id, outcome, 0, 0, "", None, lapsed_before=now)
        return view if finished else None

    def finish_once(self, run_id: int, outcome: RunOutcome, input_tokens: int,
                    output_tokens: int, diff: str, commit: str | None,
                    lapsed_before: datetime | None = None) -> tuple[RunView, bool]:
        """`finish`, and whether this call recorded the verdict (False: it had one)."""
        retried = False
        with self.db.session() as session:
            run, routine = queries.run_with_routine(session, run_id)
            outcome = self._stopped_outcome(session, outcome, run)
            publish = (commit is not None and routine.risk == RiskLevel.MEDIUM
                       and outcome.status == RunStatus.SUCCEEDED)
            only = [col(Run.id) == run_id, col(Run.status).in_(PENDING_STATUSES)]
            if lapsed_before is not None:
                only += [col(Run.status) == RunStatus.RUNNING,
                         col(Run.lease_until) < lapsed_before]
            finished = session.execute(
                update(Run)
                .where(*only)
                .values(status=outcome.status,
                        summary=self.redact(outcome.summary) if outcome.summary else None,
                        reason=self.redact(outcome.reason) if outcome.reason else None,
                        failure_kind=outcome.failure,
                        input_tokens=input_tokens, output_tokens=output_tokens,
                        diff=self.redact(diff), finished_at=utcnow(),
                        commit_sha=commit if publish else None)
                # The session's rows are brought up to date from the database: comparing a
                # lease in Python would mix SQLite's naive times with aware ones.
                .execution_options(synchronize_session="fetch" if lapsed_before else "auto"))
            approval = None
            if finished.rowcount == 1:  # type: ignore[attr-defined]
                rollups.count_finished(session, [run_id])
                retried = self._queue_retry(session, run_id)
                if publish:
                    session.refresh(run)
                    approval = self.approvals.request(session, run, routine,
                                                      ApprovalKind.PUBLISH, run.triggered_by)
        if retried:
            self.bus.publish(RunQueued())
        if approval is not None:
            self.bus.publish(ApprovalRequested())
        return self.get(run_id), finished.rowcount == 1  # type: ignore[attr-defined]

    @staticmethod
    def _stopped_outcome(session: Session, outcome: RunOutcome, run: Run) -> RunOutcome:
        """A killed container was stopped on purpose: by the kill switch or a cancel."""
        if outcome.status != RunStatus.KILLED:
            return outcome
        stopped_by = run.stop_requested_by
        if run.stop_kind == StopKind.KILL_SWITCH:
            state = KillSwitch.current(session)
            why = f": {state.reason}" if state.reason else ""
            return RunOutcome(RunStatus.KILLED, None, f"killed by the kill switch{why}",
                              FailureKind.KILLED)
        if run.stop_kind == StopKind.CANCEL:
            return RunOutcome(RunStatus.CANCELLED, None, f"cancelled by <@{stopped_by}>",
                              FailureKind.CANCELLED)
        return outcome

    def to_announce(self, worker_id: str, settled_seconds: float = 0.0,
                    limit: int = ANNOUNCE_BATCH) -> list[RunView]:
        """Finished runs whose result message has not reached Slack yet and that no other
        live process has claimed (`claim_announcement`), the oldest `limit` of them (a
        backlog after a long Slack outage is taken a batch per sweep, not loaded whole);
        with `settled_seconds`, only those finished at least that long ago (a sweep leaves
        a fresh result to the process that ran it, and this worker's own live claims too:
        one it holds off after Slack refused it waits out its time)."""
        now = utcnow()
        sweep = settled_seconds > 0
        query = select(Run.id).where(col(Run.notified_at).is_(None),
                                     col(Run.finished_at).is_not(None),
                                     _claimable(None if sweep else worker_id, now))
        if sweep:
            query = query.where(col(Run.finished_at) < now - timedelta(seconds=settled_seconds))
        with self.db.session() as session:
            ids = session.exec(query.order_by(col(Run.id)).limit(limit)).all()
        return [self.get(run_id) for run_id in ids if run_id is not None]

    def claim_announcement(self, run_id: int, worker_id: str, seconds: float) -> bool:
        """Take the posting of the run's result for `seconds`: True if this worker now holds
        it. False if it is announced already or another worker's claim is live; a claim
        of a process that died ends with its time, and another takes it then. One
        conditional UPDATE, so of two processes racing, one wins."""
        now = utcnow()
        with self.db.session() as session:
            claimed = session.execute(
                update(Run).where(col(Run.id) == run_id, col(Run.notified_at).is_(None),
                                  col(Run.finished_at).is_not(None), _claimable(worker_id, now))
                .values(announce_claimed_by=worker_id,
                        announce_claim_until=now + timedelta(seconds=seconds)))
            return bool(claimed.rowcount)  # type: ignore[attr-defined]

    def release_announcement(self, run_id: int, worker_id: str,
                             hold_seconds: float = 0.0) -> None:
        """Posting failed: the claim is given up so the result is tried again, by this
        process later or by another. With `hold_seconds`, the claim is kept that long
        first (Slack refused it outright: not every few seconds, nor by every process)."""
        until = utcnow() + timedelta(seconds=hold_seconds) if hold_seconds > 0 else None
        with self.db.session() as session:
            session.execute(update(Run).where(
                col(Run.id) == run_id, col(Run.announce_claimed_by) == worker_id,
                col(Run.notified_at).is_(None)).values(
                announce_claimed_by=worker_id if until is not None else None,
                announce_claim_until=until))

    def mark_announced(self, run_id: int) -> None:
        """Posted: it is never posted again, and its claim is done with."""
        with self.db.session() as session:
            session.execute(update(Run).where(col(Run.id) == run_id)
                            .values(notified_at=utcnow(), announce_claimed_by=None,
                                    announce_claim_until=None))

    def record_announcement(self, run_id: int, channel: str, ts: str) -> None:
        """Where the run's result message is: its log is posted in that thread."""
        with self.db.session() as session:
            session.execute(update(Run).where(col(Run.id) == run_id)
                            .values(announce_channel=channel, announce_ts=ts))

    def cancel(self, run_id: int, actor: str) -> RunView:
        """Stop one run: a waiting or queued one ends at once, a running one is killed."""
        view = self.get(run_id)
        self._check(actor, Action.CANCEL, view.routine, requester=view.run.triggered_by)
        if view.run.status.finished:
            raise RunAlreadyEnded(run_id, view.run.status)
        with self.db.session() as session:
            session.execute(update(Approval).where(
                col(Approval.run_id) == run_id, col(Approval.status) == ApprovalStatus.PENDING)
                .values(status=ApprovalStatus.WITHDRAWN, decided_by=actor, decided_at=utcnow()))
            ended = session.execute(update(Run).where(
                col(Run.id) == run_id,
                col(Run.status).in_(NOT_STARTED)).values(
                status=RunStatus.CANCELLED, finished_at=utcnow(),
                reason=f"cancelled by {actor} before it started"))
            if ended.rowcount == 1:  # type: ignore[attr-defined]
                rollups.count_finished(session, [run_id])
            else:
                session.execute(update(Run).where(col(Run.id) == run_id)
                                .values(stop_requested_by=actor, stop_kind=StopKind.CANCEL))
            audit.record(session, actor, "cancel", view.routine.name, f"run #{run_id}")
        if ended.rowcount != 1:  # type: ignore[attr-defined]
            self.bus.publish(StopRequested(run_id))
        return self.get(run_id)

    def _queue_retry(self, session: Session, run_id: int) -> bool:
        """Apply the routine's retry policy to a run that just finished (same unit of work):
        the next attempt keeps the trigger's provenance and waits out its backoff."""
        run, routine = queries.run_with_routine(session, run_id)
        decision = retry.decide_retry(retry.policy_of(routine), RunStatus(run.status),
                                      run.attempt, run.failure_kind, utcnow())
        held = routine.paused or KillSwitch.current(session).engaged
        if not decision.retry or held:
            return False
        session.add(Run(routine_id=run.routine_id, trigger_kind=run.trigger_kind,
                        triggered_by=run.triggered_by, payload_hash=run.payload_hash,
                        prompt=run.prompt, attempt=decision.attempt, retry_of=run_id,
                        not_before=decision.not_before))
        return True

    @staticmethod
    def _scheduled_retry(session: Session, run: Run,
                         routine: Routine) -> retry.ScheduledRetry | None:
        if run.status not in FAILURES or run.finished_at is None:
            return None
        nxt = session.exec(select(Run).where(Run.retry_of == run.id,
                                             Run.attempt == run.attempt + 1)).first()
        if nxt is None or nxt.id is None or nxt.not_before is None:
            return None
        delay = (as_utc(nxt.not_before) - as_utc(run.finished_at)).total_seconds()
        return retry.ScheduledRetry(nxt.id, nxt.attempt,
                                    max(1 + routine.retry_attempts, nxt.attempt),
                                    max(round(delay), 0))


def _claimable(worker_id: str | None, now: datetime) -> Any:
    """No live claim of another worker: none, one that ran out, or this worker's own (a
    restarted process of the same id takes its own claims back); None: no live claim."""
    free = [col(Run.announce_claimed_by).is_(None), col(Run.announce_claim_until) <= now]
    if worker_id is not None:
        free.append(col(Run.announce_claimed_by) == worker_id)
    return or_(*free)
