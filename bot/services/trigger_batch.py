"""Group commit of API triggers: the calls that arrive together share one transaction.

Why: each trigger must be on disk before its 202, and a commit (an fsync on SQLite, a
round trip and a WAL flush on PostgreSQL) costs far more than the rules themselves. One
commit for every call that arrived while the previous one was being written keeps every
trigger durable before its answer and divides that cost among them.

Every rule of a single trigger still applies to each call, in the same order as
`TriggerService.trigger_in` (the live token of this very routine, the kill switch, pause,
idempotency, the rate limit, budgets, the payload template) and each run is audited as
there. The state the rules read (the switch, the tokens, the routines, earlier runs with
the same keys, the budgets' counts) is read once per batch inside the transaction, so a
revoked token or an engaged switch refuses from the next batch on. A refused call writes
nothing, so it takes nothing of the others with it and gets its own error; the accepted
runs are written with one multi-row INSERT. Should that INSERT meet a key that another
door committed meanwhile, it is undone to its savepoint and the runs go in one by one,
each in its own savepoint, the conflicting one answered as a replay. A high-risk
routine's call needs an approval: it goes through `trigger_in` itself, in a savepoint.

A database error anywhere in the batch rolls back all of it: every call is answered
`DatabaseUnavailable` (a 503, retried safely with its Idempotency-Key), none half-written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from bot.core.budget import TriggerBudget
from bot.core.statuses import RiskLevel, TriggerKind
from bot.core.trigger import Trigger
from bot.errors import (
    BudgetExceeded,
    DatabaseProblem,
    DatabaseUnavailable,
    InvalidToken,
    KillSwitchEngaged,
    RateLimited,
    RoutinePaused,
    RoutinesError,
)
from bot.services.context import Service, Shared
from bot.services.events import RunQueued
from bot.services.triggers import TriggerService
from bot.services.views import RunView, Triggered
from bot.store import queries
from bot.store.tables import ApiToken, AuditEntry, KillSwitch, Routine, Run, utcnow

log = logging.getLogger(__name__)
RUN_TABLE = Run.__table__  # type: ignore[attr-defined]
AUDIT_TABLE = AuditEntry.__table__  # type: ignore[attr-defined]
RUN_COLUMNS = tuple(c.key for c in RUN_TABLE.columns if c.key != "id")
AUDIT_COLUMNS = tuple(c.key for c in AUDIT_TABLE.columns if c.key != "id")

Outcome = Triggered | RoutinesError


@dataclass(frozen=True)
class ApiCall:
    """One call of the API door, as the door read it: the routine it names, its bearer
    token, its JSON payload and its Idempotency-Key."""

    name: str
    bearer: str
    payload: object
    key: str | None


@dataclass(frozen=True)
class _Token:
    id: int
    name: str
    created_by: str
    routine_id: int


@dataclass
class _RoutineState:
    """What the batch read of one routine: the row, its earlier runs with this batch's
    keys (and those queued by the batch so far), and its budgets' counts."""

    routine: Routine
    earlier: dict[str, Run]
    budget: TriggerBudget


@dataclass
class _Pending:
    """An accepted call's run and audit entry, not yet written."""

    index: int
    run: Run
    routine: Routine
    audit: AuditEntry


@dataclass
class _Batch:
    calls: Sequence[ApiCall]
    switch: KillSwitch
    tokens: dict[str, _Token]
    states: dict[int, _RoutineState] = field(default_factory=dict)
    outcomes: list[Outcome | None] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)


class TriggerBatchService(Service):
    def __init__(self, shared: Shared, triggers: TriggerService) -> None:
        super().__init__(shared)
        self.triggers = triggers

    def trigger_api_calls(self, calls: Sequence[ApiCall]) -> list[Outcome]:
        """Each call's run (or its refusal), in the order given, all in one transaction:
        committed before this returns. `DatabaseUnavailable` for every call if the
        database failed anywhere in it (then nothing of it is kept)."""
        try:
            with self.db.session() as session:
                outcomes = self._apply(session, calls)
        except SQLAlchemyError as exc:  # not an outage `session()` knows: still nothing kept
            log.exception("a group commit of %d API triggers failed", len(calls))
            raise DatabaseUnavailable(DatabaseProblem.FAILED) from exc
        self._announce(outcomes)
        return outcomes

    def _apply(self, session: Session, calls: Sequence[ApiCall]) -> list[Outcome]:
        batch = _Batch(calls, KillSwitch.current(session), self._live_tokens(session, calls))
        batch.outcomes = [None] * len(calls)
        for index, call in enumerate(calls):
            try:
                self._decide(session, batch, index, call)
            except RoutinesError as exc:
                batch.outcomes[index] = exc
        self._write(session, batch)
        for index, outcome in enumerate(batch.outcomes):
            if isinstance(outcome, Triggered) and outcome.view.run.id is None:
                # a replay of this batch's run that lost its key to another writer
                batch.outcomes[index] = self._earlier(session, outcome.view)
        used = {batch.tokens[queries.token_hash(c.bearer)].id for c, o in
                zip(calls, batch.outcomes, strict=True) if isinstance(o, Triggered)}
        if used:  # the tokens' last use is written with their runs
            session.execute(update(ApiToken).where(col(ApiToken.id).in_(used))
                            .values(last_used_at=utcnow()))
        assert all(outcome is not None for outcome in batch.outcomes)
        return [outcome for outcome in batch.outcomes if outcome is not None]

    @staticmethod
    def _live_tokens(session: Session, calls: Sequence[ApiCall]) -> dict[str, _Token]:
        """The batch's unrevoked tokens by hash, read in its transaction (one query)."""
        hashes = {queries.token_hash(call.bearer) for call in calls if call.bearer}
        rows = session.execute(sqlalchemy.select(
            col(ApiToken.token_hash), col(ApiToken.id), col(ApiToken.name),
            col(ApiToken.created_by), col(ApiToken.routine_id)).where(
            col(ApiToken.token_hash).in_(hashes), col(ApiToken.revoked_at).is_(None))).all()
        return {digest: _Token(token_id, name, creator, routine_id)
                for digest, token_id, name, creator, routine_id in rows}

    def _state(self, session: Session, batch: _Batch, routine_id: int) -> _RoutineState | None:
        """The routine's state, read the first time one of its calls comes up."""
        state = batch.states.get(routine_id)
        if state is None:
            routine = session.get(Routine, routine_id)
            if routine is None:
                return None
            keys = {call.key for call in batch.calls if call.key is not None}
            earlier = {run.trigger_ref or "": run for run in session.exec(select(Run).where(
                Run.routine_id == routine_id, Run.trigger_kind == TriggerKind.API,
                col(Run.trigger_ref).in_(keys)))} if keys else {}
            state = _RoutineState(routine, earlier,
                                  self.triggers.spend.budget_of(session, routine))
            batch.states[routine_id] = state
        return state

    def _decide(self, session: Session, batch: _Batch, index: int, call: ApiCall) -> None:
        """One call through the rules of `TriggerService.trigger_in`, in its order."""
        token = batch.tokens.get(queries.token_hash(call.bearer)) if call.bearer else None
        state = self._state(session, batch, token.routine_id) if token else None
        if token is None or state is None or state.routine.name != call.name.strip().lower():
            raise InvalidToken()
        routine = state.routine
        trigger = Trigger(TriggerKind.API, f"token:{token.name}", ref=call.key,
                          payload=call.payload)
        if routine.risk == RiskLevel.HIGH:  # an approval to request: the single path
            batch.outcomes[index] = self._one_by_one(session, batch, routine, trigger,
                                                     token.created_by)
            return
        if batch.switch.engaged:
            raise KillSwitchEngaged(batch.switch.reason, batch.switch.changed_by)
        if routine.paused:
            raise RoutinePaused(routine.name, routine.paused_by)
        earlier = state.earlier.get(call.key) if call.key is not None else None
        if earlier is not None:
            batch.outcomes[index] = Triggered(RunView(earlier, routine), replayed=True)
            return
        retry_after = self.triggers.rate_limit.hit(routine.name)
        if retry_after is not None:
            raise RateLimited(routine.name, retry_after)
        refusal = state.budget.refusal()
        if isinstance(refusal, BudgetExceeded):
            self.triggers.spend.record_hit(session, routine, refusal)  # kept: not rolled back
        if refusal is not None:
            raise refusal
        run = self.triggers.new_run(routine, trigger)
        state.budget.admit()
        if call.key is not None:
            state.earlier[call.key] = run  # the same key again in this batch: a replay
        batch.pending.append(_Pending(index, run, routine, AuditEntry(
            actor=trigger.actor, action="run", routine=routine.name, details="")))

    def _one_by_one(self, session: Session, batch: _Batch, routine: Routine,
                    trigger: Trigger, requester: str) -> Triggered:
        """A call through `trigger_in` itself, in a savepoint of the shared transaction.
        Its counts need not include the batch's pending runs: those are of other routines
        (every call of a high-risk routine takes this path)."""
        with session.begin_nested():
            return self.triggers.trigger_in(session, routine, trigger, requester=requester)

    def _write(self, session: Session, batch: _Batch) -> None:
        """The pending runs in one INSERT, then their audit entries in another."""
        pending, batch.pending = batch.pending, []
        if not pending:
            return
        try:
            with session.begin_nested():
                ids = session.execute(insert(RUN_TABLE).returning(
                    RUN_TABLE.c.id, sort_by_parameter_order=True),
                    [_row(p.run, RUN_COLUMNS) for p in pending]).scalars().all()
        except IntegrityError:  # a key committed meanwhile by another door or process
            written = [p for p in pending if self._write_one(session, batch, p)]
        else:
            for p, run_id in zip(pending, ids, strict=True):
                p.run.id = run_id
            written = pending
        for p in written:
            p.audit.details = f"run #{p.run.id} by {TriggerKind.API}"
            batch.outcomes[p.index] = Triggered(RunView(p.run, p.routine), replayed=False)
        if written:
            session.execute(insert(AUDIT_TABLE), [_row(p.audit, AUDIT_COLUMNS)
                                                  for p in written])

    @staticmethod
    def _write_one(session: Session, batch: _Batch, pending: _Pending) -> bool:
        """One run in its own savepoint; False (answered as a replay) on a key conflict."""
        run = pending.run
        try:
            with session.begin_nested():
                run.id = session.execute(insert(RUN_TABLE).returning(RUN_TABLE.c.id),
                                         _row(run, RUN_COLUMNS)).scalar_one()
        except IntegrityError:
            batch.outcomes[pending.index] = TriggerBatchService._earlier(
                session, RunView(run, pending.routine))
            return False
        return True

    @staticmethod
    def _earlier(session: Session, view: RunView) -> Triggered:
        """The committed run that holds `view`'s key, as a replay."""
        run = view.run
        earlier = session.exec(select(Run).where(
            Run.routine_id == run.routine_id, Run.trigger_kind == run.trigger_kind,
            Run.trigger_ref == run.trigger_ref)).one()
        return Triggered(RunView(earlier, view.routine), replayed=True)

    def _announce(self, outcomes: list[Outcome]) -> None:
        """After the commit: one wake-up for the queued runs, one per approval asked."""
        queued = False
        for outcome in outcomes:
            if not isinstance(outcome, Triggered) or outcome.replayed:
                continue
            if outcome.approval is not None:
                self.triggers.queued(outcome)
            else:
                queued = True
        if queued:
            self.bus.publish(RunQueued())


def _row(entity: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    """A transient row's column values, the ORM's own defaults included."""
    return {name: getattr(entity, name) for name in columns}
