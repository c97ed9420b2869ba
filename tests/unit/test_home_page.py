"""The Home tab's pure rules: whose routines are whose, next runs, holds, the block budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.core.home_page import (
    BLOCKS_PER_ROUTINE,
    BLOCKS_PER_SECTION,
    FIXED_BLOCKS,
    MAX_BLOCKS,
    MAX_ROUTINES,
    MAX_WORKERS_SHOWN,
    WORKER_BLOCKS,
    belongs_to,
    home_page,
    mention,
    next_run,
)
from bot.core.worker import WorkerRole, WorkerState
from bot.services.views import RoutineOverview
from bot.store.tables import KillSwitch, Routine

NO_ROUTINES: list[RoutineOverview] = []
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ALICE = "U0ALICE01"


def routine(name: str = "r", **overrides: Any) -> Routine:
    fields: dict[str, Any] = dict(name=name, prompt="p", repo_url="https://x/y.git",
                                  channel_id="C0123ABC", model="m", timeout_seconds=60,
                                  max_turns=3, created_by="U0BOB0001", created_at=NOW)
    return Routine(**{**fields, **overrides})


@pytest.mark.parametrize(("owners", "created_by", "mine"), [
    ("", ALICE, True),
    (f"U0CAROL01,{ALICE}", "U0BOB0001", True),
    (f" {ALICE} ", "U0BOB0001", True),
    ("U0CAROL01", "U0BOB0001", False),
    (f"{ALICE}2", "U0BOB0001", False),  # a longer id is someone else
    ("subteam:S0123", "U0BOB0001", False),
])
def test_whose_routine(owners: str, created_by: str, mine: bool) -> None:
    assert belongs_to(routine(owners=owners, created_by=created_by), ALICE) is mine


def test_next_run_follows_the_schedule_and_its_zone() -> None:
    assert next_run(routine(), NOW) is None
    assert next_run(routine(schedule="0 9 * * *", schedule_tz="Europe/Paris"), NOW) == \
        datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def test_paused_and_kill_switch_hold_the_next_run() -> None:
    scheduled = dict(schedule="every 1h")
    overviews = [RoutineOverview(routine("a", **scheduled), None),
                 RoutineOverview(routine("b", paused_at=NOW, **scheduled), None)]
    page = home_page(overviews, KillSwitch(id=1), ALICE, NOW)
    assert [(e.held, e.next_run is not None) for e in page.team.entries] == [
        ("", True), ("paused", False)]
    page = home_page(overviews, KillSwitch(id=1, engaged=True), ALICE, NOW)
    assert [e.held for e in page.team.entries] == ["kill switch", "kill switch"]


@pytest.mark.parametrize(("mine", "team", "shown"), [
    (3, 4, (3, 4)),
    (100, 0, (MAX_ROUTINES, 0)),
    (0, 100, (0, MAX_ROUTINES)),
    (100, 100, (MAX_ROUTINES - 10, 10)),  # the team keeps some room
    (100, 5, (MAX_ROUTINES - 5, 5)),
    (20, 100, (20, MAX_ROUTINES - 20)),
])
def test_the_block_budget_is_shared(mine: int, team: int, shown: tuple[int, int]) -> None:
    overviews = [RoutineOverview(routine(f"m{i}", owners=ALICE), None) for i in range(mine)]
    overviews += [RoutineOverview(routine(f"t{i}"), None) for i in range(team)]
    page = home_page(overviews, KillSwitch(id=1), ALICE, NOW)
    assert (len(page.mine.entries), len(page.team.entries)) == shown
    assert (page.mine.more, page.team.more) == (mine - shown[0], team - shown[1])


@dataclass(frozen=True)
class PlainRoutine:
    name: str
    owners: str = ""
    created_by: str = "U0BOB0001"
    schedule: str | None = "every 1h"
    schedule_tz: str = "UTC"
    paused: bool = False


@dataclass(frozen=True)
class PlainOverview:
    routine: PlainRoutine
    last_run: str | None = None


@dataclass(frozen=True)
class PlainSwitch:
    engaged: bool = False


def test_the_page_needs_no_table_only_what_it_reads() -> None:
    # bot.core reads routines through protocols: any object with those fields will do,
    # and the page hands the very same objects back.
    mine, team = PlainOverview(PlainRoutine("a", owners=ALICE), "run-1"), PlainOverview(
        PlainRoutine("b", paused=True))
    switch = PlainSwitch()
    page = home_page([mine, team], switch, ALICE, NOW)
    assert page.kill_switch is switch
    assert [(e.routine, e.last_run, e.held) for e in page.mine.entries] == [
        (mine.routine, "run-1", "")]
    assert page.mine.entries[0].next_run == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert [(e.routine.name, e.held, e.next_run) for e in page.team.entries] == [
        ("b", "paused", None)]


def test_mentions_only_for_slack_user_ids() -> None:
    assert mention("U0ALICE01") == "<@U0ALICE01>"
    assert mention("token:ci") == "token:ci"
    assert mention("<!here>") == "&lt;!here&gt;"
    assert mention(None) == mention("") == "someone"


@dataclass(frozen=True)
class PlainWorker:
    id: str
    state: WorkerState
    role: WorkerRole = WorkerRole.WORKER
    heartbeat_at: datetime = NOW
    running_runs: tuple[int, ...] = ()


def test_an_admins_page_lists_the_workers_silent_first_and_makes_room() -> None:
    workers = [PlainWorker("h/b", WorkerState.ALIVE), PlainWorker("h/z", WorkerState.SILENT),
               PlainWorker("h/a", WorkerState.STOPPED), PlainWorker("h/c", WorkerState.SILENT)]
    page = home_page(NO_ROUTINES, KillSwitch(id=1), ALICE, NOW, workers=workers)
    assert page.workers is not None
    assert [w.id for w in page.workers.entries] == ["h/c", "h/z", "h/b", "h/a"]
    assert page.workers.more == 0
    assert home_page(NO_ROUTINES, KillSwitch(id=1), ALICE, NOW).workers is None  # not an admin's

    many = [PlainWorker(f"h/{i:02d}", WorkerState.ALIVE) for i in range(MAX_WORKERS_SHOWN + 4)]
    shown = home_page(NO_ROUTINES, KillSwitch(id=1), ALICE, NOW, workers=many).workers
    assert shown is not None and (len(shown.entries), shown.more) == (MAX_WORKERS_SHOWN, 4)


def test_the_workers_section_takes_two_routines_room() -> None:
    overviews = [RoutineOverview(routine(f"t{i}"), None) for i in range(200)]
    plain = home_page(overviews, KillSwitch(id=1), ALICE, NOW)
    admin = home_page(overviews, KillSwitch(id=1), ALICE, NOW, workers=[])
    assert len(plain.team.entries) == MAX_ROUTINES
    assert len(admin.team.entries) == MAX_ROUTINES - 2
    blocks = FIXED_BLOCKS + 2 * BLOCKS_PER_SECTION + WORKER_BLOCKS
    assert blocks + BLOCKS_PER_ROUTINE * len(admin.team.entries) <= MAX_BLOCKS
