"""Approval expiry is the scheduler's: of two processes on one database, only the holder of
the `scheduler` lease expires an overdue request (`ApprovalDesk` asks `Scheduler.leading`);
the other still posts requests. On SQLite, and PostgreSQL with -m postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.digest import Digest
from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits, parse_changes
from bot.core.statuses import RunStatus
from bot.core.trigger import manual
from bot.doors.scheduler import Scheduler
from bot.doors.slack.approvals import ApprovalDesk, ApprovalMessages
from bot.doors.slack.messages import Messages
from bot.services import ServicePolicy, Services
from bot.services.views import MissedFires, RunView
from bot.store import schema
from bot.store.database import Database
from tests.standins.slack_api import SlackApiStandIn

OWNER, APPROVER = "U0OWNER01", "U0APPROV1"

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    schema.upgrade(database)
    yield database
    database.close()


async def _nothing(_: MissedFires | Digest | RunView) -> None:
    """No missed fire, digest or publish in this test."""


def process(db: Database, holder: str, slack_url: str) -> tuple[Services, Scheduler,
                                                                 ApprovalDesk]:
    policy = ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5,
                           approval_timeout_seconds=1)
    services = Services(db, policy, Redactor(()))
    scheduler = Scheduler(services, _nothing, _nothing, grace_seconds=60, holder=holder,
                          lease_seconds=30)
    desk = ApprovalDesk(services, AsyncWebClient(token="xoxb-test", base_url=slack_url),
                        ApprovalMessages(services, Messages()), _nothing, 60,
                        may_expire=scheduler.leading)
    return services, scheduler, desk


async def test_only_the_lease_holder_expires_an_overdue_request(
        db: Database, slack_api: SlackApiStandIn) -> None:
    services, holder, holder_desk = process(db, "host-a/main", slack_api.url)
    _, other, other_desk = process(db, "host-b/main", slack_api.url)
    services.routines.create(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), OWNER)
    services.routines.change("demo", parse_changes(["risk=high", f"approvers=<@{APPROVER}>"]),
                             OWNER)
    approval = services.triggers.trigger("demo", manual(OWNER)).approval
    assert approval is not None and approval.id is not None
    await holder.start()
    await other.start()
    try:
        assert holder.leading() and not other.leading()
        await asyncio.sleep(1.5)  # past the request's 1 s timeout

        await other_desk.sweep()
        after_other = services.approvals.get(approval.id)
        await holder_desk.sweep()
        after_holder = services.approvals.get(approval.id)

        assert after_other.approval.status == "pending"
        assert after_other.approval.message_ts  # the other posted it all the same
        assert after_holder.approval.status == "expired"
        assert after_holder.run.status == RunStatus.EXPIRED
    finally:
        await holder.stop()
        await other.stop()
