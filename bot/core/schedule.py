"""When routines fire: parsing schedules, computing fire times, deciding catch-ups.

Pure (no clock, no I/O): each function takes the times it reasons about, so every rule is
easy to test. APScheduler's trigger classes do the date math here; running jobs is
`bot.doors.scheduler.jobs.ScheduleRunner`'s, the one other module that uses APScheduler.

Two APScheduler 3 traps this module exists to hide:
- `CronTrigger.from_crontab` numbers weekdays from Monday = 0, while standard cron uses
  Sunday = 0 (and 7): `0 9 * * 1-5` would silently mean Tuesday to Saturday. Weekday fields
  are translated to names, which both agree on.
- APScheduler ANDs a restricted day of month with a restricted weekday; standard cron ORs
  them (`0 9 1 * mon` = the 1st and every Monday). Such expressions become two triggers.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.combining import OrTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from bot.errors import RoutinesError

log = logging.getLogger(__name__)

DEFAULT_MIN_INTERVAL = 60
CATCH_UP_CAP = 100
MAX_INTERVAL_SECONDS = 366 * 86_400
CRON_FIELDS = "minute hour day month weekday"
# Where interval cadences start counting from. Fixed, so a restart keeps the same fire times;
# local midnight, so `every 6h` fires at 0, 6, 12 and 18 o'clock (standard time).
INTERVAL_ANCHOR = datetime(2000, 1, 1)
# A fixed instant to evaluate expressions from, so that validation never depends on the clock.
_REFERENCE = datetime(2001, 1, 1, tzinfo=UTC)

_INTERVAL_RE = re.compile(r"^@?every\s*(\d{1,9})\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELD_NAMES = ("minute", "hour", "day", "month", "day_of_week")
_FIELD_LABELS = ("minute", "hour", "day-of-month", "month", "weekday")
_FIELD_CHARS = re.compile(r"^[0-9a-z*,/-]+$")
_MONTH_ITEM = re.compile(r"^[a-z]{3}(?:-[a-z]{3})?$")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # standard cron order
_WEEKDAY_ITEM = re.compile(r"^(?:(\*)|([a-z0-9]+)(?:-([a-z0-9]+))?)(?:/(\d+))?$")
# Keys ZoneInfo loads that are not IANA zones but files describing this machine or variants.
_NOT_IANA = ("localtime", "posixrules", "factory")


class ScheduleError(RoutinesError, ValueError):
    """A schedule was refused; the message says why, in words for the Slack user."""


@dataclass(frozen=True)
class Schedule:
    """When a routine fires.

    `expression` is what the user gave, normalized (single spaces, lowercase, `@every 5m` as
    `every 5m`): a 5-field standard cron expression, an `@hourly`-style alias, or `every N`
    with a unit of s, m, h or d. Build one with `parse_schedule`, which validates it.
    """

    expression: str
    timezone: str = "UTC"


@dataclass(frozen=True)
class CatchUp:
    """What to do about fire times that passed while the bot was not running.

    `run_for` is the one fire time to run now (never more than one: no burst after downtime);
    `missed` are the fire times that will not run, oldest first, for the bot to report;
    `capped` says older missed fire times were left out of `missed`.
    """

    run_for: datetime | None
    missed: tuple[datetime, ...]
    capped: bool = False


def parse_schedule(expression: str, timezone: str = "UTC",
                   min_interval_seconds: int = DEFAULT_MIN_INTERVAL) -> Schedule:
    """Validate a schedule as typed in Slack; raise `ScheduleError` saying what is wrong.

    Refuses anything that could fire more often than once per `min_interval_seconds`, so a
    typo cannot start a routine every minute.
    """
    zone_name = timezone.strip()
    zone = _zone(zone_name)
    text = " ".join(expression.split()).lower()
    if not text:
        raise ScheduleError("Give a schedule: a cron expression with 5 fields "
                            f"({CRON_FIELDS}) or an interval like `every 5m`.")
    interval = _INTERVAL_RE.match(text)
    if interval:
        amount, unit = int(interval.group(1)), interval.group(2)
        _check_interval(amount * _UNIT_SECONDS[unit], f"every {amount}{unit}",
                        max(1, min_interval_seconds))
        return Schedule(f"every {amount}{unit}", zone_name)
    if text.startswith(("every", "@every")):
        raise ScheduleError(f"`{text}` is not an interval: write `every 90s`, `every 5m`, "
                            "`every 2h` or `every 1d`.")
    if text.startswith("@") and text not in _ALIASES:
        raise ScheduleError(f"Unknown shortcut `{text}`: use one of {', '.join(_ALIASES)}, "
                            "a cron expression or `every 5m`.")
    trigger = _cron_trigger(_ALIASES.get(text, text), zone)
    first = trigger.get_next_fire_time(None, _REFERENCE.astimezone(zone))
    if first is None:
        raise ScheduleError(f"`{text}` never fires (no date matches it).")
    gap = _smallest_cron_gap(_ALIASES.get(text, text))
    if gap < min_interval_seconds:
        raise ScheduleError(f"`{text}` can fire {gap} s apart; this bot allows at most one run "
                            f"every {min_interval_seconds} s.")
    return Schedule(text, zone_name)


def trigger_for(schedule: Schedule) -> BaseTrigger:
    """The APScheduler trigger for a (validated) schedule, in the schedule's time zone.

    Intervals count from a fixed anchor (`INTERVAL_ANCHOR`, local midnight), not from when the
    bot started, so a restart keeps the same cadence. They are elapsed time: `every 1d` does
    not move with daylight saving; use cron (`0 0 * * *`) for a wall-clock time.
    """
    zone = _zone(schedule.timezone)
    seconds = _interval_seconds(schedule.expression)
    if seconds is not None:
        return IntervalTrigger(seconds=seconds, start_date=INTERVAL_ANCHOR.replace(tzinfo=zone),
                               timezone=zone)
    return _cron_trigger(_ALIASES.get(schedule.expression, schedule.expression), zone)


def next_fire_times(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next `count` fire times strictly after `after`, as aware datetimes in the zone.

    To measure time between two of them, convert them to UTC first: Python subtracts two
    datetimes of the same zone by wall clock, ignoring a daylight-saving change in between.
    """
    return list(islice(_fires_after(trigger_for(schedule), _utc(after, "after")), count))


def fires_between(schedule: Schedule, start: datetime, end: datetime,
                  limit: int = 1000) -> list[datetime]:
    """Fire times in (start, end], oldest first, at most the first `limit` of them."""
    end = _utc(end, "end")
    fires: list[datetime] = []
    for when in _fires_after(trigger_for(schedule), _utc(start, "start")):
        if when > end or len(fires) >= limit:
            break
        fires.append(when)
    return fires


def catch_up(schedule: Schedule, last_fire: datetime | None, now: datetime,
             grace_seconds: int) -> CatchUp:
    """Decide, at start-up, what to do about fire times that passed while the bot was down.

    All fire times in (last_fire, now] were due. If the latest is at most `grace_seconds`
    old, it runs once now (coalesced: one run stands for all of them) and the earlier ones are
    missed; otherwise none runs and all are missed. `last_fire` is when the routine last
    fired or was last scheduled; None means never, and then nothing was missed.

    `missed` is capped at the latest `CATCH_UP_CAP` fire times (`capped` says so), so a
    routine down for a year does not compute or report half a million fire times.
    """
    now = _utc(now, "now")
    if last_fire is None or (last_fire := _utc(last_fire, "last_fire")) >= now:
        return CatchUp(None, ())
    due, dropped = _latest_fires(schedule, last_fire, now, CATCH_UP_CAP + 1)
    if not due:
        return CatchUp(None, ())
    if (now - due[-1]).total_seconds() <= grace_seconds:
        return CatchUp(due[-1], tuple(due[:-1]), capped=dropped)
    return CatchUp(None, tuple(due[-CATCH_UP_CAP:]), capped=dropped or len(due) > CATCH_UP_CAP)


def _zone(name: str) -> tzinfo:
    problem = f"Unknown time zone `{name}`: use an IANA name like Europe/Paris or UTC."
    if not name or name.lower() in _NOT_IANA or name.startswith(("posix/", "right/")):
        raise ScheduleError(problem)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(problem) from None


def _check_interval(seconds: int, text: str, min_interval_seconds: int) -> None:
    if seconds < min_interval_seconds:
        raise ScheduleError(f"`{text}` is too often: this bot allows at most one run every "
                            f"{min_interval_seconds} s.")
    if seconds > MAX_INTERVAL_SECONDS:
        raise ScheduleError(f"`{text}` is too long: use at most 366 days.")


def _interval_seconds(expression: str) -> int | None:
    interval = _INTERVAL_RE.match(expression)
    return int(interval.group(1)) * _UNIT_SECONDS[interval.group(2)] if interval else None


def _cron_trigger(expression: str, zone: tzinfo) -> BaseTrigger:
    """One CronTrigger, or two ORed when day of month and weekday are both restricted."""
    fields = expression.split()
    if len(fields) != len(_FIELD_NAMES):
        raise ScheduleError(f"`{expression}` has {len(fields)} field(s); a cron schedule has "
                            f"5 fields: {CRON_FIELDS} (no seconds).")
    for name, label, value in zip(_FIELD_NAMES, _FIELD_LABELS, fields, strict=True):
        problem = _field_problem(name, value, zone)
        if problem:
            raise ScheduleError(f"Bad {label} field `{value}`: {problem}.")
    minute, hour, day, month, weekday = fields
    days = _apscheduler_weekdays(weekday)
    try:
        if day.startswith("*") or weekday.startswith("*"):
            return CronTrigger.from_crontab(f"{minute} {hour} {day} {month} {days}",
                                            timezone=zone)
        # Standard cron: when both are restricted, a day matching either one fires.
        return OrTrigger([
            CronTrigger.from_crontab(f"{minute} {hour} {day} {month} *", timezone=zone),
            CronTrigger.from_crontab(f"{minute} {hour} * {month} {days}", timezone=zone),
        ])
    except ValueError as exc:
        raise ScheduleError(f"Bad cron expression `{expression}`: {exc}.") from None


def _field_problem(name: str, value: str, zone: tzinfo) -> str | None:
    """Why APScheduler refuses one field (weekdays are checked by `_apscheduler_weekdays`)."""
    if not _FIELD_CHARS.match(value):
        return "use numbers, names, `*`, `,`, `-` and `/`"
    # APScheduler matches month names without anchoring: `jan/2` would silently mean `jan`.
    if name == "month" and not all(_MONTH_ITEM.match(item) for item in value.split(",")
                                   if re.search("[a-z]", item)):
        return "use 1-12 or jan-dec (names take no step: `jan-jun`, not `jan-jun/2`)"
    if name == "day_of_week":
        return None
    try:
        CronTrigger(**{name: value}, timezone=zone)
    except ValueError as exc:
        return str(exc)
    return None


def _apscheduler_weekdays(field: str) -> str:
    """A standard-cron weekday field (Sunday = 0 or 7) as weekday names for APScheduler."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        parsed = _WEEKDAY_ITEM.match(item)
        if not parsed:
            raise ScheduleError(f"Bad weekday field `{field}`: use 0-7 (0 and 7 are Sunday) "
                                "or sun-sat, with `*`, `,`, `-` and `/`.")
        star, first, last, step = parsed.groups()
        low, high = (0, 6) if star else (_weekday(first, field), _weekday(last or first, field))
        if last == "sun":  # `mon-sun`: Sunday ends the week as 7
            high = 7
        if step is not None and not (star or last):
            raise ScheduleError(f"Bad weekday field `{field}`: a step needs `*` or a range "
                                "(`*/2`, `1-5/2`).")
        if high < low or (step is not None and int(step) == 0):
            raise ScheduleError(f"Bad weekday field `{field}`: ranges go from low to high and "
                                "steps are at least 1.")
        days.update(day % 7 for day in range(low, high + 1, int(step or 1)))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def _weekday(token: str, field: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token in _DAY_NAMES:
        return _DAY_NAMES.index(token)
    raise ScheduleError(f"Bad weekday field `{field}`: `{token}` is not 0-7 or sun-sat.")


def _smallest_cron_gap(expression: str) -> int:
    """Seconds between the closest two fires of a cron expression (a lower bound).

    Only minute and hour can bring fires closer than a day, so they are evaluated over one
    day as if every day matched (restricting days only removes fires, widening gaps), plus
    the next day's first fire for the gap across midnight. In UTC: no daylight saving. So it
    may refuse an expression whose only close pair spans midnight into a day that never
    matches; it does not see the repeated hour when clocks go back.
    """
    minute, hour = expression.split()[:2]
    return _smallest_gap(minute, hour)


@functools.lru_cache(maxsize=4096)
def _smallest_gap(minute: str, hour: str) -> int:
    """`_smallest_cron_gap` of these two fields, remembered: walking a day of fires costs
    tens of milliseconds (1,440 for `* * * * *`), and creating many routines on the same
    schedule (`routines apply` of thousands of files) would pay it for every one."""
    trigger = CronTrigger(minute=minute, hour=hour, timezone=UTC)
    fires = _fires_after(trigger, _REFERENCE - timedelta(microseconds=1))
    first = previous = next(fires)
    smallest = 86_400
    for when in fires:
        smallest = min(smallest, int((when - previous).total_seconds()))
        if when > first + timedelta(days=1):
            break
        previous = when
    return smallest


def _fires_after(trigger: BaseTrigger, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after `after`, oldest first, until the trigger ends."""
    # Asking for `now` = 1 µs later makes "at or after" (what triggers answer) "after".
    when: datetime | None = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    while when is not None:
        yield when
        when = trigger.get_next_fire_time(when, when)


def _latest_fires(schedule: Schedule, after: datetime, until: datetime,
                  keep: int) -> tuple[list[datetime], bool]:
    """The latest `keep` fire times in (after, until], and whether earlier ones were left out.

    Looks back over a window that doubles until it holds `keep` fires or reaches `after`,
    so the work follows the number of fires kept, not the length of the downtime.
    """
    window = timedelta(minutes=1)
    while True:
        start = after if window >= until - after else until - window  # no underflow
        latest: deque[datetime] = deque(maxlen=keep)
        total = 0
        for when in _fires_after(trigger_for(schedule), start):
            if when > until:
                break
            latest.append(when)
            total += 1
        if len(latest) == keep or start == after:
            older = start > after and bool(fires_between(schedule, after, start, limit=1))
            return list(latest), older or total > keep
        window *= 2


def _utc(value: datetime, name: str) -> datetime:
    """An aware datetime in UTC: Python compares and subtracts two datetimes of the same zone
    by wall clock (a day across a DST change is then 24 h, not 23), and UTC has no DST."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {value!r}")
    return value.astimezone(UTC)
