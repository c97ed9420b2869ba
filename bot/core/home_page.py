"""What a user's App Home tab shows: pure decisions, no Slack and no database.

`home_page` splits the routines into the user's own and the team's, works out each one's
next run and whether it is held, and keeps the whole view inside Slack's 100-block limit
(the rest is summarised as "N more"). An admin's page also lists the processes serving the
database (the workers: their state, last heartbeat and running runs), in one block of its
own, so that a dead worker is seen where admins already look. `bot.doors.slack.home`
fetches the data and publishes.

It reads a routine, its last run and the kill switch through the small protocols below, not
the stored tables, and hands the same objects back on the page for the template to show.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from bot.core import schedule
from bot.core.worker import WorkerRole, WorkerState

MAX_BLOCKS = 100  # Slack's limit for a Home tab
FIXED_BLOCKS = 3  # header, kill switch, notice
BLOCKS_PER_SECTION = 3  # divider, section header, "N more" / "none" line
BLOCKS_PER_ROUTINE = 2  # the routine's section and its buttons
MAX_ROUTINES = (MAX_BLOCKS - FIXED_BLOCKS - 2 * BLOCKS_PER_SECTION) // BLOCKS_PER_ROUTINE
TEAM_MIN_SHOWN = 10  # the team's routines keep some room however many the user owns
# An admin's "Workers" section: divider, header and one text block (a line per worker,
# the rest as "N more", within a section's 3,000 characters), so two routines fewer.
WORKER_BLOCKS = 3
MAX_WORKERS_SHOWN = 10

_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")


class RoutineFacts(Protocol):
    """What the page decides on about a routine."""

    @property
    def owners(self) -> str: ...  # comma-separated
    @property
    def created_by(self) -> str: ...
    @property
    def schedule(self) -> str | None: ...
    @property
    def schedule_tz(self) -> str: ...
    @property
    def paused(self) -> bool: ...


class KillSwitchFacts(Protocol):
    @property
    def engaged(self) -> bool: ...


class WorkerFacts(Protocol):
    """What an admin's page shows of a worker, e.g. `bot.services.workers.WorkerView`."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> WorkerRole: ...
    @property
    def state(self) -> WorkerState: ...
    @property
    def heartbeat_at(self) -> datetime: ...
    @property
    def running_runs(self) -> tuple[int, ...]: ...


R = TypeVar("R", bound=RoutineFacts)  # a routine, shown as it came
L = TypeVar("L")  # its last run: only passed through to the page
K = TypeVar("K", bound=KillSwitchFacts)
R_co = TypeVar("R_co", bound=RoutineFacts, covariant=True)
L_co = TypeVar("L_co", covariant=True)


class Overview(Protocol[R_co, L_co]):
    """A routine with its last run, e.g. `bot.services.service.RoutineOverview`."""

    @property
    def routine(self) -> R_co: ...
    @property
    def last_run(self) -> L_co | None: ...


@dataclass(frozen=True)
class HomeEntry(Generic[R, L]):
    routine: R
    last_run: L | None
    next_run: datetime | None  # None: no schedule, or held
    held: str  # why its triggers are held ("paused", "kill switch"), or ""


@dataclass(frozen=True)
class HomeSection(Generic[R, L]):
    title: str
    entries: tuple[HomeEntry[R, L], ...]
    total: int

    @property
    def more(self) -> int:
        """Routines of this section left out to stay within Slack's limit."""
        return self.total - len(self.entries)


@dataclass(frozen=True)
class HomeWorkers:
    """The workers an admin sees: the silent ones first (they need a look), then by id."""

    entries: tuple[WorkerFacts, ...]
    total: int

    @property
    def more(self) -> int:
        return self.total - len(self.entries)


@dataclass(frozen=True)
class HomePage(Generic[R, L, K]):
    user_id: str
    kill_switch: K
    mine: HomeSection[R, L]
    team: HomeSection[R, L]
    notice: str = ""  # the answer to this user's last click (a refusal says who may)
    workers: HomeWorkers | None = None  # an admin's page only


def workers_shown(workers: Sequence[WorkerFacts]) -> HomeWorkers:
    """Silent workers first (dead, or cut off: their runs are being lost), then the live
    ones, then the stopped; by id within each; at most `MAX_WORKERS_SHOWN`."""
    order = {WorkerState.SILENT: 0, WorkerState.ALIVE: 1, WorkerState.STOPPED: 2}
    ranked = sorted(workers, key=lambda w: (order[w.state], w.id))
    return HomeWorkers(tuple(ranked[:MAX_WORKERS_SHOWN]), len(ranked))


def belongs_to(routine: RoutineFacts, user_id: str) -> bool:
    """The user's routines: they are one of its owners, or created it."""
    owners = {owner.strip() for owner in routine.owners.split(",")}
    return user_id in owners or routine.created_by == user_id


def next_run(routine: RoutineFacts, now: datetime) -> datetime | None:
    if not routine.schedule:
        return None
    when = schedule.Schedule(routine.schedule, routine.schedule_tz)
    fires = schedule.next_fire_times(when, now, 1)
    return fires[0] if fires else None


def held_because(routine: RoutineFacts, kill_switch: KillSwitchFacts) -> str:
    if kill_switch.engaged:
        return "kill switch"
    return "paused" if routine.paused else ""


def home_page(overviews: Sequence[Overview[R, L]], kill_switch: K, user_id: str,
              now: datetime, notice: str = "", max_routines: int = MAX_ROUTINES,
              workers: Sequence[WorkerFacts] | None = None) -> HomePage[R, L, K]:
    """The page for one user; `overviews` come in display order (by name). `workers` is
    given for an admin only (None: no Workers section), and takes a few routines' room."""
    if workers is not None:
        max_routines -= -(-WORKER_BLOCKS // BLOCKS_PER_ROUTINE)
    mine = [o for o in overviews if belongs_to(o.routine, user_id)]
    team = [o for o in overviews if not belongs_to(o.routine, user_id)]
    mine_shown = min(len(mine), max_routines - min(len(team), TEAM_MIN_SHOWN))
    team_shown = min(len(team), max_routines - mine_shown)

    def entries(chosen: Sequence[Overview[R, L]]) -> tuple[HomeEntry[R, L], ...]:
        result: list[HomeEntry[R, L]] = []
        for o in chosen:
            held = held_because(o.routine, kill_switch)
            result.append(HomeEntry(o.routine, o.last_run,
                                    None if held else next_run(o.routine, now), held))
        return tuple(result)

    return HomePage(
        user_id=user_id, kill_switch=kill_switch, notice=notice,
        mine=HomeSection("Your routines", entries(mine[:mine_shown]), len(mine)),
        team=HomeSection("The team's routines", entries(team[:team_shown]), len(team)),
        workers=workers_shown(workers) if workers is not None else None,
    )


def mention(actor: str | None) -> str:
    """A Slack user id as a mention; anything else (a token name, `schedule`) as text."""
    if not actor:
        return "someone"
    if _SLACK_USER.match(actor):
        return f"<@{actor}>"
    return actor.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
