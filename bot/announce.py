"""Posts what a routine's channel must hear: a finished run, missed scheduled fires,
the day's spend nearing or reaching the cap."""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

from bot.budget import Spend
from bot.messages import Messages
from bot.service import MissedFires, RunView


class Announcer:
    def __init__(self, client: AsyncWebClient, messages: Messages,
                 incidents_channel: str = "") -> None:
        self.client = client
        self.messages = messages
        self.incidents_channel = incidents_channel

    async def __call__(self, view: RunView) -> None:
        message = self.messages.render("run_finished.json.j2", view=view)
        await self.client.chat_postMessage(channel=view.routine.channel_id, **message)

    async def missed(self, missed: MissedFires) -> None:
        message = self.messages.render("schedule_missed.json.j2", missed=missed)
        await self.client.chat_postMessage(channel=missed.routine.channel_id, **message)

    async def spend(self, spend: Spend, channel: str) -> None:
        """80% and 100% of the daily cap: said where incidents go, else where it happened."""
        message = self.messages.render("spend.json.j2", spend=spend)
        await self.client.chat_postMessage(channel=self.incidents_channel or channel, **message)
