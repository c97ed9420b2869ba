"""Governance rules: roles, approvals, the kill switch, budgets and the audit log, through
the service on a real database (the doors are tested in test_approvals/test_killswitch)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from bot.core import budget, roles
from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits, parse_changes
from bot.core.run_log import diff_summary
from bot.core.statuses import BusyPolicy, RiskLevel, RunStatus
from bot.core.trigger import manual
from bot.core.verdict import RunOutcome
from bot.doors.slack.commands import parse
from bot.errors import (
    AlreadyDecided,
    BudgetExceeded,
    Forbidden,
    KillSwitchEngaged,
    RoutineBusy,
    RoutinesError,
    ValidationFailed,
)
from bot.services.service import RoutineService, ServicePolicy
from bot.store.database import Database
from bot.store.tables import AuditEntry, Run, utcnow

ADMIN, OWNER, APPROVER, OTHER, GROUPIE = "U0ADMIN01", "U0OWNER01", "U0APPROV1", "U0OTHER01", \
    "U0GROUP01"
GROUPS = {"S0OPS0001": frozenset({GROUPIE})}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'g.db'}")
    database.create_schema()
    yield database
    database.close()


def make_service(db: Database, **policy: object) -> RoutineService:
    base = ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5, triggers_per_minute=1000,
                         admins=(ADMIN,), approval_timeout_seconds=3600)
    values = {**base.__dict__, **policy}
    return RoutineService(db, ServicePolicy(**values),
                          Redactor(()), lambda group: GROUPS.get(group, frozenset()))


@pytest.fixture
def service(db: Database) -> RoutineService:
    svc = make_service(db)
    svc.create_routine(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                    channel_id="C0123ABC"), OWNER)
    return svc


def actions(service: RoutineService) -> list[str]:
    return [e.action for e in reversed(service.audit_entries(limit=200))]


# Roles ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("<@U0AAA111> <@U0BBB222|bob>", ("U0AAA111", "U0BBB222")),
    ("U0AAA111,U0AAA111", ("U0AAA111",)),
    ("<!subteam^S0OPS0001|@ops>", ("subteam:S0OPS0001",)),
    ("subteam:S0OPS0001, @U0AAA111", ("subteam:S0OPS0001", "U0AAA111")),
    ("", ()),
])
def test_principals_are_read_from_mentions_and_ids(text: str, expected: tuple[str, ...]) -> None:
    assert roles.parse_principals(text) == expected


@pytest.mark.parametrize("text", ["bob", "<!channel>", "<#C0123|general>", "@here"])
def test_what_is_not_a_user_or_group_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Slack user or user group"):
        roles.parse_principals(text)


def test_only_owners_and_admins_change_and_the_refusal_says_who(service: RoutineService) -> None:
    with pytest.raises(Forbidden, match=rf"Only its owners \(<@{OWNER}>\) or an admin may "
                                        "pause `demo`"):
        service.pause_routine("demo", OTHER)
    assert not service.get_routine("demo").paused
    for actor in (OWNER, ADMIN):
        service.pause_routine("demo", actor)
        service.resume_routine("demo", actor)
    for attempt in (lambda: service.set_schedule("demo", "every 5m", "UTC", OTHER),
                    lambda: service.create_token("demo", "ci", OTHER),
                    lambda: service.change_routine("demo", {"risk": RiskLevel.HIGH}, OTHER),
                    lambda: service.subscribe_github("demo", "push", OTHER),
                    lambda: service.delete_routine("demo", OTHER)):
        with pytest.raises(Forbidden):
            attempt()
    assert service.get_routine("demo").risk == RiskLevel.LOW
    assert service.get_routine("demo").schedule is None
    assert actions(service).count("refused") == 6


def test_a_user_group_grants_its_members_the_role(service: RoutineService) -> None:
    service.change_routine("demo", {"owners": "subteam:S0OPS0001"}, OWNER)
    service.pause_routine("demo", GROUPIE)
    with pytest.raises(Forbidden, match=r"<!subteam\^S0OPS0001>"):
        service.resume_routine("demo", OWNER)  # no longer an owner


def test_anyone_may_run_a_low_risk_routine(service: RoutineService) -> None:
    triggered = service.trigger_run("demo", manual(OTHER))
    assert triggered.view.run.status == RunStatus.QUEUED and triggered.approval is None


# Approvals -----------------------------------------------------------------------------

def high_risk(service: RoutineService) -> None:
    service.change_routine("demo", parse_changes(["risk=high", f"approvers=<@{APPROVER}>"]),
                           OWNER)


def test_a_high_risk_run_waits_and_the_requester_cannot_approve_it(
        service: RoutineService) -> None:
    high_risk(service)
    triggered = service.trigger_run("demo", manual(OWNER))
    assert triggered.view.run.status == RunStatus.AWAITING_APPROVAL
    approval = triggered.approval
    assert approval is not None and approval.id is not None
    assert service.claim_next_run() is None  # not startable before the decision
    with pytest.raises(Forbidden, match="someone else must approve"):
        service.decide(approval.id, OWNER, approve=True)
    with pytest.raises(Forbidden, match=rf"Only its approvers \(<@{APPROVER}>\) or an admin"):
        service.decide(approval.id, OTHER, approve=True)
    decided = service.decide(approval.id, APPROVER, approve=True)
    assert decided.approval.status == "approved" and decided.approval.decided_by == APPROVER
    assert decided.run.status == RunStatus.QUEUED
    claimed = service.claim_next_run()
    assert claimed is not None and claimed.run.id == triggered.view.run.id
    with pytest.raises(AlreadyDecided, match=f"Already approved by <@{APPROVER}>"):
        service.decide(approval.id, ADMIN, approve=False)
    assert {"approval_requested", "approve"} <= set(actions(service))


def test_rejecting_ends_the_run_with_the_reason(service: RoutineService) -> None:
    high_risk(service)
    approval = service.trigger_run("demo", manual(OWNER)).approval
    assert approval is not None and approval.id is not None
    view = service.decide(approval.id, ADMIN, approve=False, reason="not during the freeze")
    assert view.run.status == RunStatus.REJECTED
    assert view.run.reason == f"rejected by <@{ADMIN}>: not during the freeze"
    assert view.approval.reason == "not during the freeze"
    assert service.claim_next_run() is None


def race(service: RoutineService, approval_id: int,
         clicks: list[tuple[str, bool]]) -> dict[str, str]:
    """Every click at the same moment, each in its own thread, as Slack delivers them."""
    results: dict[str, str] = {}
    barrier = threading.Barrier(len(clicks))

    def click(user: str, approve: bool) -> None:
        barrier.wait()
        try:
            service.decide(approval_id, user, approve)
            results[user] = "decided"
        except AlreadyDecided as exc:
            results[user] = str(exc)

    threads = [threading.Thread(target=click, args=c) for c in clicks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_approvers_at_once_give_exactly_one_decision(service: RoutineService) -> None:
    high_risk(service)
    service.change_routine("demo", {"approvers": f"{APPROVER},{ADMIN},{GROUPIE}"}, OWNER)
    for _ in range(5):
        approval = service.trigger_run("demo", manual(OWNER)).approval
        assert approval is not None and approval.id is not None
        results = race(service, approval.id, [(APPROVER, True), (ADMIN, True), (GROUPIE, False)])
        winners = [u for u, r in results.items() if r == "decided"]
        assert len(winners) == 1, results
        final = service.get_approval(approval.id).approval
        assert final.decided_by == winners[0]
        for user, told in results.items():
            if user != winners[0]:
                assert f"by <@{winners[0]}>" in told


def test_an_undecided_request_expires(service: RoutineService) -> None:
    high_risk(service)
    approval = service.trigger_run("demo", manual(OWNER)).approval
    assert approval is not None and approval.id is not None
    assert service.expire_approvals(utcnow()) == []
    expired = service.expire_approvals(utcnow() + timedelta(hours=2))
    assert [v.approval.id for v in expired] == [approval.id]
    assert expired[0].run.status == RunStatus.EXPIRED
    assert expired[0].approval.status == "expired"
    with pytest.raises(AlreadyDecided, match="expired"):
        service.decide(approval.id, APPROVER, approve=True)
    assert "expire" in actions(service)


def test_a_medium_risk_success_with_a_commit_asks_to_publish(service: RoutineService) -> None:
    service.change_routine("demo", {"risk": RiskLevel.MEDIUM}, OWNER)
    published: list[int] = []
    service.on_publish_approved(published.append)
    run = service.trigger_run("demo", manual(OTHER)).view.run
    assert run.status == RunStatus.QUEUED and run.id is not None
    assert service.claim_next_run() is not None
    view = service.finish_run(run.id, RunOutcome(RunStatus.SUCCEEDED, "done", None, None), 10, 5,
                              "diff --git a/x b/x\n+++ b/x\n+new", commit="abc123")
    assert view.run.commit_sha == "abc123"
    [request] = service.approvals_to_post()
    assert request.approval.kind == "publish" and request.approval.requested_by == OTHER
    service.decide(_id(request.approval.id), ADMIN, approve=True)
    assert published == [run.id]
    assert [v.run.id for v in service.publish_pending()] == [run.id]
    service.record_published(run.id, "refs/heads/routines/demo/1", "pushed abc123")
    assert service.publish_pending() == []


def _id(value: int | None) -> int:
    assert value is not None
    return value


# Kill switch ---------------------------------------------------------------------------

def test_the_kill_switch_holds_refuses_and_survives(db: Database,
                                                    service: RoutineService) -> None:
    service.change_routine("demo", {"approvers": APPROVER}, OWNER)
    queued = service.trigger_run("demo", manual(OTHER)).view.run
    running = service.trigger_run("demo", manual(OTHER)).view.run
    service.trigger_run("demo", manual(OTHER))
    assert service.claim_next_run() is not None  # the first queued one is now running
    stopped: list[int] = []
    service.on_stop_requested(stopped.append)
    with pytest.raises(Forbidden, match="Only admins or approvers may engage"):
        service.engage_kill_switch(OTHER, "why not")
    with pytest.raises(ValidationFailed):
        service.engage_kill_switch(APPROVER, "  ")
    report = service.engage_kill_switch(APPROVER, "bad deploy, stop everything")
    assert report.state.engaged and report.stopping == 1 and report.held.queued == 2
    assert stopped == [queued.id]
    with pytest.raises(KillSwitchEngaged, match="bad deploy"):
        service.trigger_run("demo", manual(OWNER))
    assert service.claim_next_run() is None
    assert service.schedule_fired("demo", utcnow()) is None
    # A second service over the same database (a restart) sees it engaged.
    again = make_service(db)
    assert again.kill_switch().engaged
    assert again.claim_next_run() is None
    with pytest.raises(Forbidden, match="Only admins may disengage"):
        again.disengage_kill_switch(APPROVER)
    with pytest.raises(RoutinesError, match="Disengage the kill switch first"):
        again.release_held(ADMIN, drop=False)
    report = again.disengage_kill_switch(ADMIN)
    assert not report.state.engaged and report.held.queued == 2
    assert again.claim_next_run() is None  # still held until released
    again.release_held(ADMIN, drop=False)
    claimed = again.claim_next_run()
    assert claimed is not None and claimed.run.id == running.id
    assert {"engage", "disengage", "held_released"} <= set(actions(again))


def test_dropping_held_runs_cancels_them(service: RoutineService) -> None:
    service.trigger_run("demo", manual(OTHER))
    service.engage_kill_switch(ADMIN, "incident")
    service.disengage_kill_switch(ADMIN)
    held = service.release_held(ADMIN, drop=True)
    assert held.queued == 1
    assert [v.run.status for v in service.run_history("demo")] == [RunStatus.CANCELLED]


def test_cancel_obeys_roles_and_ends_a_queued_run(service: RoutineService) -> None:
    run = service.trigger_run("demo", manual(OTHER)).view.run
    assert run.id is not None
    with pytest.raises(Forbidden):
        service.cancel_run(run.id, GROUPIE)
    view = service.cancel_run(run.id, OTHER)  # whoever started it may stop it
    assert view.run.status == RunStatus.CANCELLED
    with pytest.raises(RoutinesError, match="already ended"):
        service.cancel_run(run.id, OWNER)


# Budgets -------------------------------------------------------------------------------

def test_runs_per_day_and_the_skip_policy(service: RoutineService) -> None:
    service.change_routine("demo", parse_changes(["max-runs-per-day=2"]), OWNER)
    service.trigger_run("demo", manual(OTHER))
    service.trigger_run("demo", manual(OTHER))
    with pytest.raises(BudgetExceeded, match="used its 2 run"):
        service.trigger_run("demo", manual(OTHER))
    assert "budget_hit" in actions(service)
    service.change_routine("demo", parse_changes(
        ["max-runs-per-day=off", "max-concurrent=1", "when-busy=skip"]), OWNER)
    with pytest.raises(RoutineBusy, match="skipped"):
        service.trigger_run("demo", manual(OTHER))
    assert service.get_routine("demo").busy_policy == BusyPolicy.SKIP


def test_max_concurrent_with_queue_holds_the_next_run_until_one_ends(
        service: RoutineService) -> None:
    service.change_routine("demo", parse_changes(["max-concurrent=1"]), OWNER)
    first = service.trigger_run("demo", manual(OTHER)).view.run
    service.trigger_run("demo", manual(OTHER))
    assert service.claim_next_run() is not None
    assert service.claim_next_run() is None
    assert first.id is not None
    service.finish_run(first.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None), 1, 1, "")
    assert service.claim_next_run() is not None


def test_the_daily_spend_cap_warns_then_refuses(db: Database) -> None:
    service = make_service(db, daily_spend_cap_usd=1.0)
    service.create_routine(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                        channel_id="C0123ABC", model="claude-sonnet-4-5"),
                           OWNER)
    run = service.trigger_run("demo", manual(OTHER)).view.run
    assert run.id is not None and service.claim_next_run() is not None
    # $3 per million input tokens: 270,000 tokens are $0.81, 81% of the cap.
    service.finish_run(run.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None), 270_000, 0, "")
    spend = service.spend_alert_due()
    assert spend is not None and spend.level is budget.SpendLevel.WARNING
    assert service.spend_alert_due() is None  # said once a day
    run = service.trigger_run("demo", manual(OTHER)).view.run
    assert run.id is not None and service.claim_next_run() is not None
    service.finish_run(run.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None), 100_000, 0, "")
    spend = service.spend_alert_due()
    assert spend is not None and spend.level is budget.SpendLevel.EXHAUSTED
    with pytest.raises(BudgetExceeded, match=r"\$1.11 of \$1.00 today"):
        service.trigger_run("demo", manual(OTHER))
    with pytest.raises(Forbidden):
        service.set_spend_cap(10, OWNER)
    service.set_spend_cap(10, ADMIN)
    service.trigger_run("demo", manual(OTHER))


@pytest.mark.parametrize(("spent", "cap", "level"), [
    (0, 0, "ok"), (100, 0, "ok"), (7.99, 10, "ok"), (8, 10, "warning"), (9.99, 10, "warning"),
    (10, 10, "exhausted"), (12, 10, "exhausted"),
])
def test_spend_levels(spent: float, cap: float, level: str) -> None:
    assert budget.Spend(spent, cap).level == level


# Changes, commands, audit ---------------------------------------------------------------

@pytest.mark.parametrize(("words", "error"), [
    (["risk=extreme"], "risk"), (["owners="], "owners"), (["max-concurrent=0"], "max-concurrent"),
    (["when-busy=drop"], "when-busy"), (["colour=blue"], "colour"), (["nonsense"], "nonsense"),
    (["max-tokens=12"], "max-tokens"), ([], "set"),
])
def test_bad_changes_are_refused_field_by_field(words: list[str], error: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_changes(words)
    assert error in caught.value.field_errors


def test_changes_parse_lists_spanning_words() -> None:
    assert parse_changes(["approvers=<@U0AAA111>", "<!subteam^S0OPS0001>", "risk=HIGH",
                          "max-tokens=50000"]) == {
        "approvers": "U0AAA111,subteam:S0OPS0001", "risk": RiskLevel.HIGH,
        "max_tokens_per_run": 50_000}


@pytest.mark.parametrize(("text", "action", "arg", "option"), [
    ("killswitch engage db on fire", "killswitch", "engage", "db on fire"),
    ("killswitch", "killswitch", "status", ""),
    ("killswitch drop", "killswitch", "drop", ""),
    ("cancel #12", "cancel", "12", ""),
    ("budget cap 25", "budget", "25", ""),
    ("audit", "audit", "", ""),
    ("killswitch engage", "help", "", ""),
    ("cancel twelve", "help", "", ""),
    ("killswitch stop now", "help", "", ""),
])
def test_governance_commands_parse(text: str, action: str, arg: str, option: str) -> None:
    parsed = parse(text)
    assert (parsed.action, parsed.arg, parsed.option) == (action, arg, option)


def test_delete_keeps_the_record_and_refuses_while_runs_are_pending(
        service: RoutineService, db: Database) -> None:
    run = service.trigger_run("demo", manual(OTHER)).view.run
    with pytest.raises(RoutinesError, match="cancel them first"):
        service.delete_routine("demo", OWNER)
    assert run.id is not None
    service.cancel_run(run.id, OWNER)
    service.delete_routine("demo", OWNER)
    with db.session() as session:
        assert session.exec(select(Run)).all() == []
        entries = session.exec(select(AuditEntry).where(AuditEntry.action == "delete")).all()
    assert [(e.actor, e.routine) for e in entries] == [(OWNER, "demo")]


def test_every_action_is_audited(service: RoutineService) -> None:
    service.create_token("demo", "ci", OWNER)
    service.revoke_token("demo", "ci", OWNER)
    service.pause_routine("demo", OWNER)
    service.resume_routine("demo", OWNER)
    service.change_routine("demo", {"risk": RiskLevel.HIGH}, OWNER)
    approval = service.trigger_run("demo", manual(OWNER)).approval
    assert approval is not None and approval.id is not None
    service.decide(approval.id, ADMIN, approve=False)
    service.engage_kill_switch(ADMIN, "drill")
    service.disengage_kill_switch(ADMIN)
    assert actions(service) == [
        "create", "token_created", "token_revoked", "pause", "resume", "change",
        "approval_requested", "run", "reject", "engage", "disengage"]
    newest = service.audit_entries("demo", limit=1)[0]
    assert (newest.action, newest.actor) == ("reject", ADMIN)


def test_diff_summary_lists_files_with_counts() -> None:
    diff = "diff --git a/x b/x\n--- a/x\n+++ b/x\n+a\n+b\n-c\ndiff --git a/y b/y\n+++ b/y\n+z"
    assert diff_summary(diff) == "2 file(s) changed\nx  +2 -1\ny  +1 -0"
    assert diff_summary("") == "no changes"
