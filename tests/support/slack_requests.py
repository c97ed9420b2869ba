"""Drives the bot as Slack does: signed slash commands, view submissions and clicks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier

TEAM = "T0001"


@dataclass
class Reply:
    status: int
    text: str

    def json(self) -> dict[str, Any]:
        value = json.loads(self.text) if self.text else {}
        assert isinstance(value, dict)
        return value


class FakeSlack:
    def __init__(self, base_url: str, signing_secret: str) -> None:
        self.url = base_url.rstrip("/") + "/slack/events"
        self.verifier = SignatureVerifier(signing_secret)
        self._triggers = 0
        self._events = 0

    async def post(self, body: str, *, timestamp: int | None = None,
                   signature: str | None = None,
                   content_type: str = "application/x-www-form-urlencoded") -> Reply:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signed = self.verifier.generate_signature(timestamp=ts, body=body)
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature or str(signed),
        }
        async with aiohttp.ClientSession() as session, session.post(
            self.url, data=body.encode(), headers=headers
        ) as response:
            return Reply(response.status, await response.text())

    def trigger_id(self) -> str:
        self._triggers += 1
        return f"{self._triggers}.1.trigger"

    def slash_body(self, text: str, user: str, channel: str) -> str:
        return urlencode({
            "token": "legacy", "team_id": TEAM, "team_domain": "team", "channel_id": channel,
            "channel_name": "general", "user_id": user, "user_name": user.lower(),
            "command": "/routine", "text": text, "api_app_id": "A0001",
            "response_url": "http://127.0.0.1:9/commands/1", "trigger_id": self.trigger_id(),
        })

    async def slash(self, text: str, user: str = "U0ALICE01", channel: str = "C0GENERAL1",
                    **kwargs: Any) -> Reply:
        return await self.post(self.slash_body(text, user, channel), **kwargs)

    async def submit_view(self, callback_id: str, values: dict[str, dict[str, Any]],
                          user: str = "U0ALICE01", private_metadata: str = "") -> Reply:
        payload = {
            "type": "view_submission", "team": {"id": TEAM, "domain": "team"},
            "user": {"id": user, "team_id": TEAM}, "api_app_id": "A0001",
            "trigger_id": self.trigger_id(),
            "view": {"id": "V0001", "team_id": TEAM, "type": "modal",
                     "callback_id": callback_id, "state": {"values": values},
                     "hash": "1", "private_metadata": private_metadata, "blocks": []},
        }
        return await self.post(urlencode({"payload": json.dumps(payload)}))

    async def click(self, action_id: str, value: str, user: str = "U0ALICE01",
                    channel: str = "C0GENERAL1", message_ts: str = "1.1") -> Reply:
        """A button pressed in the message `message_ts` of `channel`."""
        payload = {
            "type": "block_actions", "team": {"id": TEAM, "domain": "team"},
            "user": {"id": user, "team_id": TEAM}, "api_app_id": "A0001",
            "trigger_id": self.trigger_id(), "channel": {"id": channel},
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "response_url": "http://127.0.0.1:9/actions/1",
            "actions": [{"action_id": action_id, "block_id": "b1", "value": value,
                         "type": "button", "action_ts": str(time.time())}],
        }
        return await self.post(urlencode({"payload": json.dumps(payload)}))

    async def event(self, event: dict[str, Any], **kwargs: Any) -> Reply:
        """An Events API `event_callback`, JSON-encoded and signed as Slack sends it."""
        self._events += 1
        body = {
            "token": "legacy", "team_id": TEAM, "api_app_id": "A0001", "event": event,
            "type": "event_callback", "event_id": f"Ev{self._events:08d}",
            "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": TEAM, "user_id": "UBOT",
                                "is_bot": True, "is_enterprise_install": False}],
        }
        return await self.post(json.dumps(body), content_type="application/json", **kwargs)

    async def open_home(self, user: str = "U0ALICE01", **kwargs: Any) -> Reply:
        return await self.event({"type": "app_home_opened", "user": user, "channel": "D0HOME01",
                                 "tab": "home", "event_ts": f"{time.time():.6f}"}, **kwargs)

    async def home_click(self, action_id: str, value: str, user: str = "U0ALICE01") -> Reply:
        """A button pressed in the App Home tab: the container is the view, no channel."""
        payload = {
            "type": "block_actions", "team": {"id": TEAM, "domain": "team"},
            "user": {"id": user, "team_id": TEAM}, "api_app_id": "A0001",
            "trigger_id": self.trigger_id(),
            "container": {"type": "view", "view_id": "V0HOME01"},
            "view": {"id": "V0HOME01", "team_id": TEAM, "type": "home", "blocks": [],
                     "private_metadata": "", "callback_id": "", "hash": "1", "state":
                     {"values": {}}},
            "actions": [{"action_id": action_id, "block_id": f"actions:{value}",
                         "value": value, "type": "button", "action_ts": str(time.time())}],
        }
        return await self.post(urlencode({"payload": json.dumps(payload)}))


def modal_values(**fields: str) -> dict[str, dict[str, Any]]:
    """State values as Slack sends them for the create modal (block id = field name)."""
    values: dict[str, dict[str, Any]] = {}
    for name, value in fields.items():
        if name == "channel_id":
            values[name] = {"value": {"type": "conversations_select",
                                      "selected_conversation": value}}
        elif name == "timeout_seconds":
            values[name] = {"value": {"type": "number_input", "value": value}}
        elif name == "engine":
            values[name] = {"value": {"type": "static_select", "selected_option": {
                "text": {"type": "plain_text", "text": value}, "value": value}}}
        else:
            values[name] = {"value": {"type": "plain_text_input", "value": value}}
    return values
