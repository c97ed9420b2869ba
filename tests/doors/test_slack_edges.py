"""The Slack door refuses bad input clearly and changes nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest

from bot.app import Bot
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_requests import FakeSlack, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


async def make_routine(start_bot: BotFactory, git_repo: str) -> tuple[Bot, FakeSlack]:
    bot, fake = await start_bot()
    reply = await fake.submit_view("routine_create", modal_values(
        name="nightly", prompt="Check things.", repo_url=git_repo, branch="main",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"))
    assert reply.status == 200 and reply.text == ""
    return bot, fake


async def test_forged_signature_is_refused_and_queues_nothing(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await make_routine(start_bot, git_repo)
    body = fake.slash_body("run nightly", "U0ALICE01", "C0GENERAL1")

    reply = await fake.post(body, signature="v0=" + "0" * 64)

    assert reply.status == 401
    assert bot.services.routines.history("nightly") == []


async def test_replayed_request_older_than_five_minutes_is_refused(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await make_routine(start_bot, git_repo)
    old = int(time.time()) - 6 * 60
    body = fake.slash_body("run nightly", "U0ALICE01", "C0GENERAL1")

    reply = await fake.post(body, timestamp=old)  # correctly signed, but stale

    assert reply.status == 401
    assert bot.services.routines.history("nightly") == []


async def test_unknown_routine_says_so(start_bot: BotFactory) -> None:
    _, fake = await start_bot()

    reply = await fake.slash("run nope")

    assert reply.status == 200
    assert reply.json()["response_type"] == "ephemeral"
    assert "No routine named `nope`" in reply.json()["text"]


async def test_unknown_subcommand_shows_help(start_bot: BotFactory) -> None:
    _, fake = await start_bot()

    reply = await fake.slash("explode now")

    text = json.dumps(reply.json()["blocks"])
    assert "Unknown subcommand `explode`" in text
    assert "/routine run NAME" in text


async def test_modal_errors_are_shown_on_the_fields_and_nothing_is_saved(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await make_routine(start_bot, git_repo)

    reply = await fake.submit_view("routine_create", modal_values(
        name="nightly", prompt="  ", repo_url="ext::sh -c touch% /tmp/pwned",
        branch="--upload-pack=x",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="999999"))

    errors = reply.json()["errors"]
    assert reply.json()["response_action"] == "errors"
    assert errors["name"] == "A routine named `nightly` already exists."
    assert set(errors) == {"name", "prompt", "repo_url", "branch", "timeout_seconds"}
    assert [o.routine.name for o in bot.services.routines.overviews()] == ["nightly"]
    assert bot.services.routines.get("nightly").prompt == "Check things."


async def test_a_repository_outside_the_fetch_policy_is_refused_on_its_field(
    start_bot: BotFactory,
) -> None:
    """Checked from the URL alone when the routine is saved: nothing is resolved."""
    bot, fake = await start_bot(repo_hosts=("github.com", "*.corp.example"))

    def submit(name: str, repo_url: str) -> Any:
        return fake.submit_view("routine_create", modal_values(
            name=name, prompt="Check things.", repo_url=repo_url, branch="main",
            channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"))

    refused = {url: (await submit("refused", url)).json()["errors"] for url in (
        "https://github.com.attacker.org/org/repo", "https://169.254.169.254/latest",
        "git@10.0.0.5:org/repo.git", "https://corp.example/org/repo")}
    accepted = await submit("accepted", "https://git.corp.example/org/repo.git")

    assert refused == {
        "https://github.com.attacker.org/org/repo": {"repo_url": (
            "Repository refused: github.com.attacker.org is not one of the allowed repository "
            "hosts (ROUTINES_REPO_HOSTS).")},
        "https://169.254.169.254/latest": {"repo_url": (
            "Repository refused: 169.254.169.254 is an IP address; name the host instead.")},
        "git@10.0.0.5:org/repo.git": {"repo_url": (
            "Repository refused: 10.0.0.5 is an IP address; name the host instead.")},
        "https://corp.example/org/repo": {"repo_url": (
            "Repository refused: corp.example is not one of the allowed repository hosts "
            "(ROUTINES_REPO_HOSTS).")},
    }
    assert accepted.status == 200 and accepted.text == ""
    assert [o.routine.name for o in bot.services.routines.overviews()] == ["accepted"]


async def test_list_status_and_history_answer_ephemerally(
    start_bot: BotFactory, git_repo: str, slack_api: SlackApiStandIn,
) -> None:
    _, fake = await make_routine(start_bot, git_repo)

    listing = (await fake.slash("list")).json()
    status = (await fake.slash("status nightly")).json()
    history = (await fake.slash("history nightly")).json()

    assert "*nightly*" in json.dumps(listing["blocks"]) and "never run" in json.dumps(listing)
    assert "Check things." in json.dumps(status["blocks"])
    assert "No runs yet." in json.dumps(history["blocks"])
    assert {listing["response_type"], status["response_type"], history["response_type"]} == {
        "ephemeral"}


async def test_oversized_body_is_refused(start_bot: BotFactory) -> None:
    bot, _ = await start_bot()
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{bot.port}/slack/events", data=b"x" * (2 * 1024 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert response.status == 413


async def test_healthz_reports_the_database(start_bot: BotFactory) -> None:
    bot, _ = await start_bot()
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{bot.port}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"ok": True, "database": True}
