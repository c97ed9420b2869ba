"""Approval requests in Slack: posted in the routine's channel, decided by buttons,
updated in place. The rules (who may decide, first decision wins, expiry) are the
service's; this module only moves messages.

`ApprovalDesk` runs in the background: it posts requests that have not reached Slack
yet (so a Slack outage delays a request, never loses it), expires overdue ones, and
has kept commits pushed or discarded once their publish request is decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.core.backoff import Backoff
from bot.core.run_log import diff_summary
from bot.doors.slack.messages import Messages
from bot.doors.slack.outage import outage_of
from bot.doors.slack.words import say
from bot.errors import RoutinesError, SlackUnavailable
from bot.execution.wake import WakeLoop
from bot.services import Services
from bot.services.views import ApprovalView, RunView
from bot.store.tables import utcnow

log = logging.getLogger(__name__)
Publish = Callable[[RunView], Awaitable[None]]


class ApprovalMessages:
    def __init__(self, services: Services, messages: Messages) -> None:
        self.services = services
        self.messages = messages

    def render(self, view: ApprovalView) -> dict[str, Any]:
        return self.messages.render("approval_request.json.j2", view=view,
                                    diff_summary=diff_summary(view.run.diff))

    async def post(self, client: AsyncWebClient, view: ApprovalView) -> tuple[str, str]:
        """In the channel; a request about a run that has its message (its live message or
        result) goes in that message's thread, broadcast so the channel still sees it.
        Returns where it landed (channel, ts), for `record`."""
        run = view.run
        thread: dict[str, Any] = {}
        if run.announce_ts and run.announce_channel == view.routine.channel_id:
            thread = {"thread_ts": run.announce_ts, "reply_broadcast": True}
        async with outage_of("chat.postMessage"):
            response = await client.chat_postMessage(channel=view.routine.channel_id,
                                                     **thread, **self.render(view))
        return str(response["channel"]), str(response["ts"])

    async def record(self, approval_id: int, where: tuple[str, str]) -> None:
        await asyncio.to_thread(self.services.approvals.record_message, approval_id, *where)

    async def update(self, client: AsyncWebClient, view: ApprovalView) -> None:
        """Rewrite the request message with its current state (decided, expired...)."""
        if not view.approval.message_ts:
            return  # not posted yet: the desk posts it in its current state
        await client.chat_update(channel=view.approval.channel_id, ts=view.approval.message_ts,
                                 **self.render(view))

    async def decide(self, client: AsyncWebClient, body: dict[str, Any], raw_id: str,
                     approve: bool, reason: str = "") -> None:
        """A click (or the reject form): decide, update the message, or tell the clicker
        why not (not an approver, their own run, someone else decided first)."""
        user = body["user"]["id"]
        try:
            view = await asyncio.to_thread(self.services.approvals.decide, int(raw_id), user,
                                           approve, reason)
        except (ValueError, RoutinesError) as exc:
            await self.tell(client, body, raw_id, say(exc))
            return
        await self.update(client, view)

    async def tell(self, client: AsyncWebClient, body: dict[str, Any], raw_id: str,
                   text: str) -> None:
        channel = (body.get("channel") or {}).get("id")
        if not channel:  # a form submission: answer where the request is
            with contextlib.suppress(ValueError, RoutinesError):
                view = await asyncio.to_thread(self.services.approvals.get, int(raw_id))
                channel = view.approval.channel_id
        if channel:
            await client.chat_postEphemeral(
                channel=channel, user=body["user"]["id"],
                **self.messages.render("error.json.j2", message=text))


class ApprovalDesk:
    def __init__(self, services: Services, client: AsyncWebClient,
                 approval_messages: ApprovalMessages, publish: Publish,
                 sweep_seconds: float = 5.0,
                 may_expire: Callable[[], bool] = lambda: True, worker_id: str | None = None,
                 publish_only: bool = False) -> None:
        self.services = services
        # Expiry is the scheduler's (one process: the lease holder); posting is every one's.
        self.may_expire = may_expire
        # Scale-out: this desk pushes only the kept commits of runs this worker ran (they
        # are on its disk); a `routines worker` does only that (`publish_only`).
        self.worker_id, self.publish_only = worker_id, publish_only
        self.client = client
        self.approval_messages = approval_messages
        self.publish = publish
        self.loop = WakeLoop("approval-desk", self.sweep, sweep_seconds)
        self._slack = Backoff()  # requests wait out Slack's Retry-After or the backoff
        self._unrecorded: dict[int, tuple[str, str]] = {}  # posted, place not yet recorded

    async def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()

    def wake(self) -> None:
        """Thread-safe: a request was stored or a publish decided, in any thread."""
        self.loop.wake()

    async def sweep(self) -> None:
        if not self.publish_only:
            if self.may_expire():
                for view in await asyncio.to_thread(self.services.approvals.expire, utcnow()):
                    await self.approval_messages.update(self.client, view)
            await self._post_requests()
        for run in await asyncio.to_thread(self.services.publishing.publish_pending,
                                           self.worker_id):
            await self.publish(run)
            approval = await asyncio.to_thread(self.services.publishing.publish_decision,
                                               _id(run))
            if approval is not None and approval.id is not None:
                view = await asyncio.to_thread(self.services.approvals.get, approval.id)
                await self.approval_messages.update(self.client, view)

    async def _post_requests(self) -> None:
        """The requests not in Slack yet, unless Slack is down: then at the next sweep
        after its Retry-After (or the backoff) is over. A request is recorded as posted
        right after its post, so each reaches Slack once."""
        for approval_id, where in list(self._unrecorded.items()):  # posted earlier
            await self.approval_messages.record(approval_id, where)
            del self._unrecorded[approval_id]
        if not self._slack.ready(time.monotonic()):
            return
        for view in await asyncio.to_thread(self.services.approvals.to_post):
            request_id = view.approval.id
            assert request_id is not None
            try:
                where = await self.approval_messages.post(self.client, view)
            except SlackUnavailable as exc:
                wait = self._slack.failed(time.monotonic(), exc.retry_after)
                log.warning("approval requests wait for Slack (%s): next try in %.0fs",
                            exc, wait)
                return
            self._slack.succeeded()
            # Kept until recorded: a database outage now must not post it a second time.
            self._unrecorded[request_id] = where
            await self.approval_messages.record(request_id, where)
            del self._unrecorded[request_id]


def _id(view: RunView) -> int:
    assert view.run.id is not None
    return view.run.id
