"""Alerts, retries, run logs and redaction, driven only from outside: signed slash commands
and block actions in, Slack Web API calls out, the real agent in the real container."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import SQLModel

from bot.app import Bot
from bot.core.statuses import FailureKind
from bot.store.tables import Run
from tests.standins.anthropic_api import AnthropicStandIn, Turn, report, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import create_routine, thread, view_log, wait_until
from tests.support.slack_requests import FakeSlack

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
BOB = "U0BOB0001"


async def result_of(slack_api: SlackApiStandIn, name: str, run_id: int,
                    timeout: float = 90) -> dict[str, Any]:
    """The result message of run `run_id`, once posted; with its ts and run id."""
    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains=f"{name} run #{run_id}: ", timeout=timeout)
    return dict(call.params, run_id=str(run_id), ts=call.response["ts"])


def buttons(message: dict[str, Any]) -> list[str]:
    return [e["action_id"] for e in message["blocks"][-1]["elements"]]


async def run_now(fake: FakeSlack, name: str) -> int:
    reply = await fake.slash(f"run {name}")
    assert reply.status == 200 and "queued" in reply.json()["text"], reply.text
    return int(reply.json()["text"].split("#")[1].split(" ")[0])


def run_row(bot: Bot, run_id: int) -> Run:
    return bot.services.runs.get(run_id).run


async def test_an_infrastructure_fault_is_retried_with_backoff_then_alerted(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    bot, fake = await start_bot(sandbox_image="routines-sandbox:does-not-exist",
                                min_retry_backoff_seconds=1)
    await create_routine(fake, slack_api, "no-image", "Anything.", git_repo)

    refused = await fake.slash("retries no-image 9 1")
    assert "attempts must be 0 to 5 (got 9); nothing changed." in refused.json()["text"]
    refused = await fake.slash("retries no-image two")
    assert "give ATTEMPTS" in refused.json()["text"]
    assert bot.services.routines.get("no-image").retry_attempts == 0
    reply = await fake.slash("retries no-image 2 1")
    assert "up to 2 more, after 1s doubling; infrastructure faults only" in reply.text

    first = await run_now(fake, "no-image")

    # Each attempt says it is not final, and when the next one comes.
    message = await result_of(slack_api, "no-image", first)
    assert message["text"] == f"no-image run #{first}: error — retrying in 1s (attempt 2 of 3)"
    assert "sandbox image not found" in json.dumps(message["blocks"])
    assert buttons(message) == ["view_log"]
    second = first + 1
    message = await result_of(slack_api, "no-image", second)
    assert message["text"] == f"no-image run #{second}: error — retrying in 2s (attempt 3 of 3)"
    last = await result_of(slack_api, "no-image", second + 1)
    assert last["text"] == f"no-image run #{second + 1}: error"
    assert buttons(last) == ["view_log", "retry_run"]
    assert "error (attempt 3 of 3)" in json.dumps(last["blocks"])
    # The chain is in the database and in the history: provenance kept, backoff waited out.
    runs = [run_row(bot, run_id) for run_id in (first, second, second + 1)]
    assert [(r.attempt, r.retry_of) for r in runs] == [(1, None), (2, first), (3, second)]
    assert {(r.trigger_kind, r.triggered_by) for r in runs} == {("manual", "U0ALICE01")}
    assert {r.failure_kind for r in runs} == {FailureKind.INFRASTRUCTURE}
    for earlier, retry in itertools.pairwise(runs):
        assert retry.not_before is not None and retry.started_at is not None
        assert earlier.finished_at is not None
        assert retry.started_at >= retry.not_before > earlier.finished_at
    history = json.dumps((await fake.slash("history no-image")).json(), ensure_ascii=False)
    assert f"attempt 3 · retry of #{second}" in history

    # Retry, pressed by Bob: a new manual run by Bob, said in the failed run's thread.
    assert (await fake.slash("retries no-image off")).status == 200
    # Where the alert landed is stored on the run: the answer goes in its thread even
    # when the click does not say which message it came from.
    await wait_until(lambda: run_row(bot, second + 1).announce_ts == last["ts"])
    reply = await fake.click("retry_run", str(second + 1), user=BOB, channel=RESULTS_CHANNEL)
    assert reply.status == 200
    said = await slack_api.wait_for("chat.postMessage", {"thread_ts": last["ts"]},
                                    contains="retried run", timeout=10)
    manual = second + 2
    assert said.params["text"] == (f":repeat: <@{BOB}> retried run #{second + 1}: "
                                   f"run #{manual} is queued.")
    retried = await result_of(slack_api, "no-image", manual)
    assert retried["text"] == f"no-image run #{manual}: error"
    assert f"Triggered by manual <@{BOB}> · retry of #{second + 1}" in json.dumps(
        retried["blocks"], ensure_ascii=False)
    row = run_row(bot, manual)
    assert (row.attempt, row.retry_of, row.triggered_by) == (1, second + 1, BOB)

    # Pressed again on the same message: the same retry, told to the clicker alone.
    await fake.click("retry_run", str(second + 1), user=BOB, channel=RESULTS_CHANNEL)
    told = await slack_api.wait_for("chat.postEphemeral", {"user": BOB}, timeout=10)
    assert told.params["text"].startswith(f"Run #{second + 1} was already retried as "
                                          f"run #{manual}")
    # A paused routine refuses a retry like any trigger; nothing is queued.
    await fake.slash("pause no-image")
    await fake.click("retry_run", str(manual), channel=RESULTS_CHANNEL)
    told = await slack_api.wait_for("chat.postEphemeral", {"user": "U0ALICE01"},
                                    contains="is paused", timeout=10)
    assert told.params["channel"] == RESULTS_CHANNEL
    assert len(bot.services.routines.history("no-image")) == 4
    # A forged click does nothing at all.
    forged = await fake.post("payload=%7B%7D", signature="v0=" + "0" * 64)
    assert forged.status == 401


async def test_an_overloaded_api_is_retried_and_the_next_attempt_succeeds(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    # The agent's SDK tries 3 times (max_retries=2): every try of the first attempt is
    # answered 529, the second attempt is served normally.
    marker = anthropic_api.script(
        "overloaded", Turn([report("success", "done on the second attempt")], status=529,
                           failures=3))
    bot, fake = await start_bot(min_retry_backoff_seconds=1)
    await create_routine(fake, slack_api, "busy-api", f"Do it. {marker}", git_repo)
    await fake.slash("retries busy-api 1 1")

    first = await run_now(fake, "busy-api")

    message = await result_of(slack_api, "busy-api", first)
    assert message["text"] == f"busy-api run #{first}: error — retrying in 1s (attempt 2 of 2)"
    assert "OverloadedError" in json.dumps(message["blocks"])
    # The agent said which HTTP status it got, as data; the retry was decided on that.
    assert bot.services.runs.events(first)[-1]["status_code"] == 529
    assert run_row(bot, first).failure_kind == FailureKind.API_UNAVAILABLE
    success = await result_of(slack_api, "busy-api", first + 1)
    assert success["text"] == f"busy-api run #{first + 1}: succeeded"
    shown = json.dumps(success["blocks"])
    assert "done on the second attempt" in shown and f"retry of #{first}" in shown
    assert buttons(success) == ["view_log"]
    assert len(anthropic_api.requests_for("overloaded")) == 4
    assert run_row(bot, first + 1).failure_kind is None


async def test_a_request_the_api_refuses_is_never_retried(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script("refused", Turn([], status=400))
    bot, fake = await start_bot(min_retry_backoff_seconds=1)
    await create_routine(fake, slack_api, "bad-request", f"Do it. {marker}", git_repo)
    await fake.slash("retries bad-request 2 1 agent-failures")

    run_id = await run_now(fake, "bad-request")

    message = await result_of(slack_api, "bad-request", run_id)
    assert message["text"] == f"bad-request run #{run_id}: error"
    assert "BadRequestError" in json.dumps(message["blocks"])
    assert bot.services.runs.events(run_id)[-1]["status_code"] == 400
    assert run_row(bot, run_id).failure_kind == FailureKind.API_REFUSED
    assert len(bot.services.routines.history("bad-request")) == 1  # decided with the verdict
    assert len(anthropic_api.requests_for("refused")) == 1  # the SDK does not retry it


async def test_an_agent_failure_is_retried_only_when_the_routine_asks(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script("red", [report("failure", "3 tests fail")])
    bot, fake = await start_bot(min_retry_backoff_seconds=1)
    await create_routine(fake, slack_api, "red-tests", f"Test. {marker}", git_repo)
    await fake.slash("retries red-tests 2 1")

    first = await run_now(fake, "red-tests")
    message = await result_of(slack_api, "red-tests", first)
    assert message["text"] == f"red-tests run #{first}: failed"
    assert buttons(message) == ["view_log", "retry_run"]
    assert len(bot.services.routines.history("red-tests")) == 1

    await fake.slash("retries red-tests 1 1 agent-failures")
    second = await run_now(fake, "red-tests")
    message = await result_of(slack_api, "red-tests", second)
    assert message["text"] == (f"red-tests run #{second}: failed — retrying in 1s "
                               "(attempt 2 of 2)")
    message = await result_of(slack_api, "red-tests", second + 1)
    assert message["text"] == f"red-tests run #{second + 1}: failed"
    assert "3 tests fail" in json.dumps(message["blocks"])


async def test_planted_secrets_reach_neither_the_database_nor_the_cli_nor_slack(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, settings: Any,
) -> None:
    slack_token = "xoxb-" + "7" * 12 + "-planted0secret"
    configured = "planted-configured-value-77"
    marker = anthropic_api.script(
        "plant",
        [tool("run_shell", command=f"echo {slack_token} && echo {configured} "
                                   f"| tee leak.txt && seq 1 3000")],
        [report("failure", f"leaked {slack_token} and {configured}")],
    )
    bot, fake = await start_bot(extra_secrets=(configured,))
    await create_routine(fake, slack_api, "planter", f"Plant. {marker}", git_repo)

    run_id = await run_now(fake, "planter")
    message = await result_of(slack_api, "planter", run_id)
    assert message["text"] == f"planter run #{run_id}: failed"
    shown = await view_log(fake, slack_api, message, last="Changes (diff)")

    # The agent really printed both (so redaction, not luck, keeps them out)...
    sent = json.dumps([r.body for r in anthropic_api.requests_for("plant")])
    assert slack_token in sent and configured in sent
    # ...the alert and the log thread show them masked, the long output cut with a note...
    assert "leaked [REDACTED] and [REDACTED]" in json.dumps(message["blocks"])
    assert "[REDACTED]" in shown and "characters in all]" in shown
    assert thread(slack_api, message["ts"]) == shown
    # ...and no Slack call, no database row, no `routines logs` output holds them.
    every_call = json.dumps([c.params for c in slack_api.calls])
    every_row: list[Any] = []
    with bot.db.engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            every_row += conn.exec_driver_sql(f'SELECT * FROM "{table.name}"').all()
    printed = [await routines_logs(settings.database_url, str(run_id), *extra)
               for extra in ([], ["--text"], ["--diff"])]
    assert "3000" in printed[1] and "+[REDACTED]" in printed[2]
    for secret in (slack_token, configured):
        assert secret not in every_call
        assert secret not in repr(every_row)
        assert all(secret not in out for out in printed)


async def routines_logs(database_url: str, *args: str) -> str:
    """`routines logs ...` in its own process, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from bot.doors.cli import main; raise SystemExit(main())", "logs",
        *args, cwd=ROOT, env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()
