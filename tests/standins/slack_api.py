"""A Slack Web API stand-in on loopback that records every call, as bolt-python's tests do."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


@dataclass
class SlackCall:
    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    response: dict[str, Any] = field(default_factory=dict)  # what the stand-in answered


class SlackApiStandIn:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, public_url: str = "") -> None:
        """`public_url`: where clients reach it when that is not where it listens (a
        container of the compose stack reaching it by service name)."""
        self.host, self.port, self.public_url = host, port, public_url.rstrip("/")
        self.calls: list[SlackCall] = []
        self.socket: web.WebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._envelopes = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.url = ""
        self._ts = 1_700_000_000
        self.user_groups: dict[str, list[str]] = {}  # usergroups.users.list answers
        # What Slack says of the token: the scopes it was granted (the `x-oauth-scopes`
        # header of every answer), and whether it is refused (`invalid_auth`).
        self.scopes = ["commands", "chat:write", "chat:write.public", "usergroups:read"]
        self.refused_tokens: set[str] = set()
        # Rate limits as scripted by `rate_limit`: answered 429 with Retry-After, and kept
        # apart from `calls` (Slack did nothing with them).
        self.rate_limited: list[SlackCall] = []
        self.too_early: list[SlackCall] = []  # came while a Retry-After was still running
        self._limits: dict[str, tuple[int, int]] = {}  # method -> (times left, retry_after)
        self._limited_until: dict[str, float] = {}
        self._failures: dict[str, tuple[int, str]] = {}  # method -> (times left, error)
        # An outage as scripted by `outage`: every call (or those to `methods`) answered
        # with `status` until it ends; refused calls are kept in `refused`, apart from
        # `calls`, and a call that came before the Retry-After it was given also in
        # `too_early`.
        self.refused: list[SlackCall] = []
        self._outage: tuple[float, int, int, frozenset[str]] | None = None
        self._outage_retry_until = 0.0

    def outage(self, seconds: float, status: int = 500, retry_after: int = 1,
               methods: frozenset[str] = frozenset()) -> None:
        """Slack down (`status` 500/502/503) or rate-limiting (429 with `Retry-After:
        retry_after`) for the next `seconds`, for every method or only `methods`."""
        self._outage = (time.monotonic() + seconds, status, retry_after, methods)

    def outage_over(self) -> None:
        self._outage = None

    def _in_outage(self, method: str) -> tuple[int, int] | None:
        """(status, Retry-After) while the scripted outage lasts, for this method."""
        if self._outage is None:
            return None
        until, status, retry_after, methods = self._outage
        if time.monotonic() >= until:
            self._outage = None
            return None
        if methods and method not in methods:
            return None
        return status, retry_after

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls to `method` with 429 and `Retry-After`; a call
        that comes before that time is over is refused as well and kept in `too_early`."""
        self._limits[method] = (times, retry_after)

    def fail(self, method: str, error: str, times: int = 1_000_000) -> None:
        """Answer the next `times` calls to `method` with `{"ok": false, "error": error}`
        (a message deleted meanwhile answers chat.update `message_not_found`)."""
        self._failures[method] = (times, error)

    def _failure(self, method: str) -> str:
        times, error = self._failures.get(method, (0, ""))
        if times <= 0:
            return ""
        self._failures[method] = (times - 1, error)
        return error

    def _limited(self, method: str) -> tuple[bool, bool, int]:
        """(refused, came too early, Retry-After): the 429 scripting of `rate_limit`."""
        now = time.monotonic()
        until = self._limited_until.get(method, 0.0)
        if now < until:
            return True, True, max(1, math.ceil(until - now))
        times, retry_after = self._limits.get(method, (0, 0))
        if times <= 0:
            return False, False, 0
        self._limits[method] = (times - 1, retry_after)
        self._limited_until[method] = now + retry_after
        return True, False, retry_after

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._handle)
        app.router.add_get("/socket", self._socket_mode)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        listening = f"http://{self.host}:{self._runner.addresses[0][1]}"
        self.url = f"{self.public_url or listening}/api/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.content_type == "application/json":
            params = await request.json()
        else:
            params = dict(await request.post())
        params = {**request.query, **params}  # the SDK sends some methods' arguments in the URL
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        down = self._in_outage(method)
        if down is not None:
            return self._refuse(method, params, dict(request.headers), *down)
        refused, early, retry_after = self._limited(method)
        if refused:
            answer = {"ok": False, "error": "ratelimited"}
            call = SlackCall(method, params, dict(request.headers), response=answer)
            self.rate_limited.append(call)
            if early:
                self.too_early.append(call)
            self._changed.set()
            return web.json_response(answer, status=429,
                                     headers={"Retry-After": str(retry_after)})
        failure = "invalid_auth" if token in self.refused_tokens else self._failure(method)
        answer = {"ok": False, "error": failure} if failure else self._answer(method, params)
        self.calls.append(SlackCall(method, params, dict(request.headers), response=answer))
        self._changed.set()
        return web.json_response(answer, headers={"x-oauth-scopes": ",".join(self.scopes)})

    def _refuse(self, method: str, params: dict[str, Any], headers: dict[str, str],
                status: int, retry_after: int) -> web.Response:
        now = time.monotonic()
        answer = {"ok": False, "error": "ratelimited" if status == 429 else "fatal_error"}
        call = SlackCall(method, params, headers, at=now, response=answer)
        self.refused.append(call)
        if now < self._outage_retry_until:
            self.too_early.append(call)
        self._changed.set()
        if status != 429:
            return web.json_response(answer, status=status)
        self._outage_retry_until = max(self._outage_retry_until, now + retry_after)
        return web.json_response(answer, status=429, headers={"Retry-After": str(retry_after)})

    def _answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "url": "https://example.slack.com/", "team": "Team",
                    "user": "routines", "team_id": "T0001", "user_id": "UBOT",
                    "bot_id": "B0001", "is_enterprise_install": False}
        if method == "apps.connections.open":
            return {"ok": True, "url": self.url.replace("http://", "ws://")[:-len("api/")]
                    + "socket"}
        if method == "chat.postMessage":
            self._ts += 1
            return {"ok": True, "channel": params.get("channel"), "ts": f"{self._ts}.000100",
                    "message": {"text": params.get("text", "")}}
        if method == "chat.update":
            return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts")}
        if method == "usergroups.users.list":
            return {"ok": True, "users": self.user_groups.get(str(params.get("usergroup")), [])}
        if method == "chat.postEphemeral":
            self._ts += 1
            return {"ok": True, "message_ts": f"{self._ts}.000100"}
        if method in {"views.open", "views.update", "views.push", "views.publish"}:
            view = params.get("view")
            view = json.loads(view) if isinstance(view, str) else view
            return {"ok": True, "view": {"id": "V0001", **(view or {})}}
        return {"ok": True}

    async def _socket_mode(self, request: web.Request) -> web.WebSocketResponse:
        """Slack's Socket Mode: hello, then envelopes out and acks (by envelope id) in."""
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json({"type": "hello", "num_connections": 1,
                                "connection_info": {"app_id": "A0001"}})
        self.socket = socket
        self._connected.set()
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                ack = json.loads(message.data)
                future = self._acks.pop(ack.get("envelope_id", ""), None)
                if future is not None and not future.done():
                    future.set_result(ack)
        return socket

    async def send_envelope(self, kind: str, payload: dict[str, Any],
                            timeout: float = 10.0) -> dict[str, Any]:
        """Deliver one event as Slack does over the socket; return the bot's ack."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        assert self.socket is not None
        envelope_id = f"env-{next(self._envelopes)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = future
        await self.socket.send_json({"envelope_id": envelope_id, "type": kind,
                                     "payload": payload, "accepts_response_payload": True})
        return await asyncio.wait_for(future, timeout)

    async def send_raw(self, text: str, timeout: float = 10.0) -> None:
        """Push any text frame down the socket, as a broken or hostile peer could."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        assert self.socket is not None
        await self.socket.send_str(text)

    async def send_unanswered(self, kind: str, payload: Any, envelope_id: str,
                              timeout: float = 10.0) -> asyncio.Future[dict[str, Any]]:
        """Deliver an envelope (any payload) and return the future of its ack, unawaited."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        assert self.socket is not None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = future
        await self.socket.send_json({"envelope_id": envelope_id, "type": kind,
                                     "payload": payload, "accepts_response_payload": True})
        return future

    def calls_to(self, method: str) -> list[SlackCall]:
        return [call for call in self.calls if call.method == method]

    def homes_of(self, user: str) -> list[dict[str, Any]]:
        """The Home views published for a user, oldest first."""
        views = [c.params["view"] for c in self.calls_to("views.publish")
                 if c.params.get("user_id") == user]
        return [json.loads(v) if isinstance(v, str) else dict(v) for v in views]

    def messages_in(self, channel: str) -> list[dict[str, Any]]:
        return [c.params for c in self.calls_to("chat.postMessage")
                if c.params.get("channel") == channel]

    async def wait_for(self, method: str, match: dict[str, Any] | None = None,
                       contains: str = "", timeout: float = 60.0) -> SlackCall:
        """Wait until a call to `method` whose params match arrives; fail with what came."""
        deadline = time.monotonic() + timeout
        while True:
            for call in self.calls_to(method):
                if all(call.params.get(k) == v for k, v in (match or {}).items()) and (
                    contains in json.dumps(call.params)
                ):
                    return call
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(c.method, c.params.get("text")) for c in self.calls]
                raise AssertionError(f"no {method} {match} {contains!r} within {timeout}s; "
                                     f"saw {seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))


async def serve_forever(host: str, port: int, public_url: str) -> None:
    """The stand-in as a process of its own (the compose check runs it in a container)."""
    server = SlackApiStandIn(host, port, public_url)
    await server.start()
    print(f"slack stand-in on {server.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(serve_forever(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
