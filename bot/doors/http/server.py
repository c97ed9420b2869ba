"""HTTP adapter: Slack's request URL, the API door and the health check.

Slack's door checks, in order, before Bolt sees anything: the body's size (declared, then
read), the time its read takes, the signature on the raw bytes, then that the bytes are
UTF-8 and parse as Slack's shapes (a form, a form whose `payload` is a JSON object, or a
JSON object). A forged request is refused unread; malformed input is a 400 with a reason.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.doors.http.api import SubmitCall, add_api_routes
from bot.doors.http.edges import Refused, read_body, refusals, slack_signature_valid
from bot.doors.http.github import add_webhook_route
from bot.services import Services
from bot.settings import Settings
from bot.store.database import Database

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1024 * 1024  # Slack's payloads are far smaller (the API and GitHub doors
# read their bodies themselves, under their own limits)
# What parsing, or reading a parsed body, raises on a body of the wrong shape.
SHAPE_ERRORS = (ValueError, TypeError, LookupError, AttributeError, RecursionError)


def build_web_app(slack: AsyncApp, db: Database, services: Services, settings: Settings,
                  submit_api_call: SubmitCall) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[refusals])
    add_api_routes(app, services, settings, submit_api_call)
    add_webhook_route(app, services, settings)

    async def slack_events(request: web.Request) -> web.Response:
        body = await read_body(request, MAX_BODY_BYTES, settings.http_body_timeout_seconds)
        if not slack_signature_valid(settings.slack_signing_secret, body,
                                     request.headers.get("X-Slack-Request-Timestamp"),
                                     request.headers.get("X-Slack-Signature")):
            raise Refused(401, "bad_signature",
                          "missing, stale or invalid X-Slack-Signature")
        try:
            bolt_response = await slack.async_dispatch(slack_request(request, body))
        except SHAPE_ERRORS as exc:  # Bolt's own error path reads the body again, and trips
            log.info("malformed Slack request refused in Bolt: %s", type(exc).__name__)
            raise Refused(400, "malformed", "body is not a request this app handles") from None
        return await to_aiohttp_response(bolt_response)

    async def healthz(_: web.Request) -> web.Response:
        database = await asyncio.to_thread(db.ping)
        return web.json_response({"ok": database, "database": database},
                                 status=200 if database else 503)

    app.router.add_post("/slack/events", slack_events)
    app.router.add_get("/healthz", healthz)
    return app


def slack_request(request: web.Request, body: bytes) -> AsyncBoltRequest:
    """Bolt's request from verified bytes, or a 400 when they are not one of Slack's shapes
    (Bolt parses in its constructor and lets the error escape, which was a 500)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "invalid_encoding", "body is not UTF-8") from None
    try:
        parsed = AsyncBoltRequest(body=text, query=request.query_string,
                                  headers=dict(request.headers))
    except SHAPE_ERRORS as exc:
        log.info("malformed Slack request refused: %s", type(exc).__name__)
        raise Refused(400, "malformed", "body is not a Slack form or JSON object") from None
    if not isinstance(parsed.body, dict):
        raise Refused(400, "malformed", "body is not a Slack form or JSON object")
    return parsed
