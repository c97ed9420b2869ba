"""A digest's period cut for the rollups (`split_period`): its whole UTC hours and the partial
hours at its edges, by a table of cases and, for any period in any zone, the property that
the pieces are disjoint and cover it exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.digest import HOUR, PeriodSplit, split_period

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
def test_a_period_is_cut_at_its_first_and_last_whole_hour(
        start: datetime, end: datetime, hours: tuple[datetime, datetime] | None,
        edges: tuple[tuple[datetime, datetime], ...]) -> None:
    assert split_period(start, end) == PeriodSplit(hours, edges)


def test_hours_are_utc_hours_for_a_period_given_in_another_zone() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    split = split_period(T.astimezone(india), (T + 2 * HOUR).astimezone(india))
    assert split == PeriodSplit((T, T + 2 * HOUR), ())


moments = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1),
                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3, minutes=-30))]))


@given(moments, moments)
def test_the_pieces_cover_the_period_once(start: datetime, end: datetime) -> None:
    split = split_period(start, end)
    pieces = sorted([*split.edges, *([split.hours] if split.hours else [])])
    if start >= end:
        assert pieces == []
        return
    assert pieces[0][0] == start and pieces[-1][1] == end
    for (_, before_end), (after_start, _) in pairwise(pieces):
        assert before_end == after_start  # touching, never overlapping
    assert all(a < b for a, b in pieces)
    if split.hours:
        first, last = split.hours
        assert first.astimezone(UTC).minute == first.second == first.microsecond == 0
        assert (last - first) % HOUR == timedelta(0)
    assert all(b - a < HOUR for a, b in split.edges) or split.hours is None
