"""The GitHub door over real HTTP, with payloads shaped like GitHub's, signed as GitHub signs.

The ordinary tests send the project's own payloads (tests/support/payloads/github/); the
conformance test sends GitHub's real example deliveries (tests/support/github_payloads.py
says where they are).
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from bot.app import Bot
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.github_payloads import own, real
from tests.support.http_doors import WEBHOOK_SECRET, deliver
from tests.support.slack_requests import FakeSlack, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


def fixture(name: str) -> bytes:
    return own(name)


async def routine_listening(fake: FakeSlack, name: str, spec: str, git_repo: str,
                            template: str = "") -> None:
    reply = await fake.submit_view("routine_create", modal_values(
        name=name, prompt=f"Handle it ({name}).", repo_url=git_repo, branch="main",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60",
        payload_template=template))
    assert reply.status == 200 and reply.text == "", reply.text
    answer = (await fake.slash(f'github {name} "{spec}"')).json()["text"]
    assert "now runs on GitHub events matching" in answer, answer


async def start(start_bot: BotFactory) -> tuple[Bot, FakeSlack]:
    return await start_bot(max_concurrent_runs=0, github_webhook_secret=WEBHOOK_SECRET)


async def test_bad_or_missing_signatures_are_refused_and_fire_nothing(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await start(start_bot)
    await routine_listening(fake, "triage", "pull_request.opened", git_repo)
    body = fixture("pull_request.opened")

    forged = await deliver(bot, "pull_request", body, "d-1", secret="not-the-secret")
    missing = await deliver(bot, "pull_request", body, "d-2", signature="")
    tampered = await deliver(bot, "pull_request", body + b" ", "d-3",
                             signature="sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body,
                                                            hashlib.sha256).hexdigest())

    assert [forged[0], missing[0], tampered[0]] == [401, 401, 401]
    assert bot.services.routines.history("triage") == []


async def test_ping_answers_200(start_bot: BotFactory) -> None:
    bot, _ = await start(start_bot)
    status, body = await deliver(bot, "ping", fixture("ping"), "d-ping")
    assert (status, body["ok"]) == (200, True)


async def test_one_delivery_fires_every_matching_routine_once(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await start(start_bot)
    await routine_listening(fake, "triage", "pull_request.opened repo=ACME-corp/widgets",
                            git_repo, template="PR: {{ payload.pull_request.title }}")
    await routine_listening(fake, "reviewer", "pull_request author=Mara-Dev base=main",
                            git_repo)
    await routine_listening(fake, "someone-else", "pull_request.opened author=sam-ops",
                            git_repo)
    await routine_listening(fake, "on-push", "push branch=main", git_repo)
    body = fixture("pull_request.opened")

    status, first = await deliver(bot, "pull_request", body, "delivery-72d3162e")
    again_status, again = await deliver(bot, "pull_request", body, "delivery-72d3162e")

    assert status == 202
    assert sorted(f["routine"] for f in first["fired"]) == ["reviewer", "triage"]
    assert first["event"] == "pull_request.opened"
    assert (again_status, again["fired"]) == (200, [])
    assert sorted(d["run_id"] for d in again["duplicate"]) == sorted(
        f["run_id"] for f in first["fired"])
    run = bot.services.routines.history("triage")[0].run
    assert (run.trigger_kind, run.triggered_by, run.trigger_ref) == (
        "github", "mara-dev", "delivery-72d3162e")
    title = json.loads(body)["pull_request"]["title"]
    assert f"PR: {title}" in run.prompt and "untrusted-data-" in run.prompt
    assert bot.services.routines.history("someone-else") == []
    assert bot.services.routines.history("on-push") == []


async def test_a_paused_routine_is_refused_with_a_clear_body(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await start(start_bot)
    await routine_listening(fake, "releaser", "release.published", git_repo)
    await fake.slash("pause releaser")

    status, body = await deliver(bot, "release", fixture("release.published"), "d-rel")

    assert (status, body["error"]) == (409, "refused")
    assert "is paused" in body["refused"]["releaser"]
    assert bot.services.routines.history("releaser") == []


async def test_bad_filters_are_refused_in_slack(start_bot: BotFactory, git_repo: str) -> None:
    _, fake = await start(start_bot)
    await routine_listening(fake, "triage", "issues.opened", git_repo)

    answer = (await fake.slash('github triage "push author=me"')).json()["text"]
    status = json.dumps((await fake.slash("status triage")).json())

    assert "author" in answer and "now runs" not in answer
    assert "issues.opened" in status


@pytest.mark.conformance
async def test_githubs_real_deliveries_are_read_and_fire(
    start_bot: BotFactory, git_repo: str,
) -> None:
    bot, fake = await start(start_bot)
    await routine_listening(fake, "triage", "pull_request.opened repo=Codertocat/Hello-World "
                            "author=codertocat base=master label=bug draft=false", git_repo)
    await routine_listening(fake, "releaser", "release.published", git_repo)

    ping = await deliver(bot, "ping", real("ping"), "real-ping")
    pull = await deliver(bot, "pull_request", real("pull_request.opened"), "real-pr")
    issue = await deliver(bot, "issues", real("issues.opened"), "real-issue")

    assert (ping[0], ping[1]["ok"]) == (200, True)
    assert pull[0] == 202 and [f["routine"] for f in pull[1]["fired"]] == ["triage"]
    assert (issue[0], issue[1]["fired"]) == (200, [])
    run = bot.services.routines.history("triage")[0].run
    assert (run.trigger_kind, run.triggered_by, run.trigger_ref) == (
        "github", "Codertocat", "real-pr")
    assert bot.services.routines.history("releaser") == []
