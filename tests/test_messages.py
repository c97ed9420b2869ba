"""Every layout the bot sends, checked against slack_sdk's Block Kit models (Slack's limits)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot.home import MAX_ROUTINES, home_page, mention
from bot.messages import Messages
from bot.models import ApiToken, KillSwitch, Routine, Run, RunStatus, TriggerKind
from bot.service import RoutineOverview, RunView
from bot.settings import Settings
from bot.slack import SlackHandlers

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


def check_blocks(message: dict[str, Any]) -> list[Block]:
    assert message["text"], "every message needs fallback text (notifications, screen readers)"
    assert len(message["blocks"]) <= 50
    blocks = Block.parse_all(message["blocks"])
    for block in blocks:
        block.validate_json()  # raises SlackObjectFormationError past Slack's limits
    return blocks


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
    message = messages.render("routine_list.json.j2", overviews=overviews)
    check_blocks(message)
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
    return SlackHandlers(settings, service=None, messages=messages)  # type: ignore[arg-type]


def test_create_modal_is_a_valid_view() -> None:
    check_view(handlers().create_modal("C0123ABC"))
    check_view(handlers().create_modal("D0DIRECT1"))  # a DM is not a results channel


def test_log_modal_fits_however_long_the_log() -> None:
    events = [{"type": "tool_output", "output": "<z>" * 2000, "is_error": False}] * 500
    view = handlers().log_modal(RunView(run(diff="+<>" * 9000), routine()), events)
    check_view(view)
    assert "earlier lines not shown" in view["blocks"][0]["elements"][0]["text"]


@pytest.mark.parametrize("status", ["pending", "approved", "rejected", "expired", "withdrawn"])
@pytest.mark.parametrize("kind", ["start", "publish"])
def test_approval_requests_fit_slack_in_every_state(kind: str, status: str) -> None:
    from bot.models import Approval, ApprovalKind, ApprovalStatus
    from bot.service import ApprovalView

    approval = Approval(id=3, run_id=7, kind=ApprovalKind(kind), status=ApprovalStatus(status), requested_by="U0ALICE01",
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
    from bot.budget import Spend
    from bot.models import AuditEntry, KillSwitch
    from bot.service import HeldRuns, KillSwitchReport

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
                max_runs_per_day=5, max_concurrent=2, max_tokens_per_run=50_000), None)))
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
