"""The HTTP API door: another system queues a run with a routine's token and JSON.

Thin by design: read the request, call the services, map its errors to statuses. The
rules (token of this routine, paused, idempotency, rate limit, payload template) live in
`bot.services`, so the Slack and GitHub doors obey the same ones.

Every route that names a routine checks the bearer token before anything else, and a
token that is not the named routine's own is `401` whatever the name: no route answers
`404` for a routine name, so names cannot be enumerated, with a token or without
(`TokenService`'s docstring says why another routine's token learns nothing either).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.core.payload import PayloadRejected
from bot.doors.http.edges import Refused, read_body, refusal_body
from bot.errors import (
    BudgetExceeded,
    DatabaseUnavailable,
    Forbidden,
    InvalidToken,
    KillSwitchEngaged,
    RateLimited,
    RoutineBusy,
    RoutineNotFound,
    RoutinePaused,
    RoutinesError,
    RunNotFound,
)
from bot.services import Services
from bot.services.trigger_batch import ApiCall, Outcome
from bot.services.views import RunView
from bot.settings import Settings

MAX_KEY_CHARS = 200
# Queues one call in the group commit its neighbours share (`Bot.api_triggers`).
SubmitCall = Callable[[ApiCall], Awaitable[Outcome]]


def add_api_routes(app: web.Application, services: Services, settings: Settings,
                   submit: SubmitCall) -> None:

    async def queue_run(request: web.Request) -> web.Response:
        name, bearer = request.match_info["name"], _bearer(request)
        try:  # the token first: before it, nothing about the routine or the body is said
            if not services.tokens.seen_live(name, bearer):
                await asyncio.to_thread(services.tokens.authenticate, name, bearer)
        except RoutinesError as exc:
            return _refusal(exc)
        body = await read_body(request, settings.api_max_body_bytes,
                               settings.http_body_timeout_seconds)
        payload = parse_json(body) if body.strip() else {}
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= MAX_KEY_CHARS:
            return refusal_body(400, "invalid_idempotency_key",
                          f"Idempotency-Key must be 1-{MAX_KEY_CHARS} characters")
        try:  # every rule again, the token too, in a commit shared with its neighbours
            queued = await submit(ApiCall(name, bearer, payload, key))
        except RoutinesError as exc:
            return _refusal(exc)
        if isinstance(queued, RoutinesError):
            return _refusal(queued)
        return web.json_response(
            {"run_id": queued.run_id, "status": queued.status, "replayed": queued.replayed,
             "status_url": f"/api/v1/runs/{queued.run_id}"},
            status=200 if queued.replayed else 202,
            headers={"Location": f"/api/v1/runs/{queued.run_id}"},
        )

    async def run_status(request: web.Request) -> web.Response:
        try:
            run_id = int(request.match_info["run_id"])
            view = await asyncio.to_thread(services.tokens.run, run_id, _bearer(request))
        except ValueError:
            return refusal_body(404, "not_found", "no such run")
        except RoutinesError as exc:
            return _refusal(exc)
        return web.json_response(run_document(view))

    app.router.add_post("/api/v1/routines/{name}/runs", queue_run)
    app.router.add_get("/api/v1/runs/{run_id}", run_status)
    app.router.add_post("/api/v1/routines/{name}/{verb:pause|resume}",
                        _pause_or_resume(services))


def _pause_or_resume(services: Services) -> Callable[
        [web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        """Acts as the token's creator: the same role rule as `/routine pause`."""
        name, verb = request.match_info["name"], request.match_info["verb"]
        try:
            routine = await asyncio.to_thread(services.tokens.set_paused, name,
                                              _bearer(request), verb == "pause")
        except RoutinesError as exc:
            return _refusal(exc)
        return web.json_response({"routine": routine.name, "paused": routine.paused,
                                  "paused_by": routine.paused_by})

    return handler


def run_document(view: RunView) -> dict[str, Any]:
    run = view.run
    return {
        "id": run.id, "routine": view.routine.name, "status": run.status,
        "summary": run.summary, "reason": run.reason,
        "trigger": {"kind": run.trigger_kind, "actor": run.triggered_by,
                    "ref": run.trigger_ref, "payload_hash": run.payload_hash},
        "queued_at": _iso(run.queued_at), "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at), "duration_seconds": view.duration_seconds,
        "tokens": {"input": run.input_tokens, "output": run.output_tokens},
    }


_STATUSES: list[tuple[type[RoutinesError], int, str]] = [
    (InvalidToken, 401, "unauthorized"),
    (RoutineNotFound, 404, "not_found"),
    (RunNotFound, 404, "not_found"),
    (Forbidden, 403, "forbidden"),
    (RoutinePaused, 409, "paused"),
    (RoutineBusy, 409, "busy"),
    (PayloadRejected, 422, "payload_rejected"),
    (RateLimited, 429, "rate_limited"),
    (BudgetExceeded, 429, "budget_exhausted"),
    (KillSwitchEngaged, 503, "kill_switch"),
    (DatabaseUnavailable, 503, "database_unavailable"),
]


def _refusal(exc: RoutinesError) -> web.Response:
    for kind, status, code in _STATUSES:
        if isinstance(exc, kind):
            headers = ({"Retry-After": str(exc.retry_after)}
                       if isinstance(exc, RateLimited | DatabaseUnavailable) else None)
            return refusal_body(status, code, str(exc), headers)
    return refusal_body(400, "refused", str(exc))


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def parse_json(body: bytes) -> object:
    """The body as JSON, or a 400: a nesting too deep to parse is malformed, not a crash."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Refused(400, "invalid_json", f"body is not valid JSON: {exc}"[:300]) from None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.isoformat())
