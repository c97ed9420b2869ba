"""Requests to the bot's HTTP doors as their clients send them: the API door with a bearer
token, the GitHub door with a delivery signed as GitHub signs."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import aiohttp

from bot.app import Bot

WEBHOOK_SECRET = "github-webhook-secret-0123456789"


async def call(bot: Bot, method: str, path: str, token: str | None = None,
               body: bytes | None = None, **headers: str) -> tuple[int, dict[str, Any],
                                                                   dict[str, str]]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.setdefault("Content-Type", "application/json")
    async with aiohttp.ClientSession() as session, session.request(
        method, f"http://127.0.0.1:{bot.port}{path}", data=body, headers=headers,
    ) as response:
        return response.status, await response.json(), dict(response.headers)


async def deliver(bot: Bot, event: str, body: bytes, delivery: str,
                  secret: str = WEBHOOK_SECRET, signature: str | None = None,
                  ) -> tuple[int, dict[str, Any]]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
               "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": signature if signature is not None else f"sha256={digest}"}
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{bot.port}/github/webhook", data=body, headers=headers,
    ) as response:
        return response.status, await response.json()
