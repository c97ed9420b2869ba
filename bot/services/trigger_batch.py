"""Group commit of API triggers: the calls that arrive together share one transaction.

Why: each trigger must be on disk before its 202, and a commit (an fsync on SQLite, a
round trip and a WAL flush on PostgreSQL) costs far more than the rules themselves. One
commit for every call that arrived while the previous one was being written keeps every
trigger durable before its answer and divides that cost among them.

Every rule of a single trigger still applies to each call, in the same order as
`TriggerService.trigger_in` (the live token of this very routine, the kill switch, pause,
idempotency, the rate limit and the budgets, the payload template) and each run is audited as
there. The state the rules read (the switch, the tokens, the routines, earlier runs with
the same keys, the budgets' counts, the rate limit's windows, locked until the commit: see
`bot.store.trigger_hits`) is read once per batch, in its unit of work, so a
revoked token or an engaged switch refuses from the next batch on (the door's cached
token check is only a pre-check; this one decides). Runs admitted earlier in the batch
count in its budgets, and a key seen earlier in it is a replay. A refused call writes
nothing, so it takes nothing of the others with it and gets its own error; the accepted
runs are written with one multi-row INSERT. Should that INSERT meet a key that another
door committed meanwhile, it is undone to its savepoint and the runs go in one by one,
each in its own savepoint, the conflicting one answered as a replay. A high-risk
routine's call needs an approval: it goes through `trigger_in` itself, in a savepoint.

A database error anywhere in the batch rolls back all of it: every call is answered
`DatabaseUnavailable` (a 503, retried safely with its Idempotency-Key), none half-written.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy
from sqlalchemy import func, insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col

from bot.core.budget import TriggerBudget
from bot.core.ratelimit import RateWindow
from bot.core.statuses import RiskLevel, RunStatus, TriggerKind
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
from bot.services.events import ApprovalRequested, RunQueued
from bot.services.triggers import TriggerService
from bot.services.views import QueuedRun
from bot.store import queries, trigger_hits
from bot.store.queries import row_id
from bot.store.tables import ApiToken, AuditEntry, Routine, Run, utcnow

log = logging.getLogger(__name__)
# Rows are written through the tables, not built as ORM objects (a `Run()` costs more than
# the rest of a trigger's rules): the columns' own defaults fill in the rest.
RUN_TABLE: sqlalchemy.Table = Run.__table__  # type: ignore[attr-defined]
AUDIT_TABLE: sqlalchemy.Table = AuditEntry.__table__  # type: ignore[attr-defined]

Outcome = QueuedRun | RoutinesError


@dataclass(frozen=True)
class ApiCall:
    """One call of the API door, as the door read it: the routine it names, its bearer
    token, its JSON payload and its Idempotency-Key."""

    name: str
    bearer: str
    payload: object
    key: str | None

    @functools.cached_property
    def token_hash(self) -> str:
        """The bearer token as stored, hashed once for the three looks the batch takes."""
        return queries.token_hash(self.bearer)


@dataclass(frozen=True)
class _Token:
    id: int
    name: str
    created_by: str
    routine_id: int


@dataclass
class _Pending:
    """An accepted call's run row, not yet written; `run_id` once it is."""

    index: int
    values: dict[str, Any]
    routine: str
    run_id: int | None = None
    replays: list[int] = field(default_factory=list)  # later calls with the same key


@dataclass
class _RoutineState:
    """What the batch read of one routine: the row, its earlier runs with this batch's
    keys (then the batch's own pending runs by key), its budgets' counts and its rate
    limit's window (the batch's admitted calls counted in as they are decided)."""

    routine: Routine
    earlier: dict[str, QueuedRun]
    budget: TriggerBudget
    rate: RateWindow
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Batch:
    calls: Sequence[ApiCall]
    held: KillSwitchEngaged | None  # the switch, read once for the batch
    tokens: dict[str, _Token]
    outcomes: list[Outcome | None]
    now: datetime
    rates: dict[int, RateWindow]  # by routine id, read locked once for the batch
    states: dict[int, _RoutineState] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)
    announce: list[QueuedRun] = field(default_factory=list)  # runs awaiting an approval
    hits: list[tuple[int, datetime]] = field(default_factory=list)  # the rate limit's


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
                batch = self._apply(session, calls)
        except SQLAlchemyError as exc:  # not an outage `session()` knows: still nothing kept
            log.exception("a group commit of %d API triggers failed", len(calls))
            raise DatabaseUnavailable(DatabaseProblem.FAILED) from exc
        outcomes = [outcome for outcome in batch.outcomes if outcome is not None]
        assert len(outcomes) == len(calls)
        self._announce(batch, outcomes)
        return outcomes

    def _apply(self, session: Session, calls: Sequence[ApiCall]) -> _Batch:
        try:
            self.triggers.kill_switch.refuse_if_engaged(session)
            held = None
        except KillSwitchEngaged as engaged:
            held = engaged
        tokens = self._live_tokens(session, calls)
        now = utcnow()
        rates = self.triggers.rate_windows(session, {t.routine_id for t in tokens.values()}, now)
        batch = _Batch(calls, held, tokens, [None] * len(calls), now, rates)
        for index, call in enumerate(calls):
            try:
                batch.outcomes[index] = self._decide(session, batch, index, call)
            except RoutinesError as exc:
                batch.outcomes[index] = exc
        self._write(session, batch)
        trigger_hits.record(session, batch.hits)
        used = {batch.tokens[c.token_hash].id for c, o in
                zip(calls, batch.outcomes, strict=True) if isinstance(o, QueuedRun)}
        if used:  # the tokens' last use is written with their runs
            session.execute(update(ApiToken).where(col(ApiToken.id).in_(used))
                            .values(last_used_at=utcnow()))
        return batch

    @staticmethod
    def _live_tokens(session: Session, calls: Sequence[ApiCall]) -> dict[str, _Token]:
        """The batch's unrevoked tokens by hash, read in its transaction (one query)."""
        hashes = {call.token_hash for call in calls if call.bearer}
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
            earlier = {ref: QueuedRun(run_id, RunStatus(status), replayed=True)
                       for ref, run_id, status in session.execute(sqlalchemy.select(
                           RUN_TABLE.c.trigger_ref, RUN_TABLE.c.id, RUN_TABLE.c.status).where(
                           RUN_TABLE.c.routine_id == routine_id,
                           RUN_TABLE.c.trigger_kind == TriggerKind.API,
                           RUN_TABLE.c.trigger_ref.in_(keys)))} if keys else {}
            state = _RoutineState(routine, earlier,
                                  self.triggers.spend.budget_of(session, routine),
                                  batch.rates[routine_id])
            batch.states[routine_id] = state
        return state

    def _decide(self, session: Session, batch: _Batch, index: int,
                call: ApiCall) -> Outcome | None:
        """One call through the rules of `TriggerService.trigger_in`, in its order: its
        answer, or None while its run waits to be written."""
        token = batch.tokens.get(call.token_hash) if call.bearer else None
        state = self._state(session, batch, token.routine_id) if token else None
        if token is None or state is None or state.routine.name != call.name.strip().lower():
            raise InvalidToken()
        routine = state.routine
        trigger = Trigger(TriggerKind.API, f"token:{token.name}", ref=call.key,
                          payload=call.payload)
        if routine.risk == RiskLevel.HIGH:  # an approval to request: the single path
            return self._one_by_one(session, batch, routine, trigger, token.created_by)
        if batch.held is not None:
            raise batch.held
        if routine.paused:
            raise RoutinePaused(routine.name, routine.paused_by)
        if call.key is not None:
            if call.key in state.earlier:
                return state.earlier[call.key]
            if call.key in state.pending:  # the same key earlier in this very batch
                state.pending[call.key].replays.append(index)
                return None
        self._within_limits(session, batch, state)
        pending = _Pending(index, self.triggers.run_values(routine, trigger), routine.name)
        state.budget.admit()
        if call.key is not None:
            state.pending[call.key] = pending
        batch.pending.append(pending)
        return None

    def _within_limits(self, session: Session, batch: _Batch, state: _RoutineState) -> None:
        """The rate limit (shared with every door and process), then the routine's budgets.
        A call past the rate limit counts in it whatever refuses it next (a budget, the
        payload template), as it always has: its hit is written with the batch."""
        routine = state.routine
        retry_after = state.rate.retry_after()
        if retry_after is not None:
            raise RateLimited(routine.name, retry_after)
        state.rate.admit()
        batch.hits.append((row_id(routine), batch.now))
        refusal = state.budget.refusal()
        if isinstance(refusal, BudgetExceeded):
            self.triggers.spend.record_hit(session, routine, refusal)  # kept: not rolled back
        if refusal is not None:
            raise refusal

    def _one_by_one(self, session: Session, batch: _Batch, routine: Routine,
                    trigger: Trigger, requester: str) -> QueuedRun:
        """A call through `trigger_in` itself, in a savepoint of the shared transaction.
        Its counts need not include the batch's pending runs: those are of other routines
        (every call of a high-risk routine takes this path)."""
        with self.db.savepoint(session):
            triggered = self.triggers.trigger_in(session, routine, trigger,
                                                 requester=requester)
        queued = QueuedRun.of(triggered)
        if not queued.replayed and triggered.approval is not None:
            batch.announce.append(queued)
        return queued

    def _write(self, session: Session, batch: _Batch) -> None:
        """The pending runs in one INSERT, then their audit entries in another."""
        pending = batch.pending
        if not pending:
            return
        try:
            with self.db.savepoint(session):
                ids = _insert_runs(session, [p.values for p in pending])
        except IntegrityError:  # a key committed meanwhile by another door or process
            written = [p for p in pending if self._write_one(session, batch, p)]
        else:
            for p, run_id in zip(pending, ids, strict=True):
                p.run_id = run_id
            written = pending
        for p in written:
            assert p.run_id is not None
            batch.outcomes[p.index] = QueuedRun(p.run_id, p.values["status"], replayed=False)
            for later in p.replays:
                batch.outcomes[later] = QueuedRun(p.run_id, p.values["status"], replayed=True)
        if written:
            session.execute(insert(AUDIT_TABLE), [
                {"actor": p.values["triggered_by"], "action": "run", "routine": p.routine,
                 "details": f"run #{p.run_id} by {TriggerKind.API}"} for p in written])

    def _write_one(self, session: Session, batch: _Batch, pending: _Pending) -> bool:
        """One run in its own savepoint; False (answered as a replay) on a key conflict."""
        values = pending.values
        try:
            with self.db.savepoint(session):
                pending.run_id = session.execute(insert(RUN_TABLE).returning(
                    RUN_TABLE.c.id), values).scalar_one()
        except IntegrityError:
            run_id, status = session.execute(sqlalchemy.select(
                RUN_TABLE.c.id, RUN_TABLE.c.status).where(
                RUN_TABLE.c.routine_id == values["routine_id"],
                RUN_TABLE.c.trigger_kind == values["trigger_kind"],
                RUN_TABLE.c.trigger_ref == values["trigger_ref"])).one()
            for index in [pending.index, *pending.replays]:
                batch.outcomes[index] = QueuedRun(run_id, RunStatus(status), replayed=True)
            return False
        return True

    def _announce(self, batch: _Batch, outcomes: list[Outcome]) -> None:
        """After the commit: one wake-up for the queued runs, one per approval asked."""
        for _ in batch.announce:
            self.bus.publish(ApprovalRequested())
        if any(isinstance(o, QueuedRun) and not o.replayed
               and o.status == RunStatus.QUEUED for o in outcomes):
            self.bus.publish(RunQueued())


def _insert_runs(session: Session, rows: list[dict[str, Any]]) -> Sequence[int]:
    """Write the runs in one statement; their ids, in the order of `rows`.

    PostgreSQL numbers them in order behind one multi-row `INSERT ... RETURNING`. SQLite
    cannot tie the ids it returns to the rows it was given, so SQLAlchemy would send one
    INSERT per run; but the batch holds SQLite's write lock (the rate limit's prune is
    its first write, `bot.store.trigger_hits`), so it can number them itself, after the
    highest id, and write them with one `executemany`. Were an id taken all the same, the
    IntegrityError sends the batch down the one-by-one path, which lets SQLite number."""
    if session.get_bind().dialect.name != "sqlite":
        return session.execute(insert(RUN_TABLE).returning(
            RUN_TABLE.c.id, sort_by_parameter_order=True), rows).scalars().all()
    first = int(session.execute(sqlalchemy.select(
        func.coalesce(func.max(RUN_TABLE.c.id), 0))).scalar_one()) + 1
    ids = range(first, first + len(rows))
    session.execute(insert(RUN_TABLE), [{**row, "id": run_id}
                                        for row, run_id in zip(rows, ids, strict=True)])
    return ids
