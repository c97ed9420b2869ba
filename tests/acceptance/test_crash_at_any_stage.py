"""Crash at any moment loses nothing: `routines serve`, a real process, is SIGKILLed at each
stage of a run's life (ROUTINES_TEST_CRASH_AT, bot.execution.crash) and started again
without the setting. Whatever the stage, the run ends once, with the right status and
exactly one announcement, and no container or workspace is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import git
import pytest
from sqlmodel import col, select

from bot.core.crash_stage import CrashStage
from bot.core.statuses import FailureKind, RunStatus
from bot.settings import Settings
from bot.store.database import Database
from bot.store.tables import Run
from runner.host import publish, workspace
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.environment import make_git_repo
from tests.standins.slack_api import SlackApiStandIn, SlackCall
from tests.support.bots import RESULTS_CHANNEL
from tests.support.served_bot import ServedBot
from tests.support.slack_flows import DAVE, routine, wait_until

pytestmark = pytest.mark.docker

NAME = "survivor"


@dataclass(frozen=True)
class Expected:
    """How a run killed at a stage ends once the bot is back."""

    status: RunStatus
    failure: FailureKind | None = None


EXPECTED = {
    CrashStage.QUEUED: Expected(RunStatus.SUCCEEDED),  # the next process runs it
    # Claimed, no container yet: nothing ran to adopt, the run is interrupted.
    CrashStage.CLONING: Expected(RunStatus.FAILED, FailureKind.INTERRUPTED),
    CrashStage.CONTAINER_CREATED: Expected(RunStatus.SUCCEEDED),  # started and adopted
    CrashStage.RUNNING: Expected(RunStatus.SUCCEEDED),  # adopted
    CrashStage.FINISHING: Expected(RunStatus.SUCCEEDED),  # adopted, read back at once
    CrashStage.RECORDING: Expected(RunStatus.SUCCEEDED),  # the ended container adopted
    CrashStage.ANNOUNCING: Expected(RunStatus.SUCCEEDED),  # announced at the next start
    # Posted but not marked: the next start updates that same message, posts no other.
    CrashStage.ANNOUNCED: Expected(RunStatus.SUCCEEDED),
    CrashStage.AWAITING_APPROVAL: Expected(RunStatus.SUCCEEDED),  # then pushed
    CrashStage.PUBLISHING: Expected(RunStatus.SUCCEEDED),  # then pushed
    CrashStage.PUSHED: Expected(RunStatus.SUCCEEDED),  # recorded as pushed, not pushed twice
}
PUBLISHING = {CrashStage.AWAITING_APPROVAL, CrashStage.PUBLISHING, CrashStage.PUSHED}
APPROVED_BEFORE = {CrashStage.PUBLISHING, CrashStage.PUSHED}  # the first bot dies after it
# Killed before its verdict is stored, a publishing run keeps its commit all the same.
PUBLISHING_TOO = {CrashStage.RECORDING}
ON_POSTGRES = {CrashStage.QUEUED, CrashStage.RUNNING, CrashStage.ANNOUNCED,
               CrashStage.PUBLISHING}
# With live progress (the product's default) the run's one message is posted when it starts
# and updated into the result: killed while it runs, the restarted bot reuses it.
LIVE = {CrashStage.RUNNING}


def cases() -> list[Any]:
    """(stage, live progress, a publishing routine) for every stage, and the variants."""
    every = [pytest.param(stage, False, stage in PUBLISHING, id=stage.value,
                          marks=[pytest.mark.postgres] if stage in ON_POSTGRES else [])
             for stage in CrashStage]
    return (every + [pytest.param(stage, True, False, id=f"{stage.value}-live")
                     for stage in LIVE]
            + [pytest.param(stage, False, True, id=f"{stage.value}-publishing")
               for stage in PUBLISHING_TOO])


@pytest.fixture
async def served(settings: Settings, tmp_path: Path, docker_client: Any, live: bool,
                 ) -> AsyncIterator[ServedBot]:
    """The bot's deployment, served by `routines serve` processes the test starts."""
    bot = ServedBot(replace(settings, admins=(DAVE,), live_progress=live), tmp_path)
    yield bot
    await bot.stop()
    await asyncio.to_thread(bot.remove_leftovers, docker_client)


@pytest.mark.parametrize(("stage", "live", "publishing"), cases())
async def test_a_bot_killed_at_any_stage_loses_nothing(
    stage: CrashStage, live: bool, publishing: bool, served: ServedBot, slack_api: SlackApiStandIn,
    anthropic_api: AnthropicStandIn, database_url: str, docker_client: Any, tmp_path: Path,
) -> None:
    expected = EXPECTED[stage]
    marker = anthropic_api.script(
        "crash", [tool("run_shell", command="echo kept > KEPT.md")],
        [report("success", "Kept the file.")])
    repo = origin(tmp_path) if publishing else make_git_repo(tmp_path / "upstream")
    await served.start(crash_at=stage.value)
    fake = served.slack
    await routine(fake, NAME, f"Keep it. {marker}", repo,
                  *(["risk=medium"] if publishing else []))

    with contextlib.suppress(aiohttp.ClientError):  # `queued` dies before it answers
        await fake.slash(f"run {NAME}")
    if stage in APPROVED_BEFORE:
        # Once its result is posted and marked: a crash between Slack's answer to the post
        # and its recording (milliseconds) would post it again, a window no crash point
        # covers; it is this stage that is tested here.
        await wait_until(lambda: announced(database_url), timeout=90)
        await approve_publishing(served, slack_api)

    assert await served.died() == -signal.SIGKILL, served.log()
    assert f"ROUTINES_TEST_CRASH_AT={stage.value} reached" in served.log()
    await served.start()  # without the setting

    run_id = only_run(database_url)
    result = f"{NAME} run #{run_id}: {expected.status}"
    await wait_until(lambda: the_result(slack_api, run_id) is not None, timeout=90)
    assert the_result(slack_api, run_id) == result, stored_run(database_url, run_id).reason
    if publishing and stage not in APPROVED_BEFORE:  # asked for by the restarted bot
        await approve_publishing(served, slack_api)
    if publishing:
        await slack_api.wait_for("chat.update", contains="pushed to branch", timeout=60)
    await wait_until(lambda: served.containers(docker_client) == [], timeout=30)
    await asyncio.sleep(1.0)  # a second announcement, sent at start, would be here by now

    posted = [c for c in slack_api.calls_to("chat.postMessage") if of_run(c, run_id)]
    assert len(posted) == 1, [c.params["text"] for c in posted]  # the run's one message
    updated = [c for c in slack_api.calls_to("chat.update") if of_run(c, run_id)]
    assert {c.params["ts"] for c in updated} <= {posted[0].response["ts"]}
    assert the_result(slack_api, run_id) == result
    stored = stored_run(database_url, run_id)
    assert (stored.status, stored.failure_kind) == (expected.status, expected.failure)
    assert stored.notified_at is not None and stored.finished_at is not None
    assert only_run(database_url) == run_id  # ended once: no second run, no retry
    root = served.workspace_root
    assert workspace.leftover_runs(root) == []
    assert publish.held_runs(root) == []
    assert not any((root / "publish").glob("*"))  # nothing kept, nothing remembered
    if publishing:
        branch = f"routines/{NAME}/{run_id}"
        assert stored.published_ref == f"refs/heads/{branch}"
        pushed = git.Repo(repo.removeprefix("file://")).commit(branch)
        assert pushed.tree["KEPT.md"].data_stream.read() == b"kept\n"


def of_run(call: SlackCall, run_id: int) -> bool:
    """A message of the run itself (its live message or its result), not a request."""
    text = str(call.params.get("text", ""))
    return text.startswith((f"{NAME} run #{run_id}: ", f"{NAME} run #{run_id} is running"))


def the_result(slack_api: SlackApiStandIn, run_id: int) -> str | None:
    """What the run's message says now (its last post or update), once it is a result."""
    said = [c for c in slack_api.calls if c.method in {"chat.postMessage", "chat.update"}
            and of_run(c, run_id)]
    text = str(said[-1].params["text"]) if said else ""
    return text if text.startswith(f"{NAME} run #{run_id}: ") else None


def origin(tmp_path: Path) -> str:
    """A bare repository to publish to (a push needs one)."""
    work = make_git_repo(tmp_path / "seed")
    bare = tmp_path / "origin.git"
    git.Repo.clone_from(work, bare, bare=True).close()
    return f"file://{bare}"


async def approve_publishing(served: ServedBot, slack_api: SlackApiStandIn) -> None:
    """The admin approves the run's publish request once it is posted."""
    posted = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                      contains="publish the changes of", timeout=90)
    actions = [b for b in posted.params["blocks"] if b["type"] == "actions"]
    approval_id = actions[0]["elements"][0]["value"]
    with contextlib.suppress(aiohttp.ClientError):  # `publishing` may die before it answers
        await served.slack.click("approve", approval_id, user=DAVE, channel=RESULTS_CHANNEL)


def only_run(database_url: str) -> int:
    """The one run the test made (by id): a second one would be a run started twice."""
    db = Database(database_url)
    try:
        with db.session() as session:
            ids = list(session.exec(select(Run.id)).all())
    finally:
        db.close()
    assert len(ids) == 1, ids
    assert ids[0] is not None
    return ids[0]


def announced(database_url: str) -> bool:
    db = Database(database_url)
    try:
        with db.session() as session:
            return bool(session.exec(select(Run.id).where(
                col(Run.notified_at).is_not(None))).all())
    finally:
        db.close()


def stored_run(database_url: str, run_id: int) -> Run:
    db = Database(database_url)
    try:
        with db.session() as session:
            run = session.get(Run, run_id)
    finally:
        db.close()
    assert run is not None
    return run
