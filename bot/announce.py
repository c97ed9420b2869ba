"""Posts a finished run's result in its routine's channel."""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

from bot.messages import Messages
from bot.service import RunView


class RunAnnouncer:
    def __init__(self, client: AsyncWebClient, messages: Messages) -> None:
        self.client = client
        self.messages = messages

    async def __call__(self, view: RunView) -> None:
        message = self.messages.render("run_finished.json.j2", view=view)
        await self.client.chat_postMessage(channel=view.routine.channel_id, **message)
