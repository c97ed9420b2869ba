"""Rollups: the finished runs added up per hour, routine and status (`RunRollup`) and per day,
routine and status (`RunDayRollup`), so that a digest over a million runs reads a few
thousand rollups instead of the runs.

Exactly once per run. A run is counted by `count_finished` in the unit of work that moves it
to a finished status, and only when that conditional UPDATE moved it (a run another process
finished first is not among the ids given), so a retried verdict, a restart or two finishes
racing count it once, and a crash before the commit counts nothing. A finished run never
changes again, and runs are removed only with their routine, whose rollups go with them
(`bot.services.routines.delete_in`). Migrations 0008 (hours) and 0011 (days) build the
rollups of the runs stored before them with `backfill`, the same statements over every
finished run.

Every figure is computed by the database from the run's row, the duration in the same
expression the digest uses on the runs themselves (`duration`), so rollups and runs never
disagree by a rounding: SQLite stores times as text and computes with julian days, and a
Python-side hour or duration would be another computation.
"""

from __future__ import annotations

import enum
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
from bot.store.tables import Run, RunDayRollup, RunRollup

BATCH = 500  # run ids per statement: far below SQLite's limit of bound parameters
_TABLE = RunRollup.__table__  # type: ignore[attr-defined]
_ROLLUP = _TABLE.c
_KEY = ("hour", "routine_id", "status")
_DAY_TABLE = RunDayRollup.__table__  # type: ignore[attr-defined]
_DAY_ROLLUP = _DAY_TABLE.c
_SUMS = ("runs", "input_tokens", "output_tokens", "no_report")


class Grain(enum.Enum):
    """What a rollup adds up: the runs of one UTC hour (`RunRollup`) or day (`RunDayRollup`)."""

    HOUR = "hour"
    DAY = "day"


def truncated(dialect: str, moment: Any, grain: Grain) -> ColumnElement[Any]:
    """The UTC hour or day a stored time falls in, as the database stores times: on SQLite
    the text SQLAlchemy writes (so it compares with bound times), on PostgreSQL a
    timestamptz truncated in UTC whatever the session's time zone."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:00:00.000000" if grain is Grain.HOUR
                             else "%Y-%m-%d 00:00:00.000000", moment)
    return func.timezone("UTC", func.date_trunc(grain.value, func.timezone("UTC", moment)))


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
    hourly and daily rollups. The caller passes only the runs its own conditional UPDATE
    moved."""
    dialect = session.get_bind().dialect.name
    ordered = sorted(set(run_ids))
    for first in range(0, len(ordered), BATCH):
        for grain in Grain:
            session.execute(_upsert(dialect, grain, of_ids=True),
                            {"ids": ordered[first:first + BATCH]})


def backfill(connection: Connection, grains: Collection[Grain] = tuple(Grain)) -> None:
    """Add every finished run to the rollups of these grains (migrations 0008 and 0011, on
    a database whose rollups of that grain are empty; the bench fills its runs with it)."""
    for grain in grains:
        connection.execute(_upsert(connection.dialect.name, grain, of_ids=False))


def _upsert(dialect: str, grain: Grain, of_ids: bool) -> Any:
    return (_hourly if grain is Grain.HOUR else _daily)(dialect, of_ids)


def _finished(of_ids: bool) -> ColumnElement[bool]:
    """The finished runs, of the `ids` parameter or all."""
    which = col(Run.id).in_(bindparam("ids", expanding=True)) if of_ids else true()
    return and_(which, col(Run.finished_at).is_not(None),
                col(Run.status).not_in(PENDING_STATUSES))


def _insert(dialect: str, table: Any) -> Any:
    return (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)


@functools.cache
def _daily(dialect: str, of_ids: bool) -> Any:
    """INSERT ... SELECT the runs' groups by day, routine and status ... ON CONFLICT add them
    to the stored ones."""
    day = truncated(dialect, col(Run.finished_at), Grain.DAY)
    groups = select(
        day, col(Run.routine_id), col(Run.status), func.count(),
        func.sum(col(Run.input_tokens)), func.sum(col(Run.output_tokens)),
        func.sum(case((no_report(), 1), else_=0)),
    ).where(_finished(of_ids)).group_by(day, col(Run.routine_id), col(Run.status))
    statement = _insert(dialect, _DAY_TABLE).from_select(
        ["day", "routine_id", "status", *_SUMS], groups)
    return statement.on_conflict_do_update(
        index_elements=["day", "routine_id", "status"],
        set_={name: _DAY_ROLLUP[name] + statement.excluded[name] for name in _SUMS})


@functools.cache
def _hourly(dialect: str, of_ids: bool) -> Any:
    """INSERT ... SELECT the groups of the runs (those of the `ids` parameter, or all) ...
    ON CONFLICT add them to the stored ones, keeping each group's slowest run. Built once:
    building it costs more than running it for one run."""
    hour = truncated(dialect, col(Run.finished_at), Grain.HOUR)
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
    ).where(_finished(of_ids)).subquery()
    slowest = runs.c.rank == 1
    groups = select(
        runs.c.hour, runs.c.routine_id, runs.c.status, func.count(),
        func.sum(runs.c.input_tokens), func.sum(runs.c.output_tokens),
        func.sum(runs.c.no_report), func.max(case((slowest, runs.c.seconds))),
        func.max(case((and_(slowest, runs.c.seconds.is_not(None)), runs.c.id))),
    ).where(true()).group_by(runs.c.hour, runs.c.routine_id, runs.c.status)
    statement = _insert(dialect, _TABLE).from_select(
        [*_KEY, *_SUMS, "slowest_seconds", "slowest_run_id"], groups)
    new = statement.excluded
    longer = and_(new.slowest_seconds.is_not(None), or_(
        _ROLLUP.slowest_seconds.is_(None), new.slowest_seconds > _ROLLUP.slowest_seconds,
        and_(new.slowest_seconds == _ROLLUP.slowest_seconds,
             new.slowest_run_id < _ROLLUP.slowest_run_id)))
    return statement.on_conflict_do_update(index_elements=list(_KEY), set_={
        **{name: _ROLLUP[name] + new[name] for name in _SUMS},
        "slowest_seconds": case((longer, new.slowest_seconds), else_=_ROLLUP.slowest_seconds),
        "slowest_run_id": case((longer, new.slowest_run_id), else_=_ROLLUP.slowest_run_id),
    })

