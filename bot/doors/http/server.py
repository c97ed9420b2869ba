"""HTTP adapter: Slack's request URL, the API door and the health check."""

from __future__ import annotations

import asyncio

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from bot.doors.http.api import add_api_routes
from bot.doors.http.github import add_webhook_route
from bot.services import Services
from bot.settings import Settings
from bot.store.database import Database

MAX_BODY_BYTES = 1024 * 1024  # Slack's payloads are far smaller (the API and GitHub doors
# read their bodies themselves, under their own limits)


def build_web_app(slack: AsyncApp, db: Database, services: Services,
                  settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    add_api_routes(app, services, settings)
    add_webhook_route(app, services, settings)

    async def slack_events(request: web.Request) -> web.Response:
        bolt_response = await slack.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(bolt_response)

    async def healthz(_: web.Request) -> web.Response:
        database = await asyncio.to_thread(db.ping)
        return web.json_response({"ok": database, "database": database},
                                 status=200 if database else 503)

    app.router.add_post("/slack/events", slack_events)
    app.router.add_get("/healthz", healthz)
    return app
