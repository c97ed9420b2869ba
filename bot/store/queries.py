"""Named queries that several services share. Services own the statements of their own
concept; the lookups every concept needs live here once."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from sqlalchemy import func
from sqlmodel import Session, col, select

from bot.core.statuses import ACTIVE, PENDING_STATUSES
from bot.core.trigger import Trigger
from bot.errors import InvalidToken, RoutineNotFound, RunNotFound
from bot.store.tables import ApiToken, Routine, Run


def find_routine(session: Session, name: str) -> Routine | None:
    return session.exec(select(Routine).where(Routine.name == name.strip().lower())).first()


def require_routine(session: Session, name: str) -> Routine:
    routine = find_routine(session, name)
    if routine is None:
        raise RoutineNotFound(name)
    return routine


def run_with_routine(session: Session, run_id: int) -> tuple[Run, Routine]:
    """A run and its routine, or `RunNotFound`."""
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    routine = session.get(Routine, run.routine_id)
    assert routine is not None  # a routine is deleted with its runs
    return run, routine


def run_for_ref(session: Session, routine: Routine, trigger: Trigger) -> Run | None:
    """The earlier run of the same routine, door and reference (idempotency), if any."""
    if trigger.ref is None:
        return None
    return session.exec(select(Run).where(
        Run.routine_id == routine.id, Run.trigger_kind == trigger.kind,
        Run.trigger_ref == trigger.ref)).first()


def last_run(session: Session, routine: Routine) -> Run | None:
    return session.exec(
        select(Run).where(Run.routine_id == routine.id).order_by(col(Run.id).desc()).limit(1)
    ).first()


def last_runs(session: Session, routine_ids: Collection[int] | None = None) -> dict[int, Run]:
    """The latest run of each routine (of every one when `routine_ids` is None), by routine
    id, in one statement: a list of ten thousand routines is two queries, not 10,001."""
    query = select(col(Run.routine_id), func.max(Run.id).label("id"))
    if routine_ids is not None:
        query = query.where(col(Run.routine_id).in_(routine_ids))
    latest = query.group_by(col(Run.routine_id)).subquery()
    runs = session.exec(select(Run).join(latest, col(Run.id) == latest.c.id)).all()
    return {run.routine_id: run for run in runs}


def token_hash(value: str) -> str:
    # Tokens are 256-bit random values: a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(value.encode()).hexdigest()


def live_token(session: Session, bearer: str) -> ApiToken:
    """The unrevoked token whose hash matches, or `InvalidToken`."""
    token = session.exec(select(ApiToken).where(
        ApiToken.token_hash == token_hash(bearer),
        col(ApiToken.revoked_at).is_(None))).first() if bearer else None
    if token is None:
        raise InvalidToken()
    return token


def row_id(row: Routine | Run | ApiToken | object) -> int:
    """The primary key of a flushed row."""
    value = getattr(row, "id", None)
    assert isinstance(value, int), "row must be flushed before its id is used"
    return value


def known_id(value: int | None) -> int:
    """An id read from a non-null primary-key column (typed optional by the ORM)."""
    assert value is not None
    return value


def active_runs(session: Session, routine: Routine, pending: bool = False) -> int:
    """The routine's queued and running runs (`pending`: awaiting approval too)."""
    statuses = PENDING_STATUSES if pending else ACTIVE
    return int(session.exec(select(func.count()).select_from(Run).where(
        Run.routine_id == routine.id, col(Run.status).in_(statuses))).one())
