"""A digest's period as the stored rollups answer it. Pure: no clock, no I/O.

`split_period` cuts the period into its whole UTC days (daily rollups, `RunDayRollup`), the
whole hours around them (hourly rollups, `RunRollup`) and the partial hours at its edges,
whose runs are read one by one. `totals_terms` then says how to add the period's totals up
with the fewest rows: a piece that covers most of its day (or hour) is read as the whole
day (or hour) minus the rest of it, which is exact because a day's rollup holds exactly
its hours' runs and an hour's rollup exactly its runs. Given `now`, time after it weighs
nothing, since no run has finished in it yet: a digest that ends now takes its last day
and hour whole and takes away the rest, which holds nothing (exact all the same should a
clock run ahead: the rest is read, not assumed empty).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
Span = tuple[datetime, datetime]  # [start, end)


@dataclass(frozen=True)
class PeriodSplit:
    """A period cut where the rollups can answer for it: the whole UTC days inside it
    (`days`, or None), the whole UTC hours around them (`hours`) and the partial hours at
    its edges (`edges`). Together they cover the period exactly once, in that order:
    edge, hours, days, hours, edge."""

    days: Span | None
    hours: tuple[Span, ...]
    edges: tuple[Span, ...]

    @classmethod
    def whole(cls, start: datetime, end: datetime) -> PeriodSplit:
        """No rollups: every run of the period read one by one (what digests did before)."""
        return cls(None, (), ((start, end),) if start < end else ())

    @property
    def whole_hours(self) -> Span | None:
        """Every whole hour of the period, days included: one span, or None."""
        spans = [*self.hours, *([self.days] if self.days else [])]
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)


def split_period(start: datetime, end: datetime) -> PeriodSplit:
    """[start, end) as its whole UTC days, the whole hours around them, and the partial
    hours before and after those."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first, last = _ceil(start, HOUR), _floor(end, HOUR)
    if first >= last:
        return PeriodSplit.whole(start, end)
    edges = tuple((a, b) for a, b in ((start, first), (last, end)) if a < b)
    first_day, last_day = _ceil(first, DAY), _floor(last, DAY)
    if first_day >= last_day:
        return PeriodSplit(None, ((first, last),), edges)
    return PeriodSplit((first_day, last_day), tuple(
        (a, b) for a, b in ((first, first_day), (last_day, last)) if a < b), edges)


class Source(enum.Enum):
    """Where a term's sums are read: daily rollups, hourly rollups, or the runs."""

    DAYS = "days"
    HOURS = "hours"
    RUNS = "runs"


@dataclass(frozen=True)
class Term:
    """The sums of `source` over `span`, added (`sign` 1) or taken away (-1)."""

    source: Source
    span: Span
    sign: int = 1


def totals_terms(split: PeriodSplit, now: datetime | None = None) -> tuple[Term, ...]:
    """The terms whose signed sums are the period's totals. Each piece of hours (within one
    day) and each edge (within one hour) is read as itself, or as its whole day or hour
    minus the rest of it when the rest is shorter (up to `now`, when given)."""
    terms = [Term(Source.DAYS, split.days)] if split.days else []
    for first, last in split.hours:
        while first < last:  # a span of hours across midnight: one piece per day
            piece_end = min(last, _floor(first, DAY) + DAY)
            terms += _either((first, piece_end), DAY, Source.DAYS, Source.HOURS, now)
            first = piece_end
    if split.days or split.hours:
        for edge in split.edges:
            terms += _either(edge, HOUR, Source.HOURS, Source.RUNS, now)
    else:
        terms += [Term(Source.RUNS, edge) for edge in split.edges]  # no rollups at all
    return tuple(terms)


def _either(span: Span, unit: timedelta, whole: Source, finer: Source,
            now: datetime | None) -> list[Term]:
    """`span` (inside one `unit`) read from `finer`, or its whole unit from `whole` minus
    the rest of it from `finer`, whichever reads less."""
    start, end = span
    unit_start = _floor(start, unit)
    rest = [(a, b) for a, b in ((unit_start, start), (end, unit_start + unit)) if a < b]
    if sum((_weight(piece, now) for piece in rest), timedelta()) >= _weight(span, now):
        return [Term(finer, span)]
    return [Term(whole, (unit_start, unit_start + unit)),
            *(Term(finer, piece, -1) for piece in rest)]


def _weight(span: Span, now: datetime | None) -> timedelta:
    """How much of `span` can hold finished runs: all of it, or what lies before `now`."""
    start, end = span
    if now is not None:
        end = max(start, min(end, now))
    return end - start


def _floor(moment: datetime, unit: timedelta) -> datetime:
    """The UTC hour or day `moment` falls in."""
    if unit == DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, unit: timedelta) -> datetime:
    floor = _floor(moment, unit)
    return floor if floor == moment else floor + unit
