"""Governance rules: roles, approvals, the kill switch, budgets and the audit log, through
the services on a real database. The doors are tested in tests/acceptance (test_approvals,
test_kill_switch); the pure words in tests/unit/test_governance_commands.py."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlmodel import select

from bot.core import budget
from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits, parse_changes
from bot.core.statuses import BusyPolicy, RiskLevel, RunStatus
from bot.core.trigger import manual
from bot.core.verdict import RunOutcome
from bot.doors.slack.words import say
from bot.errors import (
    AlreadyDecided,
    BudgetExceeded,
    Forbidden,
    KillSwitchEngaged,
    RoutineBusy,
    RoutinesError,
    ValidationFailed,
)
from bot.services import ServicePolicy, Services
from bot.services.events import PublishDecided, StopRequested
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import AuditEntry, Run, utcnow

ADMIN, OWNER, APPROVER, OTHER, GROUPIE = "U0ADMIN01", "U0OWNER01", "U0APPROV1", "U0OTHER01", \
    "U0GROUP01"
GROUPS = {"S0OPS0001": frozenset({GROUPIE})}

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


def make_service(db: Database, **policy: object) -> Services:
    base = ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5, triggers_per_minute=1000,
                         admins=(ADMIN,), approval_timeout_seconds=3600)
    values = {**base.__dict__, **policy}
    return Services(db, ServicePolicy(**values),
                          Redactor(()), lambda group: GROUPS.get(group, frozenset()))


@pytest.fixture
def services(db: Database) -> Services:
    svc = make_service(db)
    svc.routines.create(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                    channel_id="C0123ABC"), OWNER)
    return svc


def actions(services: Services) -> list[str]:
    return [e.action for e in reversed(services.audit.entries(limit=200))]


# Roles ---------------------------------------------------------------------------------


def test_only_owners_and_admins_change_and_the_refusal_says_who(services: Services) -> None:
    with pytest.raises(Forbidden) as refused:
        services.routines.pause("demo", OTHER)
    assert re.search(rf"Only its owners \(<@{OWNER}>\) or an admin may pause `demo`",
                     say(refused.value))
    assert str(refused.value) == f"Only its owners ({OWNER}) or an admin may pause demo."
    assert not services.routines.get("demo").paused
    for actor in (OWNER, ADMIN):
        services.routines.pause("demo", actor)
        services.routines.resume("demo", actor)
    for attempt in (lambda: services.schedules.set("demo", "every 5m", "UTC", OTHER),
                    lambda: services.tokens.create("demo", "ci", OTHER),
                    lambda: services.routines.change("demo", {"risk": RiskLevel.HIGH}, OTHER),
                    lambda: services.github.subscribe("demo", "push", OTHER),
                    lambda: services.routines.delete("demo", OTHER)):
        with pytest.raises(Forbidden):
            attempt()
    assert services.routines.get("demo").risk == RiskLevel.LOW
    assert services.routines.get("demo").schedule is None
    assert actions(services).count("refused") == 6


def test_a_user_group_grants_its_members_the_role(services: Services) -> None:
    services.routines.change("demo", {"owners": "subteam:S0OPS0001"}, OWNER)
    services.routines.pause("demo", GROUPIE)
    with pytest.raises(Forbidden) as refused:
        services.routines.resume("demo", OWNER)  # no longer an owner
    assert re.search(r"<!subteam\^S0OPS0001>", say(refused.value))


def test_anyone_may_run_a_low_risk_routine(services: Services) -> None:
    triggered = services.triggers.trigger("demo", manual(OTHER))
    assert triggered.view.run.status == RunStatus.QUEUED and triggered.approval is None


# Approvals -----------------------------------------------------------------------------

def high_risk(services: Services) -> None:
    services.routines.change("demo", parse_changes(["risk=high", f"approvers=<@{APPROVER}>"]),
                           OWNER)


def test_a_high_risk_run_waits_and_the_requester_cannot_approve_it(
        services: Services) -> None:
    high_risk(services)
    triggered = services.triggers.trigger("demo", manual(OWNER))
    assert triggered.view.run.status == RunStatus.AWAITING_APPROVAL
    approval = triggered.approval
    assert approval is not None and approval.id is not None
    assert services.runs.claim_next() is None  # not startable before the decision
    with pytest.raises(Forbidden, match="someone else must approve"):
        services.approvals.decide(approval.id, OWNER, approve=True)
    with pytest.raises(Forbidden) as refused:
        services.approvals.decide(approval.id, OTHER, approve=True)
    assert re.search(rf"Only its approvers \(<@{APPROVER}>\) or an admin", say(refused.value))
    decided = services.approvals.decide(approval.id, APPROVER, approve=True)
    assert decided.approval.status == "approved" and decided.approval.decided_by == APPROVER
    assert decided.run.status == RunStatus.QUEUED
    claimed = services.runs.claim_next()
    assert claimed is not None and claimed.run.id == triggered.view.run.id
    with pytest.raises(AlreadyDecided) as late:
        services.approvals.decide(approval.id, ADMIN, approve=False)
    assert f"Already approved by <@{APPROVER}>" in say(late.value)
    assert {"approval_requested", "approve"} <= set(actions(services))


def test_rejecting_ends_the_run_with_the_reason(services: Services) -> None:
    high_risk(services)
    approval = services.triggers.trigger("demo", manual(OWNER)).approval
    assert approval is not None and approval.id is not None
    view = services.approvals.decide(approval.id, ADMIN, approve=False,
                                     reason="not during the freeze")
    assert view.run.status == RunStatus.REJECTED
    assert view.run.reason == f"rejected by <@{ADMIN}>: not during the freeze"
    assert view.approval.reason == "not during the freeze"
    assert services.runs.claim_next() is None


def race(services: Services, approval_id: int,
         clicks: list[tuple[str, bool]]) -> dict[str, str]:
    """Every click at the same moment, each in its own thread, as Slack delivers them."""
    results: dict[str, str] = {}
    barrier = threading.Barrier(len(clicks))

    def click(user: str, approve: bool) -> None:
        barrier.wait()
        try:
            services.approvals.decide(approval_id, user, approve)
            results[user] = "decided"
        except AlreadyDecided as exc:
            results[user] = say(exc)

    threads = [threading.Thread(target=click, args=c) for c in clicks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_approvers_at_once_give_exactly_one_decision(services: Services) -> None:
    high_risk(services)
    services.routines.change("demo", {"approvers": f"{APPROVER},{ADMIN},{GROUPIE}"}, OWNER)
    for _ in range(5):
        approval = services.triggers.trigger("demo", manual(OWNER)).approval
        assert approval is not None and approval.id is not None
        results = race(services, approval.id, [(APPROVER, True), (ADMIN, True), (GROUPIE, False)])
        winners = [u for u, r in results.items() if r == "decided"]
        assert len(winners) == 1, results
        final = services.approvals.get(approval.id).approval
        assert final.decided_by == winners[0]
        for user, told in results.items():
            if user != winners[0]:
                assert f"by <@{winners[0]}>" in told


def test_an_undecided_request_expires(services: Services) -> None:
    high_risk(services)
    approval = services.triggers.trigger("demo", manual(OWNER)).approval
    assert approval is not None and approval.id is not None
    assert services.approvals.expire(utcnow()) == []
    expired = services.approvals.expire(utcnow() + timedelta(hours=2))
    assert [v.approval.id for v in expired] == [approval.id]
    assert expired[0].run.status == RunStatus.EXPIRED
    assert expired[0].approval.status == "expired"
    with pytest.raises(AlreadyDecided, match="expired"):
        services.approvals.decide(approval.id, APPROVER, approve=True)
    assert "expire" in actions(services)


def test_a_medium_risk_success_with_a_commit_asks_to_publish(services: Services) -> None:
    services.routines.change("demo", {"risk": RiskLevel.MEDIUM}, OWNER)
    published: list[int] = []
    services.bus.subscribe(PublishDecided, lambda event: published.append(event.run_id))
    run = services.triggers.trigger("demo", manual(OTHER)).view.run
    assert run.status == RunStatus.QUEUED and run.id is not None
    assert services.runs.claim_next() is not None
    view = services.runs.finish(run.id, RunOutcome(RunStatus.SUCCEEDED, "done", None, None), 10, 5,
                              "diff --git a/x b/x\n+++ b/x\n+new", commit="abc123")
    assert view.run.commit_sha == "abc123"
    [request] = services.approvals.to_post()
    assert request.approval.kind == "publish" and request.approval.requested_by == OTHER
    services.approvals.decide(_id(request.approval.id), ADMIN, approve=True)
    assert published == [run.id]
    assert [v.run.id for v in services.publishing.publish_pending()] == [run.id]
    services.publishing.record_published(run.id, "refs/heads/routines/demo/1", "pushed abc123")
    assert services.publishing.publish_pending() == []


def _id(value: int | None) -> int:
    assert value is not None
    return value


# Kill switch ---------------------------------------------------------------------------

def test_the_kill_switch_holds_refuses_and_survives(db: Database,
                                                    services: Services) -> None:
    services.routines.change("demo", {"approvers": APPROVER}, OWNER)
    queued = services.triggers.trigger("demo", manual(OTHER)).view.run
    running = services.triggers.trigger("demo", manual(OTHER)).view.run
    services.triggers.trigger("demo", manual(OTHER))
    assert services.runs.claim_next() is not None  # the first queued one is now running
    stopped: list[int] = []
    services.bus.subscribe(StopRequested, lambda event: stopped.append(event.run_id))
    with pytest.raises(Forbidden, match="Only admins or approvers may engage"):
        services.kill_switch.engage(OTHER, "why not")
    with pytest.raises(ValidationFailed):
        services.kill_switch.engage(APPROVER, "  ")
    report = services.kill_switch.engage(APPROVER, "bad deploy, stop everything")
    assert report.state.engaged and report.stopping == 1 and report.held.queued == 2
    assert stopped == [queued.id]
    with pytest.raises(KillSwitchEngaged, match="bad deploy"):
        services.triggers.trigger("demo", manual(OWNER))
    assert services.runs.claim_next() is None
    assert services.schedules.fired("demo", utcnow()) is None
    # A second service over the same database (a restart) sees it engaged.
    again = make_service(db)
    assert again.kill_switch.state().engaged
    assert again.runs.claim_next() is None
    with pytest.raises(Forbidden, match="Only admins may disengage"):
        again.kill_switch.disengage(APPROVER)
    with pytest.raises(RoutinesError, match="Disengage the kill switch first"):
        again.kill_switch.release_held(ADMIN, drop=False)
    report = again.kill_switch.disengage(ADMIN)
    assert not report.state.engaged and report.held.queued == 2
    assert again.runs.claim_next() is None  # still held until released
    again.kill_switch.release_held(ADMIN, drop=False)
    claimed = again.runs.claim_next()
    assert claimed is not None and claimed.run.id == running.id
    assert {"engage", "disengage", "held_released"} <= set(actions(again))


def test_dropping_held_runs_cancels_them(services: Services) -> None:
    services.triggers.trigger("demo", manual(OTHER))
    services.kill_switch.engage(ADMIN, "incident")
    services.kill_switch.disengage(ADMIN)
    held = services.kill_switch.release_held(ADMIN, drop=True)
    assert held.queued == 1
    assert [v.run.status for v in services.routines.history("demo")] == [RunStatus.CANCELLED]


def test_cancel_obeys_roles_and_ends_a_queued_run(services: Services) -> None:
    run = services.triggers.trigger("demo", manual(OTHER)).view.run
    assert run.id is not None
    with pytest.raises(Forbidden):
        services.runs.cancel(run.id, GROUPIE)
    view = services.runs.cancel(run.id, OTHER)  # whoever started it may stop it
    assert view.run.status == RunStatus.CANCELLED
    with pytest.raises(RoutinesError, match="already ended"):
        services.runs.cancel(run.id, OWNER)


# Budgets -------------------------------------------------------------------------------

def test_runs_per_day_and_the_skip_policy(services: Services) -> None:
    services.routines.change("demo", parse_changes(["max-runs-per-day=2"]), OWNER)
    services.triggers.trigger("demo", manual(OTHER))
    services.triggers.trigger("demo", manual(OTHER))
    with pytest.raises(BudgetExceeded, match="used its 2 run"):
        services.triggers.trigger("demo", manual(OTHER))
    assert "budget_hit" in actions(services)
    services.routines.change("demo", parse_changes(
        ["max-runs-per-day=off", "max-concurrent=1", "when-busy=skip"]), OWNER)
    with pytest.raises(RoutineBusy, match="skipped"):
        services.triggers.trigger("demo", manual(OTHER))
    assert services.routines.get("demo").busy_policy == BusyPolicy.SKIP


def test_max_concurrent_with_queue_holds_the_next_run_until_one_ends(
        services: Services) -> None:
    services.routines.change("demo", parse_changes(["max-concurrent=1"]), OWNER)
    first = services.triggers.trigger("demo", manual(OTHER)).view.run
    services.triggers.trigger("demo", manual(OTHER))
    assert services.runs.claim_next() is not None
    assert services.runs.claim_next() is None
    assert first.id is not None
    services.runs.finish(first.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None), 1, 1, "")
    assert services.runs.claim_next() is not None


def test_the_daily_spend_cap_warns_then_refuses(db: Database) -> None:
    services = make_service(db, daily_spend_cap_usd=1.0)
    services.routines.create(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                        channel_id="C0123ABC", model="claude-sonnet-4-5"),
                           OWNER)
    run = services.triggers.trigger("demo", manual(OTHER)).view.run
    assert run.id is not None and services.runs.claim_next() is not None
    # $3 per million input tokens: 270,000 tokens are $0.81, 81% of the cap.
    services.runs.finish(run.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None), 270_000, 0, "")
    spend = services.spend.alert_due()
    assert spend is not None and spend.level is budget.SpendLevel.WARNING
    assert services.spend.alert_due() is None  # said once a day
    run = services.triggers.trigger("demo", manual(OTHER)).view.run
    assert run.id is not None and services.runs.claim_next() is not None
    services.runs.finish(run.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None), 100_000, 0, "")
    spend = services.spend.alert_due()
    assert spend is not None and spend.level is budget.SpendLevel.EXHAUSTED
    with pytest.raises(BudgetExceeded, match=r"\$1.11 of \$1.00 today"):
        services.triggers.trigger("demo", manual(OTHER))
    with pytest.raises(Forbidden):
        services.spend.set_cap(10, OWNER)
    services.spend.set_cap(10, ADMIN)
    services.triggers.trigger("demo", manual(OTHER))


# Deletion and the audit log -------------------------------------------------------------


def test_delete_keeps_the_record_and_refuses_while_runs_are_pending(
        services: Services, db: Database) -> None:
    run = services.triggers.trigger("demo", manual(OTHER)).view.run
    with pytest.raises(RoutinesError, match="cancel them first"):
        services.routines.delete("demo", OWNER)
    assert run.id is not None
    services.runs.cancel(run.id, OWNER)
    services.routines.delete("demo", OWNER)
    with db.session() as session:
        assert session.exec(select(Run)).all() == []
        entries = session.exec(select(AuditEntry).where(AuditEntry.action == "delete")).all()
    assert [(e.actor, e.routine) for e in entries] == [(OWNER, "demo")]


def test_every_action_is_audited(services: Services) -> None:
    services.tokens.create("demo", "ci", OWNER)
    services.tokens.revoke("demo", "ci", OWNER)
    services.routines.pause("demo", OWNER)
    services.routines.resume("demo", OWNER)
    services.routines.change("demo", {"risk": RiskLevel.HIGH}, OWNER)
    approval = services.triggers.trigger("demo", manual(OWNER)).approval
    assert approval is not None and approval.id is not None
    services.approvals.decide(approval.id, ADMIN, approve=False)
    services.kill_switch.engage(ADMIN, "drill")
    services.kill_switch.disengage(ADMIN)
    assert actions(services) == [
        "create", "token_created", "token_revoked", "pause", "resume", "change",
        "approval_requested", "run", "reject", "engage", "disengage"]
    newest = services.audit.entries("demo", limit=1)[0]
    assert (newest.action, newest.actor) == ("reject", ADMIN)
