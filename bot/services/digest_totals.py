"""A digest's totals over a period: its whole days read from the daily rollups
(`RunDayRollup`), the whole hours around them from the hourly ones (`RunRollup`), its
partial hours at the edges from the runs, added together (`bot.core.digest_period`).

So a digest over a million runs reads a few thousand rollups and the runs of at most two
hours, and says exactly what one GROUP BY over all of the period's runs would: the
rollups hold the same sums, computed by the database in the same expressions
(`bot.store.rollups`). The slowest runs need the runs themselves: each rollup names its
slowest run, and the slowest runs of the period can only be in the groups whose own
slowest runs are the period's first `limit` (see `slowest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, case, false, func, or_, union_all
from sqlalchemy import select as columns
from sqlmodel import Session, col

from bot.core.digest_period import HOUR, PeriodSplit, Source, Span, Term, totals_terms
from bot.store import rollups
from bot.store.tables import Routine, Run, RunDayRollup, RunRollup, as_utc


@dataclass
class Group:
    """The runs of one routine and status in the period, added up."""

    routine: str  # its name
    model: str
    runs: int
    input_tokens: int
    output_tokens: int
    no_report: int


_ROUNDING = 0.001  # seconds: far above SQLite's 0.1 ms and a float's error on either side
_SUMS = ("runs", "input_tokens", "output_tokens", "no_report")


def groups(session: Session, split: PeriodSplit,
           now: datetime) -> dict[tuple[int, str], Group]:
    """The period's runs by (routine id, status), in that order, with the routine's name and
    model: one statement, the signed sums of its terms (`totals_terms`: daily rollups,
    hourly ones, runs; `now` weighs the choice between them) added up by the database. A
    group the terms cancel out (all of its runs in a part taken away) is none."""
    by_kind: dict[tuple[Source, int], list[Term]] = {}
    for term in totals_terms(split, now):
        by_kind.setdefault((term.source, term.sign), []).append(term)
    parts = [_sums(session, source, sign, [term.span for term in terms])
             for (source, sign), terms in by_kind.items()]
    if not parts:
        return {}
    each = union_all(*parts).subquery()
    # Added up by (routine, status) first, then named: the join meets one row per group.
    added = (columns(each.c.routine_id, each.c.status,
                     *(func.sum(each.c[name]).label(name) for name in _SUMS))
             .group_by(each.c.routine_id, each.c.status)
             .having(func.sum(each.c.runs) != 0)).subquery()
    rows = session.execute(
        columns(added.c.routine_id, added.c.status, col(Routine.name), col(Routine.model),
                *(added.c[name] for name in _SUMS))
        .join(Routine, col(Routine.id) == added.c.routine_id)
        .order_by(added.c.routine_id, added.c.status))
    return {(routine_id, str(status)): Group(name, model, *(int(value or 0) for value in sums))
            for routine_id, status, name, model, *sums in rows}


def _sums(session: Session, source: Source, sign: int, spans: list[Span]) -> Any:
    """Runs, tokens and runs without a self-report by routine and status over these spans of
    one source, times `sign`."""
    if source is Source.RUNS:
        table: Any = Run
        bucket, status = col(Run.finished_at), col(Run.status)
        no_report = case((rollups.no_report(status_column(session)), 1), else_=0)
        sums: tuple[Any, ...] = (func.count(), func.sum(col(Run.input_tokens)),
                                 func.sum(col(Run.output_tokens)), func.sum(no_report))
    else:
        table = RunDayRollup if source is Source.DAYS else RunRollup
        bucket = col(RunDayRollup.day) if source is Source.DAYS else col(RunRollup.hour)
        status = col(table.status)
        sums = (func.sum(col(table.runs)), func.sum(col(table.input_tokens)),
                func.sum(col(table.output_tokens)), func.sum(col(table.no_report)))
    return (columns(col(table.routine_id).label("routine_id"), status.label("status"),
                    *((value if sign > 0 else -value).label(name)
                      for name, value in zip(_SUMS, sums, strict=True)))
            .where(or_(*(and_(bucket >= first, bucket < last) for first, last in spans)))
            .group_by(col(table.routine_id), status))


def slowest(session: Session, split: PeriodSplit, limit: int,
            fields: Sequence[Any]) -> list[Any]:
    """The period's `limit` slowest runs (the longest first, then by id): rows of `fields`
    and the duration.

    In the whole hours, each rollup names its group's slowest run. Take the `limit` groups
    whose slowest runs come first: those are `limit` runs, so the period's `limit`-th
    slowest run comes no later than the last of them. Any run among the `limit` slowest
    then comes no later either, and so does its own group's slowest run: its group is one
    of those taken. So only the runs of those groups (at most `limit` hours of one routine
    and status each) are read, and of the edges' runs only those that last at least as long
    as the last of those `limit` runs."""
    duration = duration_column(session)
    where = _edges(split)
    if split.whole_hours is not None:
        first, last = split.whole_hours
        leaders = session.execute(
            columns(col(RunRollup.hour), col(RunRollup.routine_id), col(RunRollup.status),
                    col(RunRollup.slowest_seconds))
            .where(col(RunRollup.hour) >= first, col(RunRollup.hour) < last,
                   col(RunRollup.slowest_seconds).is_not(None))
            .order_by(col(RunRollup.slowest_seconds).desc(), col(RunRollup.slowest_run_id))
            .limit(limit)).all()
        if len(leaders) == limit:  # margin: the two sides may round a duration apart
            where = _edges(split, duration >= leaders[-1][3] - _ROUNDING)
        routine_id, status = _unindexed(session, col(Run.routine_id), 0), status_column(session)
        where = or_(where, *(and_(
            col(Run.finished_at) >= as_utc(hour), col(Run.finished_at) < as_utc(hour) + HOUR,
            routine_id == routine, status == group_status)
            for hour, routine, group_status, _ in leaders))
    return list(session.execute(
        columns(*fields, duration).where(where, col(Run.started_at).is_not(None))
        .order_by(duration.desc(), col(Run.id)).limit(limit)).all())


def status_column(session: Session) -> ColumnElement[Any]:
    """The status, to test on the period's rows (walked through ix_run_digest). SQLite's
    planner, without statistics, would rather look statuses up in their own index and so
    visit every run of that status ever stored; an expression cannot use that index."""
    return _unindexed(session, col(Run.status), "")


def duration_column(session: Session) -> ColumnElement[Any]:
    """Seconds from start to finish, in the database's own date arithmetic."""
    return rollups.duration(session.get_bind().dialect.name)


def _unindexed(session: Session, column: Any, empty: object) -> ColumnElement[Any]:
    """`column` on PostgreSQL; on SQLite an expression of it, which no index answers."""
    if session.get_bind().dialect.name == "sqlite":
        return func.coalesce(column, empty)
    return cast(ColumnElement[Any], column)


def _edges(split: PeriodSplit, *also: ColumnElement[bool]) -> ColumnElement[bool]:
    """The runs finished in the partial hours (none: a test nothing matches), and matching
    `also`: inside each term of the OR, so that SQLite still walks an index per edge."""
    return or_(false(), *(and_(col(Run.finished_at) >= start, col(Run.finished_at) < end, *also)
                          for start, end in split.edges))

