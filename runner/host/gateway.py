"""The model gateway: the one way a run reaches the Anthropic API, and the host's eyes on it.

A run's container never holds the organisation's API key. It holds a random run token
and reaches this gateway through a Unix socket bind-mounted into it (`SOCKET_DIR`, see
`runner.contract`). The gateway, on the host:

- admits a request only with the token of a live run (its sha256 compared in constant
  time; a run's token dies when it ends, is cancelled or the kill switch engages);
- serves only the Messages API paths the agent needs (`ALLOWED_PATHS`), with no query
  but Claude Code's `?beta=true` (`ALLOWED_QUERIES`), nothing else;
- swaps the token for the real key and forwards to the configured upstream, streaming
  the answer back as it comes (Server-Sent Events included);
- records every call's usage as the run's authoritative usage (a `ModelCall`), and the
  self-report tool call a response holds (the run's engine's: `report_result`, or Claude
  Code's `StructuredOutput`, see `runner.contract.REPORT_TOOLS`) as the run's self-report;
- enforces the run's token budget: a call made once the budget is spent is refused with
  an Anthropic-shaped error, and the run is marked `budget_exceeded`.

Usage and the report are read from the responses the gateway itself relays, never from
anything the container says: a tool in the container can print what it likes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from runner.contract import HOST_SOURCE, REPORT_TOOLS, Engine, Event, Report
from runner.host.loop import BackgroundLoop
from runner.host.unix import listen_unix

DEFAULT_UPSTREAM = "https://api.anthropic.com"
MESSAGES = "/v1/messages"
ALLOWED_PATHS = frozenset({MESSAGES, "/v1/messages/count_tokens"})
METERED_PATHS = frozenset({MESSAGES})  # count_tokens costs nothing
# The query strings admitted: none (the SDK), or the one Claude Code's SDK sends.
ALLOWED_QUERIES = frozenset({"", "beta=true"})
REPORT_TOOL = REPORT_TOOLS[Engine.BUILTIN]
MAX_BODY = 32 * 1024 * 1024
# Never forwarded upstream: the run's credentials (replaced by the key), hop-by-hop
# headers, and what aiohttp computes itself.
_DROP_REQUEST = frozenset({"host", "content-length", "x-api-key", "authorization",
                           "connection", "keep-alive", "proxy-authorization", "proxy-connection",
                           "te", "trailer", "transfer-encoding", "upgrade", "accept-encoding"})
# Never relayed back: aiohttp decodes the body and frames the answer itself.
_DROP_RESPONSE = frozenset({"content-length", "content-encoding", "transfer-encoding",
                            "connection", "keep-alive"})
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)


def new_token() -> str:
    """A run's token: random, worthless outside this gateway and after the run."""
    return "rt-" + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ModelCall:
    """One Messages API call the gateway relayed (or refused), as it saw it."""

    path: str
    model: str
    status: int
    input_tokens: int = 0
    output_tokens: int = 0
    report: Report | None = None
    refused: str | None = None  # why the gateway answered itself instead of the upstream

    def to_event(self) -> Event:
        """The host's `model_call` event for the run's log."""
        event: Event = {"type": "model_call", "source": HOST_SOURCE, "path": self.path,
                        "model": self.model, "status": self.status,
                        "input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.report is not None:
            event["report"] = self.report.to_json()
        if self.refused is not None:
            event["refused"] = self.refused
        return event


class GatewayRun:
    """One run's door: its token (as a hash), its budget, and what it has used so far.

    Written on the gateway's loop, read by the sandbox's follower thread: the counters
    move under a lock so the two always see one consistent total."""

    def __init__(self, run_id: int, token_hash: str, max_tokens: int | None,
                 on_call: Callable[[ModelCall], None], input_tokens: int = 0,
                 output_tokens: int = 0, report: Report | None = None,
                 report_tool: str = REPORT_TOOL) -> None:
        self.run_id = run_id
        self.report_tool = report_tool  # the tool call taken as the self-report
        self.token_hash = token_hash
        self.max_tokens = max_tokens
        self.on_call = on_call
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.report = report
        self.budget_exceeded = False
        self.revoked = False
        self._lock = threading.Lock()

    def admits(self, presented: str) -> bool:
        digest = token_sha256(presented)
        return hmac.compare_digest(digest, self.token_hash) and not self.revoked

    @property
    def spent(self) -> int:
        with self._lock:
            return self.input_tokens + self.output_tokens

    def budget_spent(self) -> bool:
        return self.max_tokens is not None and self.spent >= self.max_tokens

    def record(self, call: ModelCall) -> None:
        with self._lock:
            self.input_tokens += call.input_tokens
            self.output_tokens += call.output_tokens
            if self.report is None:  # the agent ends at the first report
                self.report = call.report
            if call.refused is not None:
                self.budget_exceeded = True
        self.on_call(call)


RUN_KEY = web.AppKey("run", GatewayRun)


class ModelGateway:
    """Serves each run on its own Unix socket, on a background event loop."""

    def __init__(self, loop: BackgroundLoop, upstream: str, api_key: str) -> None:
        self.loop = loop
        self.upstream = (upstream or DEFAULT_UPSTREAM).rstrip("/")
        self.api_key = api_key
        self._runs: dict[int, tuple[GatewayRun, web.AppRunner, Path]] = {}
        self._session: aiohttp.ClientSession | None = None

    def open(self, run: GatewayRun, socket_path: Path) -> None:
        """Start serving `run` on `socket_path` (made connectable by the sandbox user)."""
        self.loop.run(self._open(run, socket_path))

    def revoke(self, run_id: int) -> None:
        """The run's token admits nothing any more (thread-safe, immediate)."""
        entry = self._runs.get(run_id)
        if entry is not None:
            entry[0].revoked = True

    def close(self, run_id: int, revoke: bool = True) -> None:
        """Stop serving a run. `revoke=False` when the bot only stops following it: the
        next bot process opens the same run again (adoption)."""
        if revoke:
            self.revoke(run_id)
        if run_id in self._runs:
            self.loop.run(self._close(run_id))

    def stop(self) -> None:
        """Close every run's socket (and so the upstream session)."""
        for run_id in list(self._runs):
            self.close(run_id, revoke=False)  # the last one closes the upstream session

    async def _open(self, run: GatewayRun, socket_path: Path) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app[RUN_KEY] = run
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        try:
            await web.SockSite(runner, listen_unix(socket_path)).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runs[run.run_id] = (run, runner, socket_path)

    async def _close(self, run_id: int) -> None:
        entry = self._runs.pop(run_id, None)
        if entry is None:
            return
        _, runner, path = entry
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if not self._runs and self._session is not None:  # idle: hold no connections
            session, self._session = self._session, None
            await session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        run = request.app[RUN_KEY]
        if not run.admits(_presented_token(request)):
            return anthropic_error(401, "authentication_error", "invalid run token")
        if (request.method != "POST" or request.path not in ALLOWED_PATHS
                or request.query_string not in ALLOWED_QUERIES):
            return anthropic_error(404, "not_found_error",
                                   f"{request.method} {request.path_qs} is not served here")
        body = await request.read()
        model = _model_of(body)
        if model is None:
            return anthropic_error(400, "invalid_request_error", "the body must be JSON")
        metered = request.path in METERED_PATHS
        if metered and run.budget_spent():
            message = (f"token budget exhausted ({run.spent} of {run.max_tokens} tokens)")
            run.record(ModelCall(request.path, model, 400, refused=message))
            return anthropic_error(400, "invalid_request_error", message)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers["x-api-key"] = self.api_key
        try:
            async with self._client().post(self.upstream + request.path_qs, data=body,
                                           headers=headers) as upstream:
                if not metered:
                    return web.Response(status=upstream.status, body=await upstream.read(),
                                        headers=_relayed(upstream))
                if upstream.content_type == "text/event-stream":
                    return await self._stream(request, run, model, upstream)
                data = await upstream.read()
                run.record(json_call(request.path, model, upstream.status, data,
                                     run.report_tool))
                return web.Response(status=upstream.status, body=data,
                                    headers=_relayed(upstream))
        except (TimeoutError, aiohttp.ClientError):
            if metered:
                run.record(ModelCall(request.path, model, 502))
            return anthropic_error(502, "api_error", "the gateway could not reach the API")

    async def _stream(self, request: web.Request, run: GatewayRun, model: str,
                      upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Relay an SSE answer chunk by chunk. Each chunk goes out once the next one came
        in, so the call is recorded before the client can see the end of its answer."""
        response = web.StreamResponse(status=upstream.status, headers=_relayed(upstream))
        await response.prepare(request)
        meter = SseMeter(run.report_tool)
        held = b""
        try:
            async for chunk in upstream.content.iter_any():
                meter.feed(chunk)
                if held:
                    await response.write(held)
                held = chunk
        finally:
            run.record(meter.call(request.path, model, upstream.status))
        if held:
            await response.write(held)
        await response.write_eof()
        return response

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT, auto_decompress=True)
        return self._session


class SseMeter:
    """Reads a streamed Messages answer as it passes: usage from `message_start` and
    `message_delta`, and the self-report tool call's input from its `input_json_delta`s."""

    def __init__(self, report_tool: str = REPORT_TOOL) -> None:
        self.report_tool = report_tool
        self.input_tokens = 0
        self.output_tokens = 0
        self.report: Report | None = None
        self._buffer = b""
        self._report_index: int | None = None
        self._report_json: list[str] = []

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.startswith(b"data:"):
                with contextlib.suppress(ValueError):
                    data = json.loads(line[5:].strip())
                    if isinstance(data, dict):
                        self._event(data)

    def call(self, path: str, model: str, status: int) -> ModelCall:
        return ModelCall(path, model, status, self.input_tokens, self.output_tokens,
                         self.report)

    def _event(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            self._usage(_dict(_dict(data.get("message")).get("usage")))
        elif kind == "message_delta":
            self._usage(_dict(data.get("usage")))
        elif kind == "content_block_start":
            block = _dict(data.get("content_block"))
            if (block.get("type") == "tool_use" and block.get("name") == self.report_tool
                    and self._report_index is None and self.report is None):
                self._report_index = data.get("index")
        elif kind == "content_block_delta" and data.get("index") == self._report_index:
            delta = _dict(data.get("delta"))
            if delta.get("type") == "input_json_delta":
                self._report_json.append(str(delta.get("partial_json", "")))
        elif kind == "content_block_stop" and data.get("index") == self._report_index:
            raw = "".join(self._report_json) or "{}"
            try:
                self.report = Report.from_input(json.loads(raw))
            except ValueError:
                self.report = Report.from_input({})
            self._report_index = None

    def _usage(self, usage: dict[str, Any]) -> None:
        """`message_delta` usage is cumulative: a value there replaces the start's."""
        if "input_tokens" in usage and usage["input_tokens"] is not None:
            self.input_tokens = _count(usage["input_tokens"])
        if "output_tokens" in usage and usage["output_tokens"] is not None:
            self.output_tokens = _count(usage["output_tokens"])


def json_call(path: str, model: str, status: int, data: bytes,
              report_tool: str = REPORT_TOOL) -> ModelCall:
    """A non-streamed answer's call: usage from its body, and its self-report, if any."""
    try:
        body = json.loads(data)
    except ValueError:
        return ModelCall(path, model, status)
    body = _dict(body)
    usage = _dict(body.get("usage"))
    report = None
    for block in body.get("content") or []:
        block = _dict(block)
        if block.get("type") == "tool_use" and block.get("name") == report_tool:
            report = Report.from_input(block.get("input"))
            break
    return ModelCall(path, model, status, _count(usage.get("input_tokens")),
                     _count(usage.get("output_tokens")), report)


def anthropic_error(status: int, kind: str, message: str) -> web.Response:
    """An error shaped as the Messages API shapes its own (the SDK reads it as such)."""
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}},
                             status=status)


def _presented_token(request: web.Request) -> str:
    key = request.headers.get("x-api-key")
    if key:
        return key
    return request.headers.get("authorization", "").removeprefix("Bearer ").strip()


def _model_of(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return str(value.get("model", "")) if isinstance(value, dict) else None


def _relayed(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in upstream.headers.items()
                       if k.lower() not in _DROP_RESPONSE)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0
