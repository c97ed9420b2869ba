"""The API door under concurrent calls, over real HTTP: calls that arrive together share a
commit, each is answered for itself, and a 202 means the run is on disk."""

from __future__ import annotations

import asyncio
import json

import pytest
import sqlalchemy

from bot.app import Bot
from bot.core.routine import RoutineDraft
from tests.services.test_group_commit import refuse_audit_entries
from tests.support.bots import BotFactory
from tests.support.http_doors import call

pytestmark = [pytest.mark.docker, pytest.mark.postgres]
ADMIN = "U0ADMIN01"


async def routine_and_token(bot: Bot, name: str, git_repo: str) -> str:
    def make() -> str:
        bot.services.routines.create(RoutineDraft(
            name=name, prompt="p", repo_url=git_repo, channel_id="C0RESULTS1"), ADMIN)
        return bot.services.tokens.create(name, "ci", ADMIN)

    return await asyncio.to_thread(make)


def fresh_runs(database_url: str) -> dict[int, str]:
    """Run ids and keys through a connection of its own, not the bot's."""
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {int(i): str(k) for i, k in conn.execute(sqlalchemy.text(
                "SELECT id, trigger_ref FROM run"))}
    finally:
        engine.dispose()


async def test_concurrent_calls_are_each_answered_and_every_202_is_on_disk(
    start_bot: BotFactory, git_repo: str, database_url: str,
) -> None:
    bot, _ = await start_bot(database_url=database_url, max_concurrent_runs=0,
                             admins=(ADMIN,), triggers_per_minute=1000)
    token = await routine_and_token(bot, "hook", git_repo)
    paused = await routine_and_token(bot, "quiet", git_repo)
    await asyncio.to_thread(bot.services.routines.pause, "quiet", ADMIN)
    path = "/api/v1/routines/{}/runs"

    answers = await asyncio.gather(
        *(call(bot, "POST", path.format("hook"), token, json.dumps({"n": n}).encode(),
               **{"Idempotency-Key": f"key-{n}"}) for n in range(40)),
        call(bot, "POST", path.format("quiet"), paused, b"{}", **{"Idempotency-Key": "q"}),
        call(bot, "POST", path.format("hook"), token, b"{not json"),
        call(bot, "POST", path.format("hook"), paused, b"{}"),
        call(bot, "POST", path.format("hook"), token, b"{}", **{"Idempotency-Key": "key-7"}),
    )
    accepted, refused_paused, malformed, wrong_token, replay = (
        answers[:40], answers[40], answers[41], answers[42], answers[43])
    on_disk = fresh_runs(database_url)  # right after the answers, the bot still running
    assert all(status == 202 for status, _, _ in accepted), accepted
    ids = {body["run_id"] for _, body, _ in accepted}
    assert len(ids) == 40 and ids <= set(on_disk)
    assert refused_paused[0] == 409 and refused_paused[1]["error"] == "paused"
    assert malformed[0] == 400 and malformed[1]["error"] == "invalid_json"
    assert wrong_token[0] == 401
    # The same key as a call of the same moment: one run, whichever was written first.
    assert replay[0] in (200, 202) and on_disk[replay[1]["run_id"]] == "key-7"
    assert sorted(on_disk.values()) == sorted(f"key-{n}" for n in range(40))


async def test_a_database_error_during_a_group_is_a_503_for_every_call(
    start_bot: BotFactory, git_repo: str, database_url: str,
) -> None:
    bot, _ = await start_bot(database_url=database_url, max_concurrent_runs=0)
    token = await routine_and_token(bot, "hook", git_repo)
    refuse_audit_entries(database_url, True)  # fails after the group's runs are inserted
    answers = await asyncio.gather(*(call(
        bot, "POST", "/api/v1/routines/hook/runs", token, b"{}",
        **{"Idempotency-Key": f"key-{n}"}) for n in range(12)))
    assert [status for status, _, _ in answers] == [503] * 12, answers
    assert all(body["error"] == "database_unavailable" and headers["Retry-After"] == "5"
               for _, body, headers in answers)
    assert fresh_runs(database_url) == {}
    refuse_audit_entries(database_url, False)
    status, body, _ = await call(bot, "POST", "/api/v1/routines/hook/runs", token, b"{}",
                                 **{"Idempotency-Key": "key-0"})
    assert status == 202 and fresh_runs(database_url) == {body["run_id"]: "key-0"}
