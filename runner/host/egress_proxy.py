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
`on_attempt` as an `EgressAttempt`; the sandbox stores it as an `egress` host event. The
HTTP wire itself (heads, forwarding, tunnels) is `runner.host.proxy_http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
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
from runner.host.proxy_http import (
    BadRequest,
    ProxyRequest,
    answer,
    forward,
    parse_request,
    read_head,
    tunnel,
)
from runner.host.unix import listen_unix
from runner.repo_policy import AddressKind

__all__ = ["EGRESS_EVENT", "AttemptSink", "EgressAttempt", "EgressProxy", "RunProxy"]

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[str, int], Awaitable[Streams]]  # an address and a port -> streams

HEAD_TIMEOUT = 30.0  # seconds a client has to send its request's head
MAX_CONNECTIONS = 64  # open client connections per run

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
        connectable by any user (the container's agent is uid 10001): mode 0666. Opening
        a run already open closes it first (an adopted run gets a fresh server)."""
        self.close_run(run_id)
        run = RunProxy(run_id, policy, Path(socket_path), on_attempt)
        self.loop.run(self._start(run))
        self._runs[run_id] = run
        return run

    def close_run(self, run_id: int) -> None:
        """Stop the run's server, end its open connections (each still reported) and
        remove its socket. Closing a run that is not open does nothing."""
        run = self._runs.pop(run_id, None)
        if run is not None:
            self.loop.run(self._stop(run))

    def close(self) -> None:
        for run_id in list(self._runs):
            self.close_run(run_id)
        if self._own_loop:
            self.loop.stop()

    async def _start(self, run: RunProxy) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(run, reader, writer)

        # Connectable by the container's user (mode 0666), at a path of any length.
        run.server = await asyncio.start_unix_server(serve, sock=listen_unix(run.socket_path))

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
                await answer(writer, 503, "too many open connections through the proxy\n")
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
            head = await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT)
        except TimeoutError:
            return
        if head is None:
            return  # connected and left without a request: not an attempt
        try:
            request = parse_request(head)
        except BadRequest as exc:
            await answer(writer, 400, f"routines egress proxy: {exc}\n", DenyReason.BAD_REQUEST)
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

    async def _attempt(self, run: RunProxy, request: ProxyRequest, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, state: list[EgressAttempt],
                       ) -> EgressAttempt:
        """Decide, connect and relay; the attempt as it ended (`state[0]` on the way)."""
        attempt = state[0]
        if not run.policy.allows(request.host):
            await answer(writer, 403, f"routines egress policy: {request.host} is not allowed "
                          f"for this run (network={run.policy.mode.value}).\n",
                          DenyReason.HOST_NOT_ALLOWED)
            return _with(attempt, reason=DenyReason.HOST_NOT_ALLOWED, status=403)
        addresses = await self._addresses(request.host)
        for address in addresses:
            kind = address_refusal(address)
            if kind is not None:
                await answer(writer, 403, f"routines egress policy: {request.host} resolves "
                              f"to {address}, {kind.phrase}: never allowed.\n",
                              DenyReason.ADDRESS_NOT_ALLOWED)
                return _with(attempt, reason=DenyReason.ADDRESS_NOT_ALLOWED, address=address,
                             address_kind=kind, status=403)
        attempt = state[0] = _with(attempt, allowed=True)
        if not addresses:
            await answer(writer, 502, f"routines egress proxy: {request.host} could not be "
                          "resolved.\n")
            return _with(attempt, status=502, error="unresolved")
        upstream = await self._connect(addresses, request.port)
        if upstream is None:
            await answer(writer, 502, f"routines egress proxy: {request.authority} did not "
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
                await tunnel(reader, writer, up_reader, up_writer, counts)
            else:
                status = await forward(request, reader, writer, up_reader, up_writer, counts)
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
