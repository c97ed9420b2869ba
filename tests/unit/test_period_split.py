"""A digest's period cut for the rollups (`split_period`): its whole UTC days, the whole hours
around them and the partial hours at its edges, by a table of cases and, for any period in
any zone, the property that the pieces are disjoint and cover it exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.digest_period import (
    DAY,
    HOUR,
    PeriodSplit,
    Source,
    Term,
    split_period,
    totals_terms,
)

T = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
M = timedelta(minutes=1)


@pytest.mark.parametrize(("start", "end", "hours", "edges"), [
    (T, T + 3 * HOUR, (T, T + 3 * HOUR), ()),  # on hours: no run read one by one
    (T + 10 * M, T + 3 * HOUR, (T + HOUR, T + 3 * HOUR), ((T + 10 * M, T + HOUR),)),
    (T, T + HOUR + 5 * M, (T, T + HOUR), ((T + HOUR, T + HOUR + 5 * M),)),
    (T + 10 * M, T + 2 * HOUR + 5 * M, (T + HOUR, T + 2 * HOUR),
     ((T + 10 * M, T + HOUR), (T + 2 * HOUR, T + 2 * HOUR + 5 * M))),
    (T + 10 * M, T + 50 * M, None, ((T + 10 * M, T + 50 * M),)),  # inside one hour
    (T + 10 * M, T + HOUR + 50 * M, None, ((T + 10 * M, T + HOUR + 50 * M),)),  # no whole one
    (T, T, None, ()),  # empty
    (T + HOUR, T, None, ()),  # backwards: empty too
])
def test_a_period_within_a_day_is_cut_at_its_first_and_last_whole_hour(
        start: datetime, end: datetime, hours: tuple[datetime, datetime] | None,
        edges: tuple[tuple[datetime, datetime], ...]) -> None:
    assert split_period(start, end) == PeriodSplit(None, (hours,) if hours else (), edges)


D = datetime(2026, 12, 3, tzinfo=UTC)


@pytest.mark.parametrize(("start", "end", "days", "hours"), [
    (D, D + 2 * DAY, (D, D + 2 * DAY), ()),  # on days: only daily rollups
    (D - 3 * HOUR, D + DAY, (D, D + DAY), ((D - 3 * HOUR, D),)),
    (D, D + DAY + 2 * HOUR, (D, D + DAY), ((D + DAY, D + DAY + 2 * HOUR),)),
    (D - HOUR, D + 7 * DAY + HOUR, (D, D + 7 * DAY),
     ((D - HOUR, D), (D + 7 * DAY, D + 7 * DAY + HOUR))),
    (D + HOUR, D + DAY + HOUR, None, ((D + HOUR, D + DAY + HOUR),)),  # no whole day
])
def test_a_longer_period_is_cut_at_its_first_and_last_whole_day(
        start: datetime, end: datetime, days: tuple[datetime, datetime] | None,
        hours: tuple[tuple[datetime, datetime], ...]) -> None:
    split = split_period(start, end)
    assert split == PeriodSplit(days, hours, ())
    assert split.whole_hours == (start, end)


def test_hours_are_utc_hours_for_a_period_given_in_another_zone() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    split = split_period(T.astimezone(india), (T + 2 * HOUR).astimezone(india))
    assert split == PeriodSplit(None, ((T, T + 2 * HOUR),), ())


moments = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1),
                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3, minutes=-30))]))


@given(moments, moments)
def test_the_pieces_cover_the_period_once(start: datetime, end: datetime) -> None:
    split = split_period(start, end)
    pieces = sorted([*split.edges, *split.hours, *([split.days] if split.days else [])])
    if start >= end:
        assert pieces == []
        return
    assert pieces[0][0] == start and pieces[-1][1] == end
    for (_, before_end), (after_start, _) in pairwise(pieces):
        assert before_end == after_start  # touching, never overlapping
    assert all(a < b for a, b in pieces)
    for first, last in split.hours:
        assert first.astimezone(UTC).minute == first.second == first.microsecond == 0
        assert (last - first) % HOUR == timedelta(0) and last - first < 2 * DAY
    if split.days:
        first, last = split.days
        assert first.astimezone(UTC).hour == first.minute == first.microsecond == 0
        assert (last - first) % DAY == timedelta(0)
    assert all(b - a < HOUR for a, b in split.edges) or not split.whole_hours


def covered(terms: tuple[Term, ...], moment: datetime) -> int:
    """How many times the signed terms count a run finished at `moment`: a rollup term counts
    every run of its whole days or hours, as the rollups do."""
    total = 0
    for term in terms:
        start, end = term.span
        if term.source is not Source.RUNS:
            unit = DAY if term.source is Source.DAYS else HOUR
            floor = start.replace(minute=0, second=0, microsecond=0)
            assert start == (floor.replace(hour=0) if unit == DAY else floor)
            assert (end - start) % unit == timedelta(0)
        total += term.sign * (start <= moment < end)
    return total


@given(moments, moments, st.lists(st.floats(min_value=-0.2, max_value=1.2), max_size=30),
       st.none() | moments)
def test_the_signed_terms_count_every_run_of_the_period_once_and_no_other(
        start: datetime, end: datetime, where: list[float], now: datetime | None) -> None:
    terms = totals_terms(split_period(start, end), now)  # `now` only weighs the choice
    for fraction in [0.0, 1.0, *where]:
        moment = start + (end - start) * fraction
        assert covered(terms, moment) == (start <= moment < end)
    taken_away = [term for term in terms if term.sign < 0]
    assert all(term.source is not Source.DAYS for term in taken_away)


def test_a_period_that_ends_now_takes_its_last_day_and_hour_whole() -> None:
    """Most of today and most of this hour: read as the whole day and hour, minus the rest
    of them (in the future, so it reads nothing); so is the first edge, 50 minutes of its
    hour; the first day's 3 hours are read as they are."""
    start, end = D - 3 * DAY + 20 * HOUR + 10 * M, D + 21 * HOUR + 50 * M
    assert totals_terms(split_period(start, end)) == (
        Term(Source.DAYS, (D - 2 * DAY, D)),
        Term(Source.HOURS, (D - 3 * DAY + 21 * HOUR, D - 2 * DAY)),
        Term(Source.DAYS, (D, D + DAY)),
        Term(Source.HOURS, (D + 21 * HOUR, D + DAY), -1),
        Term(Source.HOURS, (D - 3 * DAY + 20 * HOUR, D - 3 * DAY + 21 * HOUR)),
        Term(Source.RUNS, (D - 3 * DAY + 20 * HOUR, start), -1),
        Term(Source.HOURS, (D + 21 * HOUR, D + 22 * HOUR)),
        Term(Source.RUNS, (end, D + 22 * HOUR), -1),
    )


def test_given_now_a_short_last_hour_is_read_whole_minus_the_future() -> None:
    """10 minutes into the hour: without `now`, the 10 minutes are read from the runs (the
    other 50 look longer); with it, the 50 minutes ahead weigh nothing, so the hour comes
    from its rollup and the runs read are those of the future: none."""
    start, end = D + 2 * HOUR, D + 21 * HOUR + 10 * M
    edge = Term(Source.RUNS, (D + 21 * HOUR, end))
    assert edge in totals_terms(split_period(start, end))
    assert totals_terms(split_period(start, end), now=end)[-2:] == (
        Term(Source.HOURS, (D + 21 * HOUR, D + 22 * HOUR)),
        Term(Source.RUNS, (end, D + 22 * HOUR), -1),
    )
