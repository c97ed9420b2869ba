"""The engine through the Slack door: the create form's *Engine* select,
`/routine set NAME engine=... repo-config=...` (trusting a repository's config audited) and
`/routine status` showing them."""

from __future__ import annotations

import json

import pytest

from runner.contract import Engine, RepoConfig
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_requests import FakeSlack, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


def form(name: str, repo: str, engine: str | None) -> dict[str, dict[str, object]]:
    fields = dict(name=name, prompt="Check things.", repo_url=repo, branch="main",
                  channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60")
    return modal_values(**fields, **({} if engine is None else {"engine": engine}))


async def status_model(fake: FakeSlack, name: str) -> str:
    blocks = (await fake.slash(f"status {name}")).json()["blocks"]
    texts = [f["text"] for b in blocks for f in b.get("fields", [])]
    [text] = [t for t in texts if t.startswith("*Model · engine*")]
    return str(text)


async def test_the_create_form_offers_the_engines_and_status_shows_the_choice(
        start_bot: BotFactory, git_repo: str) -> None:
    bot, fake = await start_bot()
    reply = await fake.submit_view("routine_create", form("coder", git_repo, "claude-code"))
    assert reply.status == 200 and reply.text == ""
    reply = await fake.submit_view("routine_create", form("plain", git_repo, None))
    assert reply.status == 200 and reply.text == ""
    assert bot.services.routines.get("coder").engine is Engine.CLAUDE_CODE
    assert bot.services.routines.get("plain").engine is Engine.BUILTIN
    assert await status_model(fake, "coder") == (
        "*Model · engine*\nclaude-test-1 · claude-code (repository config untrusted)")
    assert await status_model(fake, "plain") == "*Model · engine*\nclaude-test-1 · builtin"


async def test_routine_set_engine_and_repo_config(start_bot: BotFactory, git_repo: str) -> None:
    bot, fake = await start_bot()
    await fake.submit_view("routine_create", form("nightly", git_repo, None))

    answer = (await fake.slash("set nightly engine=claude-code repo-config=trusted")).json()
    assert answer["text"].startswith("Routine nightly")
    routine = bot.services.routines.get("nightly")
    assert (routine.engine, routine.repo_config) == (Engine.CLAUDE_CODE, RepoConfig.TRUSTED)
    assert await status_model(fake, "nightly") == (
        "*Model · engine*\nclaude-test-1 · claude-code (repository config trusted)")
    assert [e.action for e in bot.services.audit.entries("nightly")
            if e.action == "repo_config_trusted"] == ["repo_config_trusted"]

    refused = (await fake.slash("set nightly engine=gpt")).json()
    assert "use builtin or claude-code" in json.dumps(refused)
    assert bot.services.routines.get("nightly").engine is Engine.CLAUDE_CODE
