"""Rollups: the finished runs added up per hour, routine and status (`RunRollup`), so that a
digest over a million runs reads tens of thousands of rollups instead of the runs.

Exactly once per run. A run is counted by `count_finished` in the unit of work that moves it
to a finished status, and only when that conditional UPDATE moved it (a run another process
finished first is not among the ids given), so a retried verdict, a restart or two finishes
racing count it once, and a crash before the commit counts nothing. A finished run never
changes again, and runs are removed only with their routine, whose rollups go with them
(`bot.services.routines.delete_in`). Migration 0008 builds the rollups of the runs stored
before it with `backfill`, the same statement over every finished run.

Every figure is computed by the database from the run's row, the duration in the same
expression the digest uses on the runs themselves (`duration`), so rollups and runs never
disagree by a rounding: SQLite stores times as text and computes with julian days, and a
Python-side hour or duration would be another computation.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    extract,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session, col

from bot.core.statuses import PENDING_STATUSES, FailureKind, RunStatus
from bot.store.tables import Run, RunRollup

BATCH = 500  # run ids per statement: far below SQLite's limit of bound parameters
_TABLE = RunRollup.__table__  # type: ignore[attr-defined]
_ROLLUP = _TABLE.c
_KEY = ("hour", "routine_id", "status")


def hour_of(dialect: str, moment: Any) -> ColumnElement[Any]:
    """The UTC hour a stored time falls in, as the database stores times: on SQLite the
    text SQLAlchemy writes (so it compares with bound times), on PostgreSQL a timestamptz
    truncated in UTC whatever the session's time zone."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:00:00.000000", moment)
    return func.timezone("UTC", func.date_trunc("hour", func.timezone("UTC", moment)))


def duration(dialect: str) -> ColumnElement[Any]:
    """A run's seconds from start to finish, in the database's own date arithmetic."""
    if dialect == "sqlite":
        return (func.julianday(col(Run.finished_at))
                - func.julianday(col(Run.started_at))) * 86_400.0
    return extract("epoch", col(Run.finished_at) - col(Run.started_at))


def no_report(status: Any = None) -> ColumnElement[bool]:
    """A run that failed without a self-report (`status`: the run's status, or an
    expression of it). IS NOT DISTINCT FROM: never NULL, so a run stored without a kind is
    no match (and stays among a digest's failures)."""
    return and_((col(Run.status) if status is None else status) == RunStatus.FAILED,
                col(Run.failure_kind).is_not_distinct_from(FailureKind.NO_SELF_REPORT))


def count_finished(session: Session, run_ids: Collection[int]) -> None:
    """Add these runs, just moved to a finished status in this unit of work, to their
    rollups. The caller passes only the runs its own conditional UPDATE moved."""
    statement = _upsert(session.get_bind().dialect.name, of_ids=True)
    ordered = sorted(set(run_ids))
    for first in range(0, len(ordered), BATCH):
        session.execute(statement, {"ids": ordered[first:first + BATCH]})


def backfill(connection: Connection) -> None:
    """Add every finished run to the rollups (migration 0008, on a database whose rollups
    are empty; the bench fills its runs with it)."""
    connection.execute(_upsert(connection.dialect.name, of_ids=False))


@functools.cache
def _upsert(dialect: str, of_ids: bool) -> Any:
    """INSERT ... SELECT the groups of the runs (those of the `ids` parameter, or all) ...
    ON CONFLICT add them to the stored ones. Built once: building it costs more than
    running it for one run."""
    which = col(Run.id).in_(bindparam("ids", expanding=True)) if of_ids else true()
    hour = hour_of(dialect, col(Run.finished_at))
    seconds = duration(dialect)
    runs = select(
        col(Run.id).label("id"), col(Run.routine_id).label("routine_id"),
        hour.label("hour"), col(Run.status).label("status"),
        col(Run.input_tokens).label("input_tokens"),
        col(Run.output_tokens).label("output_tokens"),
        case((no_report(), 1), else_=0).label("no_report"), seconds.label("seconds"),
        func.row_number().over(
            partition_by=(col(Run.routine_id), hour, col(Run.status)),
            order_by=(seconds.desc().nulls_last(), col(Run.id))).label("rank"),
    ).where(which, col(Run.finished_at).is_not(None),
            col(Run.status).not_in(PENDING_STATUSES)).subquery()
    slowest = runs.c.rank == 1
    groups = select(
        runs.c.hour, runs.c.routine_id, runs.c.status, func.count(),
        func.sum(runs.c.input_tokens), func.sum(runs.c.output_tokens),
        func.sum(runs.c.no_report), func.max(case((slowest, runs.c.seconds))),
        func.max(case((and_(slowest, runs.c.seconds.is_not(None)), runs.c.id))),
    ).where(true()).group_by(runs.c.hour, runs.c.routine_id, runs.c.status)
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(_TABLE)
    statement = insert.from_select(
        [*_KEY, "runs", "input_tokens", "output_tokens", "no_report", "slowest_seconds",
         "slowest_run_id"], groups)
    new = statement.excluded
    longer = and_(new.slowest_seconds.is_not(None), or_(
        _ROLLUP.slowest_seconds.is_(None), new.slowest_seconds > _ROLLUP.slowest_seconds,
        and_(new.slowest_seconds == _ROLLUP.slowest_seconds,
             new.slowest_run_id < _ROLLUP.slowest_run_id)))
    return statement.on_conflict_do_update(index_elements=list(_KEY), set_={
        "runs": _ROLLUP.runs + new.runs,
        "input_tokens": _ROLLUP.input_tokens + new.input_tokens,
        "output_tokens": _ROLLUP.output_tokens + new.output_tokens,
        "no_report": _ROLLUP.no_report + new.no_report,
        "slowest_seconds": case((longer, new.slowest_seconds), else_=_ROLLUP.slowest_seconds),
        "slowest_run_id": case((longer, new.slowest_run_id), else_=_ROLLUP.slowest_run_id),
    })

