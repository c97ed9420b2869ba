"""SQLite locked by another writer (`BEGIN IMMEDIATE` held by a connection of its own):
every door that writes answers 503 `database_unavailable` within Slack's 3 seconds,
instead of hanging or a 500, and writes nothing; released, the same requests work."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.github_payloads import own
from tests.support.http_doors import WEBHOOK_SECRET, call, deliver
from tests.support.slack_requests import modal_values

pytestmark = [pytest.mark.docker]


def row_counts(path: Path) -> dict[str, int]:
    """Every table's rows, read beside the lock (WAL readers are not blocked)."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


async def test_a_locked_database_is_a_503_at_every_door_and_nothing_is_written(
    start_bot: BotFactory, git_repo: str, tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    bot, fake = await start_bot(database_url=f"sqlite:///{path}", max_concurrent_runs=0,
                                github_webhook_secret=WEBHOOK_SECRET)
    reply = await fake.submit_view("routine_create", modal_values(
        name="notes", prompt="Summarise.", repo_url=git_repo, branch="main",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"))
    assert reply.status == 200 and reply.text == "", reply.text
    found = re.search(r"```(rt_[\w-]+)```",
                      json.dumps((await fake.slash("token notes ci")).json()["blocks"]))
    assert found is not None
    token = found.group(1)
    answer = (await fake.slash('github notes "pull_request.opened"')).json()["text"]
    assert "now runs on GitHub events matching" in answer, answer
    hook_body = own("pull_request.opened")
    before = row_counts(path)

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, held
    try:
        api = await call(bot, "POST", "/api/v1/routines/notes/runs", token, b"{}")
        slash = await fake.slash("run notes")
        hook = await deliver(bot, "pull_request", hook_body, "d-locked-1")
        assert row_counts(path) == before  # nothing half-written, checked while locked
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert api[0] == 503 and api[1]["error"] == "database_unavailable", api
    assert "database is busy" in api[1]["message"] and api[2]["Retry-After"] == "5"
    assert slash.status == 503, slash.text
    assert slash.json()["error"] == "database_unavailable"
    assert hook[0] == 503 and hook[1]["error"] == "database_unavailable", hook
    assert row_counts(path) == before
    assert bot.services.routines.history("notes") == []

    # Released: the same requests work, each queues its run.
    api = await call(bot, "POST", "/api/v1/routines/notes/runs", token, b"{}")
    assert api[0] == 202, api
    slash = await fake.slash("run notes")
    assert slash.status == 200 and "queued" in slash.json()["text"], slash.text
    hook = await deliver(bot, "pull_request", hook_body, "d-locked-1")
    assert hook[0] == 202 and len(hook[1]["fired"]) == 1, hook
    assert len(bot.services.routines.history("notes")) == 3
    status, _, _ = await call(bot, "GET", "/healthz")
    assert status == 200
