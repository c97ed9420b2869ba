"""Posts what a routine's channel must hear: a finished run, missed scheduled fires,
a digest, the day's spend nearing or reaching the cap.

A run that failed, errored or timed out is an alert: its reason, trigger and actor,
and buttons to view the log and to retry (or, when the routine's policy already queued
a retry, when and which attempt). Where the message landed is recorded on the run, so
its log can be posted in that thread. A run whose live message was posted
(`live_progress`) has that message updated into its result instead of a second one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.budget import Spend
from bot.core.digest import Digest
from bot.doors.slack import workflow_step
from bot.doors.slack.live_progress import ProgressBoard, retry_after
from bot.doors.slack.messages import Messages
from bot.doors.slack.outage import outage_of
from bot.services import Services
from bot.services.views import MissedFires, RunView

log = logging.getLogger(__name__)
MAX_RESULT_WAIT = 60.0  # a rate-limited result waits this long at most, then is posted


class Announcer:
    def __init__(self, client: AsyncWebClient, messages: Messages,
                 services: Services, incidents_channel: str = "",
                 progress: ProgressBoard | None = None) -> None:
        self.client = client
        self.progress = progress  # the live messages: their Retry-After holds here too
        self.messages = messages
        self.services = services
        self.incidents_channel = incidents_channel

    async def __call__(self, view: RunView) -> None:
        message = self.messages.render("run_finished.json.j2", view=view)
        if await self._replace_live(view, message):
            ts, channel = view.run.announce_ts, view.run.announce_channel
        else:
            async with outage_of("chat.postMessage"):
                response = await self.client.chat_postMessage(
                    channel=view.routine.channel_id, **message)
            ts, channel = response.get("ts"), response.get("channel")
        if view.run.id is not None and ts:
            await asyncio.to_thread(self.services.runs.record_announcement, view.run.id,
                                    str(channel or view.routine.channel_id), str(ts))
        if view.run.id is not None:
            await self.complete_step(view.run.id)

    async def _replace_live(self, view: RunView, message: dict[str, Any]) -> bool:
        """The run's live message (or a result posted before a restart) becomes the
        result, so the run has one message and one thread; False: post one instead."""
        channel, ts = view.run.announce_channel, view.run.announce_ts
        if not channel or not ts:
            return False
        try:
            if self.progress is not None:
                await self.progress.rate_limit_over()
            try:
                await self.client.chat_update(channel=channel, ts=ts, **message)
            except SlackApiError as exc:
                if exc.response.status_code != 429:
                    raise
                await asyncio.sleep(min(retry_after(exc), MAX_RESULT_WAIT))  # then once more
                await self.client.chat_update(channel=channel, ts=ts, **message)
        except Exception as exc:  # deleted, edited away, Slack down: say it anew
            log.warning("could not turn run %s's live message into its result (%s); "
                        "posting it", view.run.id, exc)
            return False
        return True

    async def complete_step(self, run_id: int) -> None:
        """The Workflow Builder step that started the run, completed once; a failure is
        logged and tried again at the next start (`complete_pending_steps`)."""
        try:
            await workflow_step.complete(self.client, self.services, run_id)
        except Exception:
            log.exception("could not complete the workflow step of run %s", run_id)

    async def complete_pending_steps(self) -> None:
        for run_id in await asyncio.to_thread(self.services.workflows.pending):
            await self.complete_step(run_id)

    async def missed(self, missed: MissedFires) -> None:
        message = self.messages.render("schedule_missed.json.j2", missed=missed)
        await self.client.chat_postMessage(channel=missed.routine.channel_id, **message)

    async def spend(self, spend: Spend, channel: str) -> None:
        """80% and 100% of the daily cap: said where incidents go, else where it happened."""
        message = self.messages.render("spend.json.j2", spend=spend)
        await self.client.chat_postMessage(channel=self.incidents_channel or channel, **message)

    async def digest(self, digest: Digest) -> None:
        message = self.messages.render("digest.json.j2", digest=digest)
        async with outage_of("chat.postMessage"):
            await self.client.chat_postMessage(channel=digest.channel_id, **message)
