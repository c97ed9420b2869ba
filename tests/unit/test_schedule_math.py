"""Schedules: parsing and refusals, fire times across time zones and daylight saving, the
catch-up decision after downtime. The APScheduler adapter firing for real is in
tests/doors/test_schedule_runner.py."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.core.schedule import (
    CATCH_UP_CAP,
    CatchUp,
    Schedule,
    ScheduleError,
    catch_up,
    fires_between,
    next_fire_times,
    parse_schedule,
)
from bot.errors import RoutinesError


def at(text: str) -> datetime:
    """An aware datetime from ISO text; without an offset it is UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(values: list[datetime]) -> list[str]:
    return [value.isoformat() for value in values]


@pytest.mark.parametrize(("expression", "timezone", "normalized"), [
    ("*/5 * * * *", "UTC", Schedule("*/5 * * * *", "UTC")),
    ("  0  9 * *   MON-FRI ", " Europe/Paris ", Schedule("0 9 * * mon-fri", "Europe/Paris")),
    ("0 9 * * 1-5", "America/New_York", Schedule("0 9 * * 1-5", "America/New_York")),
    ("0 9 1 * mon", "UTC", Schedule("0 9 1 * mon", "UTC")),
    ("0 0 * jan-mar *", "UTC", Schedule("0 0 * jan-mar *", "UTC")),
    ("* * * * *", "UTC", Schedule("* * * * *", "UTC")),
    ("0 0 29 2 *", "UTC", Schedule("0 0 29 2 *", "UTC")),
    ("every 90s", "UTC", Schedule("every 90s", "UTC")),
    ("@every 5m", "UTC", Schedule("every 5m", "UTC")),
    ("Every 2H", "Asia/Tokyo", Schedule("every 2h", "Asia/Tokyo")),
    ("every 1d", "UTC", Schedule("every 1d", "UTC")),
    ("@hourly", "UTC", Schedule("@hourly", "UTC")),
    ("@DAILY", "UTC", Schedule("@daily", "UTC")),
    ("@weekly", "UTC", Schedule("@weekly", "UTC")),
])
def test_good_schedules_are_normalized(expression: str, timezone: str,
                                       normalized: Schedule) -> None:
    assert parse_schedule(expression, timezone) == normalized


@pytest.mark.parametrize(("expression", "timezone", "min_interval", "message"), [
    ("*/5 * * * *", "Mars/Olympus", 60, r"time zone `Mars/Olympus`: .*IANA name like Europe/Paris"),
    ("*/5 * * * *", "paris", 60, "IANA name"),
    ("*/5 * * * *", "localtime", 60, "IANA name"),
    ("*/5 * * * *", "../etc/passwd", 60, "IANA name"),
    ("*/5 * * * *", "", 60, "IANA name"),
    ("*/30 * * * * *", "UTC", 60, r"6 field\(s\).*5 fields: minute hour day month weekday"),
    ("0 9 * *", "UTC", 60, r"4 field\(s\).*5 fields: minute hour day month weekday"),
    ("61 * * * *", "UTC", 60, r"Bad minute field `61`: .*maximum value \(59\)"),
    ("*/0 * * * *", "UTC", 60, r"Bad minute field `\*/0`: Increment must be higher than 0"),
    ("0 24 * * *", "UTC", 60, r"Bad hour field `24`: .*maximum value \(23\)"),
    ("0 9 32 * *", "UTC", 60, r"Bad day-of-month field `32`"),
    ("0 9 * 13 *", "UTC", 60, r"Bad month field `13`"),
    ("0 9 * jan/2 *", "UTC", 60, r"Bad month field `jan/2`: .*no step"),
    ("0 9 L * *", "UTC", 60, r"Bad day-of-month field `l`: Unrecognized expression"),
    ("0 9 * * 8", "UTC", 60, r"Bad weekday field `8`: `8` is not 0-7 or sun-sat"),
    ("0 9 * * mon#2", "UTC", 60, r"Bad weekday field `mon#2`"),
    ("0 9 * * fri-mon", "UTC", 60, r"Bad weekday field `fri-mon`: ranges go from low to high"),
    ("0 9 * * 1/2", "UTC", 60, r"Bad weekday field `1/2`: a step needs"),
    ("0 0 30 2 *", "UTC", 60, "never fires"),
    ("every 30s", "UTC", 60, r"`every 30s` is too often: .*one run every 60 s"),
    ("every 0s", "UTC", 0, "too often"),
    ("every 4m", "UTC", 300, r"too often: .*every 300 s"),
    ("*/2 * * * *", "UTC", 300, r"can fire 120 s apart; .*one run every 300 s"),
    ("* * * * *", "UTC", 61, r"can fire 60 s apart"),
    ("0,50 2 * * *", "UTC", 3600, r"can fire 3000 s apart"),
    ("@hourly", "UTC", 3601, r"can fire 3600 s apart"),
    ("every 400d", "UTC", 60, "at most 366 days"),
    ("every 5 minutes", "UTC", 60, r"not an interval: write `every 90s`"),
    ("@often", "UTC", 60, r"Unknown shortcut `@often`"),
    ("   ", "UTC", 60, "Give a schedule"),
])
def test_bad_schedules_say_why(expression: str, timezone: str, min_interval: int,
                               message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(expression, timezone, min_interval_seconds=min_interval)


def test_a_schedule_error_is_a_routines_error_and_a_value_error() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule("nope")
    assert isinstance(caught.value, RoutinesError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("expression", "min_interval"), [
    ("* * * * *", 60), ("every 60s", 60), ("every 1m", 60), ("@hourly", 3600),
    ("0 0,23 * * *", 3600), ("every 1s", 1),
])
def test_the_minimum_interval_itself_is_allowed(expression: str, min_interval: int) -> None:
    parse_schedule(expression, min_interval_seconds=min_interval)


@pytest.mark.parametrize(("expression", "weekdays"), [
    # Standard cron numbers Sunday 0 (and 7); APScheduler 3 alone would read 1-5 as Tue-Sat.
    ("0 9 * * 1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
    ("0 9 * * mon-fri", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
    ("0 9 * * 0", ["Sun"]),
    ("0 9 * * 7", ["Sun"]),
    ("0 9 * * 5-7", ["Fri", "Sat", "Sun"]),
    ("0 9 * * mon-sun", ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]),
    ("0 9 * * */2", ["Tue", "Thu", "Sat", "Sun"]),
    ("0 9 * * 1-5/2,sat", ["Mon", "Wed", "Fri", "Sat"]),
    ("@weekly", ["Sun"]),
])
def test_weekdays_follow_standard_cron(expression: str, weekdays: list[str]) -> None:
    week = fires_between(parse_schedule(expression), at("2026-03-01T00:00"),
                         at("2026-03-08T00:00"))  # Sunday to Sunday, the end included
    assert sorted({fire.strftime("%a") for fire in week}) == sorted(weekdays)


def test_day_of_month_and_weekday_both_restricted_means_either() -> None:
    fires = next_fire_times(parse_schedule("0 9 1 * mon"), at("2026-02-28T00:00"), 4)
    assert iso(fires) == ["2026-03-01T09:00:00+00:00", "2026-03-02T09:00:00+00:00",
                          "2026-03-09T09:00:00+00:00", "2026-03-16T09:00:00+00:00"]


def test_hourly_fires_stay_an_hour_apart_when_paris_springs_forward() -> None:
    # 2026-03-29 in Europe/Paris: 02:00 CET becomes 03:00 CEST; there is no 02:00 local.
    fires = next_fire_times(parse_schedule("0 * * * *", "Europe/Paris"),
                            at("2026-03-29T00:30+01:00"), 4)
    assert iso(fires) == ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00",
                          "2026-03-29T04:00:00+02:00", "2026-03-29T05:00:00+02:00"]
    # In UTC: Python subtracts datetimes of one zone by wall clock (01:00 to 03:00 is 2 h).
    in_utc = [fire.astimezone(UTC) for fire in fires]
    assert {b - a for a, b in itertools.pairwise(in_utc)} == {timedelta(hours=1)}


def test_a_daily_time_keeps_the_wall_clock_across_the_change() -> None:
    fires = next_fire_times(parse_schedule("0 9 * * *", "Europe/Paris"),
                            at("2026-03-28T00:00+01:00"), 3)
    assert iso(fires) == ["2026-03-28T09:00:00+01:00", "2026-03-29T09:00:00+02:00",
                          "2026-03-30T09:00:00+02:00"]
    assert [fire.astimezone(UTC).hour for fire in fires] == [8, 7, 7]


def test_an_interval_is_elapsed_time_across_the_change() -> None:
    fires = next_fire_times(parse_schedule("every 1d", "Europe/Paris"),
                            at("2026-03-28T12:00+01:00"), 2)
    assert iso(fires) == ["2026-03-29T00:00:00+01:00", "2026-03-30T01:00:00+02:00"]


def test_an_interval_keeps_its_cadence_whenever_it_is_asked() -> None:
    schedule = parse_schedule("every 90s")
    early = next_fire_times(schedule, at("2026-05-01T10:00:00"), 5)
    later = next_fire_times(schedule, at("2026-05-01T10:01:40.5"), 3)
    assert later == early[1:4]
    assert {int(fire.timestamp()) % 90 for fire in early} == {0}


def test_next_fire_times_are_strictly_after() -> None:
    schedule = parse_schedule("*/5 * * * *")
    assert iso(next_fire_times(schedule, at("2026-05-01T10:05:00"), 2)) == [
        "2026-05-01T10:10:00+00:00", "2026-05-01T10:15:00+00:00"]
    assert next_fire_times(schedule, at("2026-05-01T10:05:00"), 0) == []


def test_times_must_be_aware() -> None:
    with pytest.raises(ValueError, match="after must be an aware datetime"):
        next_fire_times(parse_schedule("@hourly"), datetime(2026, 5, 1), 1)
    with pytest.raises(ValueError, match="now must be an aware datetime"):
        catch_up(parse_schedule("@hourly"), None, datetime(2026, 5, 1), 60)


@pytest.mark.parametrize(("start", "end", "limit", "expected"), [
    ("10:00", "11:00", 1000, ["10:15", "10:30", "10:45", "11:00"]),
    ("10:15", "10:44", 1000, ["10:30"]),
    ("10:00", "11:00", 2, ["10:15", "10:30"]),
    ("10:00", "10:00", 1000, []),
    ("11:00", "10:00", 1000, []),
])
def test_fires_between_is_start_exclusive_end_inclusive(start: str, end: str, limit: int,
                                                        expected: list[str]) -> None:
    fires = fires_between(parse_schedule("*/15 * * * *"), at(f"2026-05-01T{start}"),
                          at(f"2026-05-01T{end}"), limit=limit)
    assert [fire.strftime("%H:%M") for fire in fires] == expected


HOURLY = Schedule("0 * * * *")


@pytest.mark.parametrize(("last_fire", "now", "grace", "expected"), [
    (None, "10:30", 300, CatchUp(None, ())),
    ("10:00", "10:59", 300, CatchUp(None, ())),
    ("10:00", "09:00", 300, CatchUp(None, ())),
    ("09:00", "10:00:30", 60, CatchUp(at("2026-05-01T10:00"), ())),
    ("07:00", "10:02", 300,
     CatchUp(at("2026-05-01T10:00"), (at("2026-05-01T08:00"), at("2026-05-01T09:00")))),
    ("07:00", "10:05", 300,
     CatchUp(at("2026-05-01T10:00"), (at("2026-05-01T08:00"), at("2026-05-01T09:00")))),
    ("07:00", "10:05:01", 300,
     CatchUp(None, (at("2026-05-01T08:00"), at("2026-05-01T09:00"), at("2026-05-01T10:00")))),
])
def test_catch_up_runs_at_most_the_latest_fire_within_grace(
    last_fire: str | None, now: str, grace: int, expected: CatchUp,
) -> None:
    last = at(f"2026-05-01T{last_fire}") if last_fire else None
    assert catch_up(HOURLY, last, at(f"2026-05-01T{now}"), grace) == expected


def test_catch_up_measures_grace_in_real_time_across_a_dst_change() -> None:
    # Paris midnight, then clocks jump 02:00 -> 03:00: at 03:30 local only 2.5 h have passed
    # (3.5 h by the wall clock, which is what Python computes within one zone).
    paris = ZoneInfo("Europe/Paris")
    daily = parse_schedule("@daily", "Europe/Paris")
    now = datetime(2026, 3, 29, 3, 30, tzinfo=paris)
    decision = catch_up(daily, datetime(2026, 3, 28, 12, 0, tzinfo=paris), now, 3 * 3600)
    assert decision == CatchUp(datetime(2026, 3, 29, tzinfo=paris), ())


def test_catch_up_after_a_year_down_keeps_the_latest_missed_fires() -> None:
    every_minute = parse_schedule("* * * * *")
    now = at("2026-05-01T10:00:30")
    inside = catch_up(every_minute, at("2025-05-01T10:00"), now, grace_seconds=60)
    assert inside.run_for == at("2026-05-01T10:00")
    assert len(inside.missed) == CATCH_UP_CAP and inside.capped
    assert inside.missed[0] == at("2026-05-01T08:20") and inside.missed[-1] == at(
        "2026-05-01T09:59")
    outside = catch_up(every_minute, at("2025-05-01T10:00"), now, grace_seconds=10)
    assert outside.run_for is None
    assert outside.missed == (*inside.missed[1:], at("2026-05-01T10:00")) and outside.capped


def test_catch_up_from_a_very_old_last_fire_does_not_overflow() -> None:
    # APScheduler 3's cron calendar starts in 1970; the look-back window must stop at
    # `last_fire` rather than reach before year 1.
    decision = catch_up(parse_schedule("@yearly"), datetime(1, 1, 1, tzinfo=UTC),
                        at("2026-05-01T00:00"), grace_seconds=0)
    assert decision.run_for is None and decision.missed[-1] == at("2026-01-01T00:00")
    assert decision.missed[0] == at("1970-01-01T00:00") and not decision.capped


@pytest.mark.parametrize(("grace", "run_for", "missed", "capped"), [
    (60, "11:41", CATCH_UP_CAP, False),  # 101 due: one runs, 100 reported, nothing dropped
    (0, None, CATCH_UP_CAP, True),  # 101 due, none runs: the oldest one is left out
])
def test_catch_up_cap_boundary(grace: int, run_for: str | None, missed: int,
                               capped: bool) -> None:
    decision = catch_up(parse_schedule("* * * * *"), at("2026-05-01T10:00"),
                        at("2026-05-01T11:41:30"), grace)
    assert decision.run_for == (at(f"2026-05-01T{run_for}") if run_for else None)
    assert (len(decision.missed), decision.capped) == (missed, capped)
    assert decision.missed[-1] == at("2026-05-01T11:40" if run_for else "2026-05-01T11:41")


@pytest.mark.parametrize("expression", ["*/7 * * * *", "every 90s", "0 9 * * 1-5", "@daily"])
@pytest.mark.parametrize("down", [timedelta(minutes=3), timedelta(hours=5), timedelta(days=9)])
@pytest.mark.parametrize("grace", [0, 120, 3600])
def test_catch_up_never_runs_more_than_once(expression: str, down: timedelta,
                                            grace: int) -> None:
    schedule = parse_schedule(expression, "Europe/Paris")
    now = at("2026-03-30T08:59:40+02:00")
    last = now - down
    decision = catch_up(schedule, last, now, grace)
    due = fires_between(schedule, last, now, limit=10_000)
    assert decision.run_for in (None, *due[-1:])
    reported = [*decision.missed, *([decision.run_for] if decision.run_for else [])]
    assert bool(reported) == bool(due)
    assert reported == due[len(due) - len(reported):]
    assert len(decision.missed) <= CATCH_UP_CAP
    assert decision.capped == (len(reported) < len(due))
