"""Socket Mode's door: the envelopes Slack pushes over the websocket, handed to Bolt.

Bolt acknowledges only what it answered 200, so an envelope whose payload is garbage went
unacknowledged (and Slack sends it again) or, when the payload was not even a form or an
object, raised in the client's task. Here a malformed envelope is acknowledged once and
dropped; an envelope that failed on our side (a 5xx) is left unacknowledged, so Slack retries.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import (
    run_async_bolt_app,
    send_async_response,
)
from slack_bolt.response import BoltResponse
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

log = logging.getLogger(__name__)


class GuardedSocketModeHandler(AsyncSocketModeHandler):
    def __init__(self, app: Any, app_token: str | None = None) -> None:
        super().__init__(app, app_token)
        # The client builds its request only from a dict or str payload and raises on any
        # other (before `handle` is reached): such an envelope is acknowledged here.
        self.client.message_listeners.append(self._ack_unreadable)

    async def _ack_unreadable(self, client: AsyncBaseSocketModeClient,
                              message: dict[str, Any], _raw: str | None) -> None:
        envelope_id = message.get("envelope_id")
        if (isinstance(envelope_id, str) and envelope_id and "type" in message
                and "payload" in message and not isinstance(message["payload"], dict | str)):
            log.info("socket mode envelope with an unreadable payload dropped")
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=envelope_id))

    async def handle(self, client: AsyncBaseSocketModeClient,
                     req: SocketModeRequest) -> None:
        start = time.time()
        if not isinstance(req.envelope_id, str) or not req.envelope_id:
            log.info("socket mode message without an envelope id ignored")
            return
        try:
            response = await self._dispatch(req)
        except (ValueError, TypeError, LookupError, AttributeError, RecursionError) as exc:
            log.info("malformed socket mode envelope dropped: %s", type(exc).__name__)
            response = BoltResponse(status=400)
        if 400 <= response.status < 500:
            await client.send_socket_mode_response(
                SocketModeResponse(envelope_id=req.envelope_id))
            return
        await send_async_response(client, req, response, start)

    async def _dispatch(self, req: SocketModeRequest) -> BoltResponse:
        payload: object = req.payload  # typed a dict; a str arrives as well
        if not isinstance(payload, dict):
            return BoltResponse(status=400)
        response: BoltResponse = await run_async_bolt_app(self.app, req)
        return response
