"""The network setting through the Slack door: the create form (a custom list, `full`
refused on its field for a non-admin, a bad value said on the field, nothing saved),
`/routine set NAME network=...` (bad values and a non-admin's `full` change nothing; an
admin's is audited) and `/routine status` showing it. The settings' trusted list is what a
`trusted` routine's runs get."""

from __future__ import annotations

import json

import pytest

from bot.core.trigger import manual
from runner.egress_policy import EgressPolicy, NetworkMode
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import ALICE, DAVE
from tests.support.slack_requests import FakeSlack, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


def form(name: str, repo: str, network: str | None) -> dict[str, dict[str, object]]:
    fields = dict(name=name, prompt="Check things.", repo_url=repo, branch="main",
                  channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60")
    return modal_values(**fields, **({} if network is None else {"network": network}))


async def status_network(fake: FakeSlack, name: str) -> str:
    blocks = (await fake.slash(f"status {name}")).json()["blocks"]
    [text] = [b["text"]["text"] for b in blocks
              if b.get("text", {}).get("text", "").startswith("*Network*")]
    return str(text)


async def test_the_create_form_takes_the_network_and_refuses_what_it_must(
        start_bot: BotFactory, git_repo: str) -> None:
    bot, fake = await start_bot(admins=(DAVE,), trusted_hosts=("registry.corp.example",))

    reply = await fake.submit_view("routine_create", form("plain", git_repo, None))
    assert reply.status == 200 and reply.text == ""
    reply = await fake.submit_view("routine_create", form("listed", git_repo,
                                                          "pypi.org *.corp.example"))
    assert reply.status == 200 and reply.text == ""
    assert bot.services.routines.get("plain").network is NetworkMode.TRUSTED
    assert bot.services.routines.get("listed").egress == EgressPolicy(
        NetworkMode.CUSTOM, ("pypi.org", "*.corp.example"))
    view = bot.services.triggers.trigger("plain", manual(ALICE)).view
    assert EgressPolicy.from_spec(bot.services.runs.spec(view).egress) == EgressPolicy(
        NetworkMode.TRUSTED, ("registry.corp.example",))

    reply = await fake.submit_view("routine_create", form("wide", git_repo, "full"))
    assert reply.json()["response_action"] == "errors"
    assert reply.json()["errors"] == {
        "network": f"Only admins may give a routine full network access (admins: {DAVE})."}
    reply = await fake.submit_view("routine_create", form("bad", git_repo,
                                                          "https://pypi.org/simple"))
    assert "without a scheme" in reply.json()["errors"]["network"]
    assert sorted(o.routine.name for o in bot.services.routines.overviews()) == [
        "listed", "plain"]

    reply = await fake.submit_view("routine_create", form("wide", git_repo, "full"), user=DAVE)
    assert reply.status == 200 and reply.text == ""
    assert bot.services.routines.get("wide").network is NetworkMode.FULL
    assert [e.actor for e in bot.services.audit.entries("wide")
            if e.action == "network_full"] == [DAVE]


async def test_routine_set_network_and_status_shows_it(
        start_bot: BotFactory, git_repo: str) -> None:
    bot, fake = await start_bot(admins=(DAVE,))
    await fake.submit_view("routine_create", form("nightly", git_repo, None))
    assert "trusted: the package registries" in await status_network(fake, "nightly")

    answer = (await fake.slash("set nightly network=pypi.org, *.corp.example")).json()
    assert answer["text"].startswith("Routine nightly")
    assert await status_network(fake, "nightly") == "*Network*\nonly pypi.org, *.corp.example"

    refused = (await fake.slash("set nightly network=pypi.org:443")).json()
    assert "network" in json.dumps(refused) and "without a port" in json.dumps(refused)
    refused = (await fake.slash("set nightly network=full")).json()
    assert "Only admins may give a routine full network access" in json.dumps(refused)
    assert bot.services.routines.get("nightly").egress.describe() == "pypi.org, *.corp.example"

    answer = (await fake.slash("set nightly network=full", user=DAVE)).json()
    assert answer["text"].startswith("Routine nightly")
    assert "full: any host" in await status_network(fake, "nightly")
    assert [e.action for e in bot.services.audit.entries("nightly")][:2] == [
        "network_full", "change"]

    answer = (await fake.slash("set nightly network=none")).json()  # the owner may narrow it
    assert "none: no network at all" in await status_network(fake, "nightly")
    assert bot.services.routines.get("nightly").network is NetworkMode.NONE
    assert answer["text"].startswith("Routine nightly")
