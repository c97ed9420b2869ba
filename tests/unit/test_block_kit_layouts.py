"""Every layout the bot sends, checked against slack_sdk's Block Kit models (Slack's limits)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.views import View

from bot.core.home_page import MAX_ROUTINES, home_page, mention
from bot.core.redaction import Redactor
from bot.core.retry import ScheduledRetry
from bot.core.statuses import RunStatus, TriggerKind
from bot.core.worker import WorkerRole, WorkerState
from bot.doors.slack.listeners import LIST_SHOWN, SlackHandlers
from bot.doors.slack.messages import Messages
from bot.doors.slack.run_buttons import MAX_MESSAGES, log_thread
from bot.services.views import RoutineOverview, RunView
from bot.services.workers import WorkerView
from bot.settings import Settings
from bot.store.tables import ApiToken, KillSwitch, Routine, Run
from tests.support.block_kit import check_blocks

NO_ROUTINES: list[RoutineOverview] = []
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
messages = Messages()


def routine(**overrides: Any) -> Routine:
    fields: dict[str, Any] = dict(id=1, name="nightly", prompt="Check <things> & more",
                                  repo_url="https://github.com/o/r.git", channel_id="C0123ABC",
                                  model="claude-sonnet-4-5", timeout_seconds=600, max_turns=10,
                                  created_by="U0ALICE01", created_at=NOW)
    fields.update(overrides)
    return Routine(**fields)


def run(**overrides: Any) -> Run:
    fields: dict[str, Any] = dict(id=7, routine_id=1, status=RunStatus.SUCCEEDED,
                                  trigger_kind=TriggerKind.MANUAL, triggered_by="U0ALICE01",
                                  prompt="p", queued_at=NOW, started_at=NOW,
                                  finished_at=NOW + timedelta(seconds=83), summary="All good",
                                  input_tokens=1200, output_tokens=300)
    fields.update(overrides)
    return Run(**fields)


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def check_view(view: dict[str, Any]) -> None:
    View(**view).validate_json()
    assert len(view["blocks"]) <= 100


def test_run_finished_fits_slack_even_with_a_huge_summary() -> None:
    view = RunView(run(summary="x" * 10_000, reason="y" * 10_000, status=RunStatus.FAILED),
                   routine())
    message = messages.render("run_finished.json.j2", view=view)
    check_blocks(message)
    assert message["text"] == "nightly run #7: failed"


def test_escaping_cannot_push_a_section_past_slacks_limit() -> None:
    view = RunView(run(summary="<&>" * 3000), routine())
    blocks = check_blocks(messages.render("run_finished.json.j2", view=view))
    shown = blocks[1].to_dict()["text"]["text"]
    assert shown.endswith("…") and not shown[:-1].endswith(("&", "&l", "&lt", "&am", "&amp"))


def test_agent_text_cannot_mention_everyone_or_break_the_layout() -> None:
    view = RunView(run(summary='<!channel> "quoted" </code>\n```'), routine())
    message = messages.render("run_finished.json.j2", view=view)
    check_blocks(message)
    shown = message["blocks"][1]["text"]["text"]
    assert "&lt;!channel&gt;" in shown and "<!channel>" not in shown


@pytest.mark.parametrize("count", [0, 1, 60])
def test_routine_list_stays_within_fifty_blocks(count: int) -> None:
    overviews = [RoutineOverview(routine(name=f"r-{i}"), run() if i % 2 else None)
                 for i in range(count)]
    message = messages.render("routine_list.json.j2", overviews=overviews[:LIST_SHOWN],
                              total=count)
    check_blocks(message)
    assert message["text"] == f"{count} routine(s)"
    if count == 60:
        assert "15 more" in message["blocks"][-1]["elements"][0]["text"]


def test_status_history_help_and_errors_are_valid() -> None:
    check_blocks(messages.render("routine_status.json.j2",
                                 overview=RoutineOverview(routine(prompt="p" * 20_000), run()),
                                 github=["pull_request.opened repo=o/r <&>" * 20] * 50))
    check_blocks(messages.render("routine_status.json.j2", github=[],
                                 overview=RoutineOverview(routine(paused_at=NOW), None)))
    check_blocks(messages.render("run_history.json.j2", routine=routine(),
                                 views=[RunView(run(id=i), routine()) for i in range(10)]))
    check_blocks(messages.render("help.json.j2", problem="Unknown subcommand `x`."))
    check_blocks(messages.render("error.json.j2", message="No routine named `x`."))
    check_blocks(messages.render("run_queued.json.j2", run=run(), routine=routine()))
    check_blocks(messages.render("routine_created.json.j2", routine=routine(), actor="U1"))
    check_blocks(messages.render("routine_paused.json.j2", routine=routine(paused_at=NOW,
                                                                           paused_by="U1")))
    check_blocks(messages.render("routine_paused.json.j2", routine=routine()))
    check_blocks(messages.render("token_created.json.j2", routine="nightly", token_name="ci",
                                 value="rt_" + "x" * 43, api_url="/api/v1/routines/n/runs"))
    tokens = [ApiToken(routine_id=1, name=f"t-{i}", token_hash=str(i), created_by="U1",
                       created_at=NOW, revoked_at=NOW if i % 2 else None) for i in range(60)]
    check_blocks(messages.render("token_list.json.j2", routine="nightly", tokens=tokens))
    check_blocks(messages.render("token_list.json.j2", routine="nightly", tokens=[]))


def handlers() -> SlackHandlers:
    settings = Settings(slack_bot_token="x", anthropic_api_key="k")
    return SlackHandlers(settings, services=None, messages=messages)  # type: ignore[arg-type]


def test_create_modal_is_a_valid_view() -> None:
    check_view(handlers().create_modal("C0123ABC"))
    check_view(handlers().create_modal("D0DIRECT1"))  # a DM is not a results channel


def test_log_thread_fits_however_long_the_log() -> None:
    events = [{"type": "tool_output", "output": "<z>" * 2000, "is_error": False}] * 500
    thread = log_thread(messages, RunView(run(diff="+<>" * 9000), routine()), events)
    assert len(thread) == MAX_MESSAGES + 1  # the log, then the diff
    for message in thread:
        for block in check_blocks(message):
            text = block.to_dict().get("text", {}).get("text", "")
            assert len(text) <= 3000
    intro = thread[0]["blocks"][0]["elements"][0]["text"]
    kept = sum(m["blocks"][i]["text"]["text"].count("\n") + 1
               for m in thread[:-1] for i in range(1, len(m["blocks"])))
    assert f"*{500 - kept} more lines* (the earliest) not shown: `routines logs 7`" in intro
    assert "… [cut: 6,010 characters in all]" in thread[0]["blocks"][1]["text"]["text"]
    assert "`routines logs 7 --diff` prints it whole" in dump(thread[-1])


def test_a_short_log_is_one_message_and_an_empty_one_says_so() -> None:
    short = log_thread(messages, RunView(run(), routine()),
                       [{"type": "tool_call", "name": "run_shell", "input": {"command": "ls"}}])
    assert len(short) == 1 and "part" not in short[0]["text"]
    check_blocks(short[0])
    empty = log_thread(messages, RunView(run(), routine()), [])
    check_blocks(empty[0])
    assert "No events were recorded." in dump(empty)


@pytest.mark.parametrize("status", [RunStatus.FAILED, RunStatus.ERROR, RunStatus.TIMED_OUT])
def test_a_failure_is_an_alert_with_view_log_and_retry(status: RunStatus) -> None:
    view = RunView(run(status=status, summary=None, reason="sandbox image not found"),
                   routine())
    message = messages.render("run_finished.json.j2", view=view)
    blocks = check_blocks(message)
    buttons = blocks[-1].to_dict()["elements"]
    assert [b["action_id"] for b in buttons] == ["view_log", "retry_run"]
    assert {b["value"] for b in buttons} == {"7"}
    assert message["blocks"][1]["text"]["text"] == "*Reason*\nsandbox image not found"
    assert "Triggered by manual <@U0ALICE01>" in dump(message)


def test_success_keeps_view_log_only() -> None:
    message = messages.render("run_finished.json.j2", view=RunView(run(), routine()))
    buttons = check_blocks(message)[-1].to_dict()["elements"]
    assert [b["action_id"] for b in buttons] == ["view_log"]


def test_a_failure_with_a_queued_retry_says_when_instead_of_sounding_final() -> None:
    view = RunView(run(status=RunStatus.ERROR, summary=None, reason="Anthropic API error"),
                   routine(retry_attempts=2), ScheduledRetry(8, 2, 3, 30))
    message = messages.render("run_finished.json.j2", view=view)
    blocks = check_blocks(message)
    assert message["text"] == "nightly run #7: error — retrying in 30s (attempt 2 of 3)"
    assert "Retrying in 30s* (attempt 2 of 3): run #8 is queued" in dump(message)
    assert [b["action_id"] for b in blocks[-1].to_dict()["elements"]] == ["view_log"]
    last = RunView(run(id=9, status=RunStatus.ERROR, attempt=3, retry_of=8, summary=None),
                   routine(retry_attempts=2))
    message = messages.render("run_finished.json.j2", view=last)
    check_blocks(message)
    assert "#9* error (attempt 3 of 3)" in dump(message)
    assert "retry of #8" in dump(message)


def test_retry_notes_history_and_retry_status_are_valid() -> None:
    queued = RunView(run(id=8, status=RunStatus.QUEUED, finished_at=None), routine())
    for replayed in (False, True):
        check_blocks(messages.render("run_retried.json.j2", view=queued, retried=7,
                                     actor="U0BOB0001", replayed=replayed))
    views = [RunView(run(id=i, attempt=i, retry_of=i - 1, status=RunStatus.QUEUED,
                         not_before=NOW), routine()) for i in range(2, 12)]
    history = messages.render("run_history.json.j2", routine=routine(), views=views)
    check_blocks(history)
    assert "attempt 2 · retry of #1" in dump(history)
    assert "waits until 2026-11-23 09:00:00 UTC" in dump(history)
    status = messages.render("routine_status.json.j2", github=[], overview=RoutineOverview(
        routine(retry_attempts=2, retry_backoff_seconds=60, retry_agent_failures=True), None))
    check_blocks(status)
    assert "up to 2 more, after 60s doubling; agent failures too" in dump(status)


def test_no_rendered_message_carries_a_secret_but_a_new_token_is_shown_once() -> None:
    redacting = Messages(redact=Redactor(["configured-secret-value"]))
    leaky = RunView(run(summary="token xoxb-1234-5678-abcdefgh and configured-secret-value",
                        reason='quote " configured-secret-value'), routine())
    shown = dump(redacting.render("run_finished.json.j2", view=leaky))
    assert "xoxb-" not in shown and "configured-secret-value" not in shown
    assert shown.count("[REDACTED]") == 3
    token = "rt_" + "x" * 43
    created = redacting.render("token_created.json.j2", routine="n", token_name="ci",
                               value=token, api_url="/api/v1/routines/n/runs")
    assert token in dump(created)
    error = redacting.render("error.json.j2", message=f"bad token {token}")
    assert token not in dump(error)



@pytest.mark.parametrize("status", ["pending", "approved", "rejected", "expired", "withdrawn"])
@pytest.mark.parametrize("kind", ["start", "publish"])
def test_approval_requests_fit_slack_in_every_state(kind: str, status: str) -> None:
    from bot.core.statuses import ApprovalKind, ApprovalStatus
    from bot.services.views import ApprovalView
    from bot.store.tables import Approval

    approval = Approval(id=3, run_id=7, kind=ApprovalKind(kind),
                        status=ApprovalStatus(status), requested_by="U0ALICE01",
                        requested_at=NOW, expires_at=NOW + timedelta(hours=24),
                        decided_by="U0BOB0001", decided_at=NOW, reason="r" * 500)
    huge = run(prompt="<p>" * 5_000, diff="diff --git a/x b/x\n+" + "y" * 10_000,
               published_ref="refs/heads/routines/nightly/7")
    message = messages.render("approval_request.json.j2", view=ApprovalView(
        approval, huge, routine(risk="high")), diff_summary="\n".join(["f +1 -0"] * 400))
    blocks = check_blocks(message)
    has_buttons = any(b.type == "actions" for b in blocks)
    assert has_buttons == (status == "pending")


def test_governance_layouts_fit_slack() -> None:
    from bot.core.budget import Spend
    from bot.services.views import HeldRuns, KillSwitchReport
    from bot.store.tables import AuditEntry, KillSwitch

    check_view(messages.render("reject_modal.json.j2", approval_id=3, run_id=7,
                               routine="nightly"))
    for engaged in (True, False):
        report = KillSwitchReport(KillSwitch(id=1, engaged=engaged, reason="<x>" * 600,
                                             changed_by="U0DAVE001", changed_at=NOW),
                                  20, HeldRuns(4, 2))
        for event in ("engaged", "disengaged", "status", "released", "dropped"):
            check_blocks(messages.render("killswitch.json.j2", report=report, event=event))
    entries = [AuditEntry(id=i, at=NOW, actor="U0ALICE01", action="change", routine="nightly",
                          details="d" * 5_000) for i in range(20)]
    check_blocks(messages.render("audit_list.json.j2", routine="nightly", entries=entries))
    check_blocks(messages.render("audit_list.json.j2", routine="", entries=[]))
    for spent, cap in ((1, 0), (8.5, 10), (12, 10), (1, 10)):
        check_blocks(messages.render("spend.json.j2", spend=Spend(spent, cap)))
    check_blocks(messages.render("routine_status.json.j2", github=[], overview=RoutineOverview(
        routine(owners="U0ALICE01,subteam:S0OPS0001", approvers="U0BOB0001",
                max_runs_per_day=5, max_concurrent=2, max_tokens_per_run=50_000,
                retry_attempts=3), None)))


@pytest.mark.parametrize(("mine", "team"), [(0, 0), (1, 1), (3, 200), (200, 3), (120, 120)])
def test_home_tab_is_a_valid_view_within_a_hundred_blocks(mine: int, team: int) -> None:
    long = "<&>" * 2000
    overviews = [RoutineOverview(routine(name=f"m-{i:03d}", owners="U0ALICE01",
                                         created_by="U0BOB0001", schedule="every 1h",
                                         paused_at=NOW if i % 3 else None, paused_by="U0BOB0001"),
                                 run(summary=long, reason=long) if i % 2 else None)
                 for i in range(mine)]
    overviews += [RoutineOverview(routine(name=f"t-{i:03d}", created_by="U0BOB0001"), run())
                  for i in range(team)]
    switch = KillSwitch(id=1, engaged=True, reason=long, changed_by="U0BOB0001", changed_at=NOW)
    page = home_page(overviews, switch, "U0ALICE01", NOW, notice=long)
    view = messages.render("app_home.json.j2", page=page, mention=mention)

    View(**view).validate_json()
    assert view["type"] == "home" and len(view["blocks"]) <= 100
    shown = json.dumps(view)
    assert "<!channel>" not in shown and "&lt;&amp;&gt;" in shown
    if mine + team > MAX_ROUTINES:
        assert "more: `/routine list` shows them all" in shown


def test_the_status_of_a_routine_managed_from_files_says_so() -> None:
    managed = messages.render("routine_status.json.j2", github=[], overview=RoutineOverview(
        routine(managed_by="routines/nightly.yaml"), None))
    check_blocks(managed)
    assert "Managed from files: `routines/nightly.yaml`" in dump(managed)
    plain = messages.render("routine_status.json.j2", github=[],
                            overview=RoutineOverview(routine(), None))
    assert "Managed from files" not in dump(plain)


def worker_view(index: int, state: WorkerState, running: int = 0) -> WorkerView:
    return WorkerView(f"host-{index:03d}.example/<w&{index}>", WorkerRole.WORKER, True, 100 + index,
                      NOW, NOW - timedelta(seconds=5), state,
                      tuple(range(1000 * index, 1000 * index + running)))


@pytest.mark.parametrize("count", [0, 1, 3, 40])
def test_an_admins_home_lists_the_workers_within_a_hundred_blocks(count: int) -> None:
    overviews = [RoutineOverview(routine(name=f"t-{i:03d}", created_by="U0BOB0001"), run())
                 for i in range(200)]
    workers = [worker_view(i, [WorkerState.ALIVE, WorkerState.SILENT, WorkerState.STOPPED][i % 3],
                           running=i % 9) for i in range(count)]
    page = home_page(overviews, KillSwitch(id=1), "U0ALICE01", NOW, notice="x" * 3000,
                     workers=workers)
    view = messages.render("app_home.json.j2", page=page, mention=mention)

    View(**view).validate_json()
    assert len(view["blocks"]) <= 100
    [section] = [b for b in view["blocks"] if b.get("block_id") == "workers"]
    text = section["text"]["text"]
    assert len(text) <= 3000
    assert "<w&" not in text  # a worker id is shown escaped
    if count == 0:
        assert text == "None registered yet."
    else:
        assert "&lt;w&amp;" in text
    if count == 3:
        lines = text.split("\n")
        assert lines[0].startswith(":red_circle: `host-001.example/")  # the silent one first
        assert ":large_green_circle:" in lines[1] and ":white_circle:" in lines[2]
        assert "· worker · silent · last heartbeat 2026-" in lines[0]
        assert lines[0].endswith("running #1000")
        assert lines[1].endswith("no runs")
    if count == 40:
        assert "… and 30 more: `routines doctor` lists them all." in text
        assert "running #7000, #7001, #7002, #7003, #7004 and 2 more" in text  # not all listed


def test_the_workers_are_not_on_a_non_admins_home() -> None:
    page = home_page(NO_ROUTINES, KillSwitch(id=1), "U0ALICE01", NOW)
    view = messages.render("app_home.json.j2", page=page, mention=mention)
    assert not any(b.get("block_id") == "workers" for b in view["blocks"])
    assert "Workers" not in json.dumps(view)
