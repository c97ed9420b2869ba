"""Posts what a routine's channel must hear: a finished run, missed scheduled fires,
a digest, the day's spend nearing or reaching the cap.

A run that failed, errored or timed out is an alert: its reason, trigger and actor,
and buttons to view the log and to retry (or, when the routine's policy already queued
a retry, when and which attempt). Where the message landed is recorded on the run, so
its log can be posted in that thread.
"""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.web.async_client import AsyncWebClient

from bot.core.budget import Spend
from bot.core.digest import Digest
from bot.doors.slack import workflow_step
from bot.doors.slack.messages import Messages
from bot.services import Services
from bot.services.views import MissedFires, RunView

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, client: AsyncWebClient, messages: Messages,
                 services: Services, incidents_channel: str = "") -> None:
        self.client = client
        self.messages = messages
        self.services = services
        self.incidents_channel = incidents_channel

    async def __call__(self, view: RunView) -> None:
        message = self.messages.render("run_finished.json.j2", view=view)
        response = await self.client.chat_postMessage(channel=view.routine.channel_id,
                                                      **message)
        ts, channel = response.get("ts"), response.get("channel")
        if view.run.id is not None and ts:
            await asyncio.to_thread(self.services.runs.record_announcement, view.run.id,
                                    str(channel or view.routine.channel_id), str(ts))
        if view.run.id is not None:
            await self.complete_step(view.run.id)

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
        await self.client.chat_postMessage(channel=digest.channel_id, **message)
