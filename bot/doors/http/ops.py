"""Operations endpoints: `GET /metrics` (Prometheus text format) and `GET /readyz`.

`/healthz` (in `bot.doors.http.server`) says the process answers; `/readyz` says it can do its work:
the database answers a query and the Docker engine answers a ping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from bot.store.database import Database

log = logging.getLogger(__name__)
CHECK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    ok: bool
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"ok": True} if self.ok else {"ok": False, "error": self.error}


class Readiness:
    """Asks each dependency in turn; a dependency that hangs counts as down."""

    def __init__(self, db: Database, docker_client: Any,
                 timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self.checks: dict[str, Callable[[], None]] = {
            "database": lambda: _require(db.ping(), "the database did not answer SELECT 1"),
            "docker": lambda: _require(bool(docker_client.ping()), "the engine refused ping"),
        }
        self.timeout = timeout

    async def check(self) -> dict[str, Check]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._one(self.checks[name]) for name in names))
        return dict(zip(names, results, strict=True))

    async def _one(self, probe: Callable[[], None]) -> Check:
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.to_thread(probe)
        except TimeoutError:
            return Check(False, f"no answer within {self.timeout:g}s")
        except Exception as exc:
            return Check(False, (str(exc) or type(exc).__name__)[:300])
        return Check(True)


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise RuntimeError(why)


def add_ops_routes(app: web.Application, readiness: Readiness,
                   registry: CollectorRegistry) -> None:
    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness.check()
        ready = all(c.ok for c in checks.values())
        body = {"ready": ready, "checks": {name: c.as_json() for name, c in checks.items()}}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        try:
            text = await asyncio.to_thread(generate_latest, registry)
        except Exception as exc:  # the database is down: say so rather than a bare 500
            log.warning("metrics scrape failed: %s", exc)
            return web.Response(status=503, text="metrics unavailable: the database failed\n")
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
