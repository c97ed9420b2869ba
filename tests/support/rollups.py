"""What the rollup tests compare with: the runs themselves, read back and added up in Python
(hours and days floored in UTC, durations from the stored times), beside the stored
rollups."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlmodel import select

from bot.core.statuses import FailureKind, RunStatus
from bot.store.database import Database
from bot.store.tables import Run, RunDayRollup, RunRollup, as_utc

Key = tuple[datetime, int, RunStatus]  # hour (or day), routine id, status
Sums = tuple[int, int, int, int]  # runs, input tokens, output tokens, no self-report


@dataclass
class Expected:
    runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    no_report: int = 0
    durations: dict[int, float] = field(default_factory=dict)  # run id: seconds


def expected_rollups(db: Database) -> dict[Key, Expected]:
    """The finished runs grouped by the hour they finished in, routine and status."""
    groups: dict[Key, Expected] = {}
    with db.session() as session:
        runs = session.exec(select(Run).where(Run.finished_at != None)).all()  # noqa: E711
    for run in runs:
        if not RunStatus(run.status).finished or run.finished_at is None:
            continue
        finished = as_utc(run.finished_at).astimezone(UTC)
        hour = finished.replace(minute=0, second=0, microsecond=0)
        group = groups.setdefault((hour, run.routine_id, RunStatus(run.status)), Expected())
        group.runs += 1
        group.input_tokens += run.input_tokens
        group.output_tokens += run.output_tokens
        group.no_report += (run.status == RunStatus.FAILED
                            and run.failure_kind == FailureKind.NO_SELF_REPORT)
        if run.started_at is not None and run.id is not None:
            group.durations[run.id] = (finished - as_utc(run.started_at)).total_seconds()
    return groups


def stored_rollups(db: Database) -> dict[Key, RunRollup]:
    with db.session() as session:
        rows = session.exec(select(RunRollup)).all()
    return {(as_utc(r.hour), r.routine_id, RunStatus(r.status)): r for r in rows}


def stored_day_rollups(db: Database) -> dict[Key, Sums]:
    with db.session() as session:
        rows = session.exec(select(RunDayRollup)).all()
    return {(as_utc(r.day), r.routine_id, RunStatus(r.status)):
            (r.runs, r.input_tokens, r.output_tokens, r.no_report) for r in rows}


def expected_day_rollups(hourly: dict[Key, Expected]) -> dict[Key, Sums]:
    """The expected hourly groups added up by UTC day."""
    days: dict[Key, Sums] = {}
    for (hour, routine_id, status), group in hourly.items():
        key = (hour.replace(hour=0), routine_id, status)
        runs, input_tokens, output_tokens, no_report = days.get(key, (0, 0, 0, 0))
        days[key] = (runs + group.runs, input_tokens + group.input_tokens,
                     output_tokens + group.output_tokens, no_report + group.no_report)
    return days


def assert_rollups_agree(db: Database) -> int:
    """Every rollup, hourly and daily, holds exactly its runs' sums, and each hourly one names
    its slowest run: the longest (SQLite's date arithmetic is exact to about 0.1 ms, so runs
    closer than that may be taken for each other). Returns how many runs the rollups
    count."""
    expected, stored = expected_rollups(db), stored_rollups(db)
    assert stored_day_rollups(db) == expected_day_rollups(expected)
    assert set(stored) == set(expected)
    for key, want in expected.items():
        got = stored[key]
        assert (got.runs, got.input_tokens, got.output_tokens, got.no_report) == (
            want.runs, want.input_tokens, want.output_tokens, want.no_report), key
        if not want.durations:
            assert (got.slowest_seconds, got.slowest_run_id) == (None, None), key
            continue
        longest = max(want.durations.values())
        assert got.slowest_seconds is not None and abs(got.slowest_seconds - longest) < 1e-3
        assert got.slowest_run_id is not None
        assert want.durations[got.slowest_run_id] > longest - 1e-3, key
    return sum(want.runs for want in expected.values())
