"""What a user's App Home tab shows: pure decisions, no Slack and no database.

`home_page` splits the routines into the user's own and the team's, works out each one's
next run and whether it is held, and keeps the whole view inside Slack's 100-block limit
(the rest is summarised as "N more"). `bot.doors.slack.home` fetches the data and publishes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.core import schedule
from bot.services.views import RoutineOverview
from bot.store.tables import KillSwitch, Routine, Run

MAX_BLOCKS = 100  # Slack's limit for a Home tab
FIXED_BLOCKS = 3  # header, kill switch, notice
BLOCKS_PER_SECTION = 3  # divider, section header, "N more" / "none" line
BLOCKS_PER_ROUTINE = 2  # the routine's section and its buttons
MAX_ROUTINES = (MAX_BLOCKS - FIXED_BLOCKS - 2 * BLOCKS_PER_SECTION) // BLOCKS_PER_ROUTINE
TEAM_MIN_SHOWN = 10  # the team's routines keep some room however many the user owns

_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")


@dataclass(frozen=True)
class HomeEntry:
    routine: Routine
    last_run: Run | None
    next_run: datetime | None  # None: no schedule, or held
    held: str  # why its triggers are held ("paused", "kill switch"), or ""


@dataclass(frozen=True)
class HomeSection:
    title: str
    entries: tuple[HomeEntry, ...]
    total: int

    @property
    def more(self) -> int:
        """Routines of this section left out to stay within Slack's limit."""
        return self.total - len(self.entries)


@dataclass(frozen=True)
class HomePage:
    user_id: str
    kill_switch: KillSwitch
    mine: HomeSection
    team: HomeSection
    notice: str = ""  # the answer to this user's last click (a refusal says who may)


def belongs_to(routine: Routine, user_id: str) -> bool:
    """The user's routines: they are one of its owners, or created it."""
    owners = {owner.strip() for owner in routine.owners.split(",")}
    return user_id in owners or routine.created_by == user_id


def next_run(routine: Routine, now: datetime) -> datetime | None:
    if not routine.schedule:
        return None
    when = schedule.Schedule(routine.schedule, routine.schedule_tz)
    fires = schedule.next_fire_times(when, now, 1)
    return fires[0] if fires else None


def held_because(routine: Routine, kill_switch: KillSwitch) -> str:
    if kill_switch.engaged:
        return "kill switch"
    return "paused" if routine.paused else ""


def home_page(overviews: Sequence[RoutineOverview], kill_switch: KillSwitch, user_id: str,
              now: datetime, notice: str = "", max_routines: int = MAX_ROUTINES) -> HomePage:
    """The page for one user; `overviews` come in display order (by name)."""
    mine = [o for o in overviews if belongs_to(o.routine, user_id)]
    team = [o for o in overviews if not belongs_to(o.routine, user_id)]
    mine_shown = min(len(mine), max_routines - min(len(team), TEAM_MIN_SHOWN))
    team_shown = min(len(team), max_routines - mine_shown)

    def entries(chosen: Sequence[RoutineOverview]) -> tuple[HomeEntry, ...]:
        result = []
        for o in chosen:
            held = held_because(o.routine, kill_switch)
            result.append(HomeEntry(o.routine, o.last_run,
                                    None if held else next_run(o.routine, now), held))
        return tuple(result)

    return HomePage(
        user_id=user_id, kill_switch=kill_switch, notice=notice,
        mine=HomeSection("Your routines", entries(mine[:mine_shown]), len(mine)),
        team=HomeSection("The team's routines", entries(team[:team_shown]), len(team)),
    )


def mention(actor: str | None) -> str:
    """A Slack user id as a mention; anything else (a token name, `schedule`) as text."""
    if not actor:
        return "someone"
    if _SLACK_USER.match(actor):
        return f"<@{actor}>"
    return actor.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
