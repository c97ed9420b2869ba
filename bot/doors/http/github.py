"""The GitHub door: `POST /github/webhook`, verified, then handed to the services."""

from __future__ import annotations

import asyncio

from aiohttp import web

from bot.core.github import verify_signature
from bot.doors.http.api import parse_json
from bot.doors.http.edges import read_body, refusal_body
from bot.errors import DatabaseUnavailable, KillSwitchEngaged
from bot.services import Services
from bot.settings import Settings


def add_webhook_route(app: web.Application, services: Services,
                      settings: Settings) -> None:
    async def github_webhook(request: web.Request) -> web.Response:
        body = await read_body(request, settings.github_max_body_bytes,
                               settings.http_body_timeout_seconds)
        # Verified on the raw bytes before anything is parsed or believed.
        if not verify_signature(settings.github_webhook_secret, body,
                                request.headers.get("X-Hub-Signature-256")):
            return refusal_body(401, "bad_signature", "missing or invalid X-Hub-Signature-256")
        event = request.headers.get("X-GitHub-Event", "")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if event == "ping":
            return web.json_response({"ok": True, "pong": delivery})
        if not event or not delivery:
            return refusal_body(400, "missing_headers",
                                "X-GitHub-Event and X-GitHub-Delivery are required")
        payload = parse_json(body)
        try:
            outcome = await asyncio.to_thread(services.github.delivery, event, delivery,
                                              payload)
        except KillSwitchEngaged as exc:
            return refusal_body(503, "kill_switch", str(exc))
        except DatabaseUnavailable as exc:  # GitHub redelivers on request; nothing stored
            return refusal_body(503, "database_unavailable", str(exc),
                                {"Retry-After": str(exc.retry_after)})
        document = {
            "event": outcome.event,
            "fired": [{"routine": v.routine.name, "run_id": v.run.id} for v in outcome.fired],
            "duplicate": [{"routine": v.routine.name, "run_id": v.run.id}
                          for v in outcome.duplicates],
            "refused": outcome.refused,
        }
        if outcome.refused and not (outcome.fired or outcome.duplicates):
            return web.json_response(dict(document, error="refused"), status=409)
        return web.json_response(document, status=202 if outcome.fired else 200)

    app.router.add_post("/github/webhook", github_webhook)
