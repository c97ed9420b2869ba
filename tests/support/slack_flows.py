"""Driving the running bot through Slack as a user does: a routine made through the create
form, a run started with `/routine run` and its result waited for, the View log thread."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL
from tests.support.slack_requests import FakeSlack, modal_values

ALICE, BOB, CAROL, DAVE = "U0ALICE01", "U0BOB0001", "U0CAROL01", "U0DAVE001"  # DAVE: admin


async def create_routine(fake: FakeSlack, slack_api: SlackApiStandIn, name: str, prompt: str,
                         repo: str, timeout: str = "60", setup: str = "") -> None:
    reply = await fake.slash("create")
    assert reply.status == 200
    opened = await slack_api.wait_for("views.open", contains="routine_create", timeout=5)
    assert opened.params["view"]["callback_id"] == "routine_create"
    reply = await fake.submit_view("routine_create", modal_values(
        name=name, prompt=prompt, repo_url=repo, branch="main", setup_script=setup,
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds=timeout))
    assert reply.status == 200 and reply.text == "", reply.text
    await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                             contains=f"created routine *{name}*", timeout=5)


async def run_and_wait(fake: FakeSlack, slack_api: SlackApiStandIn, name: str,
                       status: str, timeout: float = 90) -> dict[str, Any]:
    reply = await fake.slash(f"run {name}")
    assert reply.status == 200
    body = reply.json()
    assert body["response_type"] == "ephemeral"
    assert "queued" in body["text"], body
    run_id = body["text"].split("#")[1].split(" ")[0]
    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains=f"run #{run_id}: ", timeout=timeout)
    shown = json.dumps(call.params["blocks"])[:1500]
    assert call.params["text"] == f"{name} run #{run_id}: {status}", shown
    return dict(call.params, run_id=run_id, ts=call.response["ts"])


async def view_log(fake: FakeSlack, slack_api: SlackApiStandIn, message: dict[str, Any],
                   last: str = "Log of") -> str:
    """Press View log; wait for the thread's `last` message; return the whole thread."""
    reply = await fake.click("view_log", message["run_id"], channel=RESULTS_CHANNEL,
                             message_ts=message["ts"])
    assert reply.status == 200
    await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL,
                                                  "thread_ts": message["ts"]},
                             contains=last, timeout=10)
    return thread(slack_api, message["ts"])


def thread(slack_api: SlackApiStandIn, ts: str) -> str:
    """Everything posted in the thread of the message `ts`, as JSON text."""
    return json.dumps([c.params for c in slack_api.calls_to("chat.postMessage")
                       if c.params.get("thread_ts") == ts], ensure_ascii=False)


async def routine(fake: FakeSlack, name: str, prompt: str, repo: str, *settings: str) -> None:
    """Created by Alice (its owner), then governed with `/routine set`."""
    reply = await fake.submit_view("routine_create", modal_values(
        name=name, prompt=prompt, repo_url=repo, branch="main", channel_id=RESULTS_CHANNEL,
        model="claude-test-1", timeout_seconds="60"))
    assert reply.status == 200 and reply.text == "", reply.text
    if settings:
        answer = (await fake.slash(f"set {name} " + " ".join(settings))).json()
        assert answer["text"].startswith(f"Routine {name}"), answer


async def wait_until(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
