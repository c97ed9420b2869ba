"""The host's egress proxy: a run's only way out, through its policy.

A run's container has no network (`--network none`); the sandbox gives it a Unix socket
(`proxy.sock`) that the in-container forwarder exposes as `127.0.0.1:3128`, advertised
as `HTTP_PROXY`/`HTTPS_PROXY`. Behind that socket, this proxy, one server per run
(`EgressProxy.open_run`), on the host's background loop (`runner.host.loop`):

- plain HTTP in absolute form (`GET http://host/path HTTP/1.1`; origin form with a
  `Host` header is read the same way) is forwarded by its host, upstream with
  `Connection: close`, bodies streamed both ways, one request per client connection;
- `CONNECT host:port` opens a tunnel (HTTPS: the TLS session stays end to end, the
  proxy sees only the authority).

Each request's host is checked against the run's `EgressPolicy` first (refused: `403`
with `x-deny-reason: host_not_allowed` and a body naming the host); then the name is
resolved (`resolve`, injectable), EVERY address is checked (`address_refusal`:
loopback, link-local with the cloud metadata address, unspecified, multicast and
reserved are refused whatever the policy, even `full`: `403 address_not_allowed`), and
the proxy connects to a checked address, never to the name, so a second DNS answer
cannot send it elsewhere. Private addresses pass: the name itself was allowed.

Every attempt, allowed or refused, is reported once, when it is over, to the run's
`on_attempt` as an `EgressAttempt`; the sandbox stores it as an `egress` host event.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.egress_policy import (
    EGRESS_EVENT,
    DenyReason,
    EgressPolicy,
    address_refusal,
)
from runner.host.fetch_policy import Resolver, system_resolve
from runner.host.loop import BackgroundLoop
from runner.repo_policy import AddressKind

__all__ = ["EGRESS_EVENT", "AttemptSink", "EgressAttempt", "EgressProxy", "RunProxy"]

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[str, int], Awaitable[Streams]]  # an address and a port -> streams

MAX_HEAD_BYTES = 64 * 1024  # a request's or a response's line and headers
HEAD_TIMEOUT = 30.0  # seconds a client has to send its request's head
MAX_CONNECTIONS = 64  # open client connections per run
CHUNK = 64 * 1024
# Hop-by-hop headers: meant for the proxy, never forwarded (RFC 9110, 7.6.1).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                         "proxy-authenticate", "te", "trailer", "upgrade"})
_REQUEST_LINE = re.compile(r"^([A-Z]{3,16}) (\S+) HTTP/1\.[01]$")
_HOST = re.compile(r"^[a-z0-9._-]{1,253}$|^[0-9a-f:.]{2,45}$")


@dataclass(frozen=True)
class EgressAttempt:
    """One request a run's container made through the proxy, and what became of it.

    `allowed` is the policy's and the address check's decision; an allowed attempt can
    still fail (`error`: the name did not resolve, nothing answered). `status` is what
    the client was answered (the tunnel's 200, the upstream's status, or the refusal's)."""

    run_id: int
    method: str
    host: str
    port: int
    allowed: bool
    reason: DenyReason | None = None
    address: str = ""  # connected to or, with ADDRESS_NOT_ALLOWED, the one refused
    address_kind: AddressKind | None = None  # ADDRESS_NOT_ALLOWED: what that address is
    status: int | None = None
    error: str = ""
    bytes_sent: int = 0  # client -> upstream
    bytes_received: int = 0  # upstream -> client

    def event(self) -> dict[str, Any]:
        """The run-log event: an `egress` host event."""
        return {"type": EGRESS_EVENT, "source": "host", "method": self.method,
                "host": self.host, "port": self.port, "allowed": self.allowed,
                "reason": self.reason.value if self.reason else None,
                "address": self.address,
                "address_kind": self.address_kind.value if self.address_kind else None,
                "status": self.status, "error": self.error, "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received}


AttemptSink = Callable[[EgressAttempt], None]


@dataclass(frozen=True)
class _Request:
    method: str
    host: str  # lower case, no final dot, no brackets
    port: int
    target: str  # HTTP: the origin-form target sent upstream
    headers: tuple[tuple[str, str], ...]

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


class _BadRequest(ValueError):
    pass


@dataclass
class RunProxy:
    """One run's server: its policy, its socket, its open connections."""

    run_id: int
    policy: EgressPolicy
    socket_path: Path
    on_attempt: AttemptSink
    server: asyncio.AbstractServer | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def report(self, attempt: EgressAttempt) -> None:
        try:
            self.on_attempt(attempt)
        except Exception:  # the log sink failing must not take the proxy down
            log.exception("run %s: could not record an egress attempt", self.run_id)


async def _open_connection(address: str, port: int) -> Streams:
    return await asyncio.open_connection(address, port)


class EgressProxy:
    """Per-run proxy servers on one background loop. Whoever builds it closes it."""

    def __init__(self, loop: BackgroundLoop | None = None, resolve: Resolver = system_resolve,
                 connect: Connector = _open_connection, connect_timeout: float = 10.0) -> None:
        self._own_loop = loop is None
        self.loop = loop or BackgroundLoop("routines-egress")
        self.resolve = resolve
        self.connect = connect
        self.connect_timeout = connect_timeout
        self._runs: dict[int, RunProxy] = {}

    def open_run(self, run_id: int, policy: EgressPolicy, socket_path: Path | str,
                 on_attempt: AttemptSink) -> RunProxy:
        """Listen for the run at `socket_path` (replacing a stale socket file there),
        connectable by any user (the container's agent is uid 10001): mode 0666."""
        run = RunProxy(run_id, policy, Path(socket_path), on_attempt)
        self.loop.call(self._start(run))
        self._runs[run_id] = run
        return run

    def close_run(self, run_id: int) -> None:
        """Stop the run's server, end its open connections (each still reported) and
        remove its socket. Closing a run that is not open does nothing."""
        run = self._runs.pop(run_id, None)
        if run is not None:
            self.loop.call(self._stop(run))

    def close(self) -> None:
        for run_id in list(self._runs):
            self.close_run(run_id)
        if self._own_loop:
            self.loop.stop()

    async def _start(self, run: RunProxy) -> None:
        with contextlib.suppress(FileNotFoundError):
            run.socket_path.unlink()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(run, reader, writer)

        run.server = await asyncio.start_unix_server(serve, path=str(run.socket_path))
        os.chmod(run.socket_path, 0o666)  # noqa: S103 - the container's user must connect

    async def _stop(self, run: RunProxy) -> None:
        if run.server is not None:
            run.server.close()
        for task in list(run.tasks):
            task.cancel()
        await asyncio.gather(*run.tasks, return_exceptions=True)
        if run.server is not None:
            await run.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            run.socket_path.unlink()

    async def _serve(self, run: RunProxy, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        run.tasks.add(task)
        try:
            if len(run.tasks) > MAX_CONNECTIONS:
                await _answer(writer, 503, "too many open connections through the proxy\n")
                return
            await self._handle(run, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            run.tasks.discard(task)
            writer.close()

    async def _handle(self, run: RunProxy, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(_read_head(reader), HEAD_TIMEOUT)
        except TimeoutError:
            return
        if head is None:
            return  # connected and left without a request: not an attempt
        try:
            request = _parse_request(head)
        except _BadRequest as exc:
            await _answer(writer, 400, f"routines egress proxy: {exc}\n", DenyReason.BAD_REQUEST)
            run.report(EgressAttempt(run.run_id, head.split(b" ", 1)[0].decode(
                "ascii", "replace")[:16], "", 0, False, DenyReason.BAD_REQUEST, status=400))
            return
        # The attempt as it stands, kept up to date, so that one cut short (the run
        # ended, the client left) is still reported as far as it went.
        state = [EgressAttempt(run.run_id, request.method, request.host, request.port, False)]
        try:
            state[0] = await self._attempt(run, request, reader, writer, state)
        except asyncio.CancelledError:
            state[0] = _with(state[0], error=state[0].error or "closed: the run ended")
            raise
        finally:
            run.report(state[0])

    async def _attempt(self, run: RunProxy, request: _Request, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, state: list[EgressAttempt],
                       ) -> EgressAttempt:
        """Decide, connect and relay; the attempt as it ended (`state[0]` on the way)."""
        attempt = state[0]
        if not run.policy.allows(request.host):
            await _answer(writer, 403, f"routines egress policy: {request.host} is not allowed "
                          f"for this run (network={run.policy.mode.value}).\n",
                          DenyReason.HOST_NOT_ALLOWED)
            return _with(attempt, reason=DenyReason.HOST_NOT_ALLOWED, status=403)
        addresses = await self._addresses(request.host)
        for address in addresses:
            kind = address_refusal(address)
            if kind is not None:
                await _answer(writer, 403, f"routines egress policy: {request.host} resolves "
                              f"to {address}, {kind.phrase}: never allowed.\n",
                              DenyReason.ADDRESS_NOT_ALLOWED)
                return _with(attempt, reason=DenyReason.ADDRESS_NOT_ALLOWED, address=address,
                             address_kind=kind, status=403)
        attempt = state[0] = _with(attempt, allowed=True)
        if not addresses:
            await _answer(writer, 502, f"routines egress proxy: {request.host} could not be "
                          "resolved.\n")
            return _with(attempt, status=502, error="unresolved")
        upstream = await self._connect(addresses, request.port)
        if upstream is None:
            await _answer(writer, 502, f"routines egress proxy: {request.authority} did not "
                          "answer.\n")
            return _with(attempt, status=502, error="unreachable")
        address, (up_reader, up_writer) = upstream
        attempt = state[0] = _with(attempt, address=address)
        counts = [0, 0]
        try:
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                attempt = state[0] = _with(attempt, status=200)
                await _tunnel(reader, writer, up_reader, up_writer, counts)
            else:
                status = await _forward(request, reader, writer, up_reader, up_writer, counts)
                attempt = state[0] = _with(attempt, status=status)
        finally:
            up_writer.close()
            attempt = state[0] = _with(attempt, bytes_sent=counts[0],
                                       bytes_received=counts[1])
        return attempt

    async def _addresses(self, host: str) -> list[str]:
        """The addresses to check and connect to: an address as itself, a name resolved."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            return list(dict.fromkeys(await asyncio.to_thread(self.resolve, host)))
        except (OSError, UnicodeError, ValueError):
            return []

    async def _connect(self, addresses: list[str], port: int) -> tuple[str, Streams] | None:
        for address in addresses:
            try:
                streams = await asyncio.wait_for(self.connect(address, port),
                                                 self.connect_timeout)
            except (OSError, TimeoutError):
                continue
            return address, streams
        return None


def _with(attempt: EgressAttempt, **changes: Any) -> EgressAttempt:
    return EgressAttempt(**{**attempt.__dict__, **changes})


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request's or response's line and headers (without the blank line); None
    when the stream ended before any byte."""
    head = bytearray()
    while True:
        line = await reader.readline()
        if not line:
            if head:
                raise asyncio.IncompleteReadError(bytes(head), None)
            return None
        if line in (b"\r\n", b"\n"):
            if head:
                return bytes(head)
            continue  # blank lines before a request line are allowed (RFC 9112, 2.2)
        head += line
        if len(head) > MAX_HEAD_BYTES:
            raise asyncio.LimitOverrunError("head too long", len(head))


def _parse_request(head: bytes) -> _Request:
    lines = head.decode("latin-1").splitlines()
    match = _REQUEST_LINE.match(lines[0])
    if match is None:
        raise _BadRequest("not an HTTP/1.x request line")
    method, target = match.groups()
    headers = tuple(_header(line) for line in lines[1:])
    if method == "CONNECT":
        host, port = _authority(target, None)
        return _Request(method, host, port, target, headers)
    if target.startswith("/"):  # origin form: the host is in the Host header
        authority = next((v for n, v in headers if n.lower() == "host"), "")
        path = target
    elif target.lower().startswith("http://"):
        rest = target[len("http://"):]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:] or "/"
        path = path if path.startswith("/") else "/" + path
    else:
        raise _BadRequest("only http:// URLs are proxied; use CONNECT for https")
    host, port = _authority(authority.rpartition("@")[2], 80)
    return _Request(method, host, port, path, headers)


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not name or name != name.strip():
        raise _BadRequest("a header line is not `name: value`")
    return name, value.strip()


def _authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """`host[:port]` or `[v6][:port]` into a normal host (lower case, no final dot, no
    brackets) and a port."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon:
            host, port_text = authority, ""
    host = host.lower()
    host = host[:-1] if host.endswith(".") else host
    if not _HOST.match(host):
        raise _BadRequest("not a host name or address")
    if not port_text:
        if default_port is None:
            raise _BadRequest("CONNECT needs host:port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _BadRequest("not a port")
    return host, int(port_text)


async def _answer(writer: asyncio.StreamWriter, status: int, body: str,
                  reason: DenyReason | None = None) -> None:
    """An answer of the proxy's own, closing the connection."""
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway",
              503: "Service Unavailable"}[status]
    data = body.encode()
    deny = f"x-deny-reason: {reason.value}\r\n" if reason else ""
    writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"{deny}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                 + data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _forward(request: _Request, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter, up_reader: asyncio.StreamReader,
                   up_writer: asyncio.StreamWriter, counts: list[int]) -> int | None:
    """Send the request upstream in origin form, then relay the body one way and the
    answer the other (with `Connection: close`: one request per connection)."""
    named = {v.strip().lower() for n, v in request.headers if n.lower() == "connection"
             for v in v.split(",")}
    kept = [(n, v) for n, v in request.headers
            if n.lower() not in _HOP_BY_HOP | named | {"host"}]
    head = "".join(f"{n}: {v}\r\n" for n, v in
                   [("Host", request.authority), *kept, ("Connection", "close")])
    data = f"{request.method} {request.target} HTTP/1.1\r\n{head}\r\n".encode("latin-1")
    up_writer.write(data)
    await up_writer.drain()
    counts[0] += len(data)
    body = asyncio.create_task(_pipe(reader, up_writer, counts, 0))
    try:
        answer = await _read_head(up_reader)
        if answer is None:
            return None
        lines = answer.decode("latin-1").splitlines()
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        kept_lines = [line for line in lines[1:]
                      if line.partition(":")[0].strip().lower() not in _HOP_BY_HOP]
        relayed = "\r\n".join([lines[0], *kept_lines, "Connection: close", "", ""]).encode(
            "latin-1")
        writer.write(relayed)
        counts[1] += len(relayed)
        await writer.drain()
        await _pipe(up_reader, writer, counts, 1, half_close=False)
        return status
    finally:
        body.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await body


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                  counts: list[int]) -> None:
    """Bytes both ways until both sides are done (each end's EOF is passed on)."""
    ways = [asyncio.create_task(_pipe(reader, up_writer, counts, 0)),
            asyncio.create_task(_pipe(up_reader, writer, counts, 1))]
    try:
        await asyncio.gather(*ways)
    finally:
        for way in ways:
            way.cancel()
        await asyncio.gather(*ways, return_exceptions=True)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, counts: list[int],
                index: int, half_close: bool = True) -> None:
    try:
        while data := await src.read(CHUNK):
            counts[index] += len(data)
            dst.write(data)
            await dst.drain()
    except ConnectionError:
        return
    if half_close and dst.can_write_eof():
        with contextlib.suppress(OSError):
            dst.write_eof()
