"""A routine applied from files says so in `/routine status` and refuses edits from Slack,
unless an admin ends the command with `--force`; signed slash commands to the running bot."""

from __future__ import annotations

import json

import pytest

from bot.core.routine_file import read_documents
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import ALICE, DAVE

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

FILE = "routines/nightly.yaml"


def no_prompt_files(source: str, relative: str) -> str:
    raise FileNotFoundError(relative)


async def test_a_managed_routine_refuses_slack_edits_unless_an_admin_forces(
        start_bot: BotFactory) -> None:
    bot, fake = await start_bot(admins=(DAVE,))
    text = (f"name: nightly\nprompt: Check things.\nrepository: https://github.com/example/app\n"
            f"channel: {RESULTS_CHANNEL}\nowners: [{ALICE}]\n")
    bot.services.catalog.apply(read_documents(text, FILE), DAVE, no_prompt_files)

    status = (await fake.slash("status nightly", user=ALICE)).json()
    refused = (await fake.slash("set nightly risk=high", user=ALICE)).json()
    not_admin = (await fake.slash("set nightly risk=high --force", user=ALICE)).json()
    schedule = (await fake.slash("schedule nightly every 2h", user=DAVE)).json()

    assert f"Managed from files: `{FILE}`" in json.dumps(status["blocks"])
    assert refused["text"] == (
        f"Routine `nightly` is managed from files (`{FILE}`): change the file and run "
        "`routines apply`. An admin may still change it here by ending the command with "
        "`--force` (e.g. `/routine set nightly KEY=VALUE --force`); the next apply puts the "
        "file's version back.")
    assert "Only admins may change a routine managed from files" in not_admin["text"]
    assert "managed from files" in schedule["text"]
    assert bot.services.routines.get("nightly").risk == "low"
    assert bot.services.routines.get("nightly").schedule is None

    forced = (await fake.slash("set nightly risk=high --force", user=DAVE)).json()

    assert "*Risk · approvers*\\nhigh" in json.dumps(forced["blocks"], ensure_ascii=False)
    assert bot.services.routines.get("nightly").risk == "high"
    actions = [(e.actor, e.action) for e in bot.services.audit.entries("nightly")]
    assert (DAVE, "forced") in actions and (ALICE, "refused") in actions
