"""Digests: what a channel hears about the runs of a period. Pure: no clock, no I/O.

`bot.services.digests.DigestService` gathers the facts of a period with a few SQL aggregates;
`build_digest` turns them into a `Digest` value (what to show, what to summarise as "N
more", whether the period was quiet); `templates/digest.json.j2` lays it out. Every list
is capped so that a digest fits Slack's limits (50 blocks, 3,000 characters a section)
however busy the period was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from bot.core.pricing import PriceTable
from bot.core.schedule import Schedule, ScheduleError, fires_between

T = TypeVar("T")

# A channel that is not subscribed can still ask for one: it covers the last day.
DEFAULT_PERIOD = timedelta(days=1)
# The order statuses are counted in; any other status follows, alphabetically.
STATUS_ORDER = ("succeeded", "failed", "timed_out", "error", "killed", "cancelled", "rejected",
                "expired")

# Schedule sugar ------------------------------------------------------------------------

SUGAR = ("hourly", "daily", "weekdays", "weekly")
_DAYS = {"mon": "mon", "tue": "tue", "wed": "wed", "thu": "thu", "fri": "fri", "sat": "sat",
         "sun": "sun", "monday": "mon", "tuesday": "tue", "wednesday": "wed",
         "thursday": "thu", "friday": "fri", "saturday": "sat", "sunday": "sun"}
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_MINUTE = re.compile(r"^:(\d{2})$")
DEFAULT_TIME = (9, 0)
DEFAULT_WEEKDAY = "mon"


def is_sugar_word(word: str) -> bool:
    """A word that belongs to a sugared schedule after its first word (a day or a time)."""
    word = word.lower()
    return word in _DAYS or bool(_TIME.match(word) or _MINUTE.match(word))


def digest_cron(expression: str) -> str:
    """Translate `hourly [:MM]`, `daily [HH:MM]`, `weekdays [HH:MM]` and
    `weekly [DAY] [HH:MM]` to cron; anything else is returned as is, for
    `bot.core.schedule.parse_schedule` to judge. Raises `ScheduleError` on bad sugar."""
    words = expression.lower().split()
    if not words or words[0] not in SUGAR:
        return expression
    kind, rest = words[0], words[1:]
    if kind == "hourly":
        return f"{_minute_of_hour(rest)} * * * *"
    day = DEFAULT_WEEKDAY
    if kind == "weekly" and rest and rest[0] in _DAYS:
        day, rest = _DAYS[rest[0]], rest[1:]
    hour, minute = _time_of_day(kind, rest)
    weekdays = {"daily": "*", "weekdays": "mon-fri", "weekly": day}[kind]
    return f"{minute} {hour} * * {weekdays}"


def _minute_of_hour(rest: list[str]) -> int:
    if not rest:
        return 0
    found = _MINUTE.match(rest[0])
    if len(rest) > 1 or not found or int(found.group(1)) > 59:
        raise ScheduleError(f"`hourly {' '.join(rest)}`: write `hourly` or `hourly :MM` "
                            "(a minute from :00 to :59).")
    return int(found.group(1))


def _time_of_day(kind: str, rest: list[str]) -> tuple[int, int]:
    if not rest:
        return DEFAULT_TIME
    found = _TIME.match(rest[0])
    if len(rest) > 1 or not found or int(found.group(1)) > 23 or int(found.group(2)) > 59:
        example = "weekly mon 09:00" if kind == "weekly" else f"{kind} 09:00"
        raise ScheduleError(f"`{kind} {' '.join(rest)}`: write a 24-hour time, "
                            f"like `{example}`.")
    return int(found.group(1)), int(found.group(2))


def digest_owed(schedule: Schedule, last_sent_at: datetime, now: datetime) -> bool:
    """At start-up: did a digest fall due while the bot was down? Then one is sent at once,
    covering the whole period (never one per missed fire)."""
    return bool(fires_between(schedule, last_sent_at, now, limit=1))


# Facts in, digest out ---------------------------------------------------------------


@dataclass(frozen=True)
class Listed(Generic[T]):
    """The first items of a list and how many there are in all."""

    items: tuple[T, ...] = ()
    total: int = 0

    @property
    def more(self) -> int:
        return max(0, self.total - len(self.items))


@dataclass(frozen=True)
class RunFact:
    run_id: int
    routine: str
    status: str
    finished_at: datetime
    reason: str = ""
    duration_seconds: float | None = None


@dataclass(frozen=True)
class MissedFact:
    routine: str
    scheduled_for: datetime
    why: str


@dataclass(frozen=True)
class UsageFact:
    """Runs and tokens of one routine and model in the period (one SQL group)."""

    routine: str
    model: str
    runs: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class UpcomingFact:
    routine: str
    at: datetime


@dataclass(frozen=True)
class DigestFacts:
    """What happened in [start, end): everything the digest needs, already aggregated."""

    channel_id: str
    start: datetime
    end: datetime
    status_counts: Mapping[str, int] = field(default_factory=dict)
    in_progress: int = 0
    failures: Listed[RunFact] = Listed()
    no_report: Listed[RunFact] = Listed()
    stopped: Listed[RunFact] = Listed()
    missed: Listed[MissedFact] = Listed()
    slowest: tuple[RunFact, ...] = ()
    usage: tuple[UsageFact, ...] = ()
    upcoming: tuple[UpcomingFact, ...] = ()


@dataclass(frozen=True)
class DigestLimits:
    """How much a digest shows. Each bound keeps its section under Slack's 3,000 characters
    at its longest (routine names are at most 40 characters; texts are cut to these)."""

    failures: int = 6  # lines with a reason of up to `reason_chars`
    no_report: int = 8
    stopped: int = 8
    missed: int = 10
    slowest: int = 5
    usage: int = 20
    upcoming: int = 10
    reason_chars: int = 300
    why_chars: int = 100


@dataclass(frozen=True)
class UsageLine:
    routine: str
    runs: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class Digest:
    """A digest ready to lay out: what to show, and how many more of each list there are."""

    channel_id: str
    start: datetime
    end: datetime
    quiet: bool
    total_runs: int
    statuses: tuple[tuple[str, int], ...]
    in_progress: int
    failures: Listed[RunFact]
    no_report: Listed[RunFact]
    stopped: Listed[RunFact]
    missed: Listed[MissedFact]
    slowest: tuple[RunFact, ...]
    usage: Listed[UsageLine]
    total_input_tokens: int
    total_output_tokens: int
    total_cost_usd: float
    upcoming: tuple[UpcomingFact, ...]
    limits: DigestLimits

    @property
    def other_usage(self) -> UsageLine:
        """The routines left out of `usage.items`, added up."""
        hidden = self.usage.total - len(self.usage.items)
        shown = self.usage.items
        return UsageLine(
            f"{hidden} more routine(s)", self.total_runs - sum(u.runs for u in shown),
            self.total_input_tokens - sum(u.input_tokens for u in shown),
            self.total_output_tokens - sum(u.output_tokens for u in shown),
            self.total_cost_usd - sum(u.cost_usd for u in shown))


def build_digest(facts: DigestFacts, prices: PriceTable,
                 limits: DigestLimits | None = None) -> Digest:
    """Decide what the digest says: counts in a fixed order, capped lists with what they
    leave out, cost per routine (priced per model), and whether the period was quiet."""
    limits = limits or DigestLimits()
    usage = _usage_lines(facts.usage, prices)
    total_runs = sum(facts.status_counts.values())
    return Digest(
        channel_id=facts.channel_id, start=facts.start, end=facts.end,
        quiet=total_runs == 0 and facts.missed.total == 0,
        total_runs=total_runs,
        statuses=_ordered_statuses(facts.status_counts),
        in_progress=facts.in_progress,
        failures=_cap(facts.failures, limits.failures),
        no_report=_cap(facts.no_report, limits.no_report),
        stopped=_cap(facts.stopped, limits.stopped),
        missed=_cap(facts.missed, limits.missed),
        slowest=tuple(sorted(facts.slowest, key=_slowest_first)[:limits.slowest]),
        usage=Listed(tuple(usage[:limits.usage]), len(usage)),
        total_input_tokens=sum(u.input_tokens for u in usage),
        total_output_tokens=sum(u.output_tokens for u in usage),
        total_cost_usd=sum(u.cost_usd for u in usage),
        upcoming=tuple(sorted(facts.upcoming, key=lambda u: (u.at, u.routine))
                       [:limits.upcoming]),
        limits=limits,
    )


def _cap(listed: Listed[T], limit: int) -> Listed[T]:
    return Listed(listed.items[:limit], max(listed.total, len(listed.items)))


def _ordered_statuses(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    known = [(status, counts[status]) for status in STATUS_ORDER if counts.get(status)]
    others = sorted((s, n) for s, n in counts.items() if s not in STATUS_ORDER and n)
    return tuple(known + others)


def _slowest_first(run: RunFact) -> tuple[float, int]:
    return -(run.duration_seconds or 0.0), run.run_id


def _usage_lines(facts: Sequence[UsageFact], prices: PriceTable) -> list[UsageLine]:
    """One line per routine (its groups by model added up), the most expensive first."""
    lines: dict[str, UsageLine] = {}
    for fact in facts:
        cost = prices.cost_usd(fact.model, fact.input_tokens, fact.output_tokens)
        seen = lines.get(fact.routine, UsageLine(fact.routine, 0, 0, 0, 0.0))
        lines[fact.routine] = UsageLine(
            fact.routine, seen.runs + fact.runs, seen.input_tokens + fact.input_tokens,
            seen.output_tokens + fact.output_tokens, seen.cost_usd + cost)
    return sorted(lines.values(), key=lambda u: (-u.cost_usd, -u.runs, u.routine))
