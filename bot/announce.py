"""Posts what a channel must hear: a finished run, missed scheduled fires, a digest."""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

from bot.digest import Digest
from bot.messages import Messages
from bot.service import MissedFires, RunView


class Announcer:
    def __init__(self, client: AsyncWebClient, messages: Messages) -> None:
        self.client = client
        self.messages = messages

    async def __call__(self, view: RunView) -> None:
        message = self.messages.render("run_finished.json.j2", view=view)
        await self.client.chat_postMessage(channel=view.routine.channel_id, **message)

    async def missed(self, missed: MissedFires) -> None:
        message = self.messages.render("schedule_missed.json.j2", missed=missed)
        await self.client.chat_postMessage(channel=missed.routine.channel_id, **message)

    async def digest(self, digest: Digest) -> None:
        message = self.messages.render("digest.json.j2", digest=digest)
        await self.client.chat_postMessage(channel=digest.channel_id, **message)
