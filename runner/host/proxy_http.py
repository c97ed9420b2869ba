"""The egress proxy's HTTP/1.1 wire: reading a request's head, its own answers,
forwarding one plain-HTTP request upstream, and CONNECT tunnels. No policy here: the
decisions are `runner.host.egress_proxy`'s."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

from runner.egress_policy import DenyReason

MAX_HEAD_BYTES = 64 * 1024  # a request's or a response's line and headers
CHUNK = 64 * 1024
# Hop-by-hop headers: meant for the proxy, never forwarded (RFC 9110, 7.6.1).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                         "proxy-authenticate", "te", "trailer", "upgrade"})
_REQUEST_LINE = re.compile(r"^([A-Z]{3,16}) (\S+) HTTP/1\.[01]$")
_HOST = re.compile(r"^[a-z0-9._-]{1,253}$|^[0-9a-f:.]{2,45}$")


@dataclass(frozen=True)
class ProxyRequest:
    """One request's head, read: the destination in normal form and what to send on."""

    method: str
    host: str  # lower case, no final dot, no brackets
    port: int
    target: str  # HTTP: the origin-form target sent upstream
    headers: tuple[tuple[str, str], ...]

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


class BadRequest(ValueError):
    """Not a proxy request this proxy understands (answered 400 `bad_request`)."""


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
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


def parse_request(head: bytes) -> ProxyRequest:
    lines = head.decode("latin-1").splitlines()
    match = _REQUEST_LINE.match(lines[0])
    if match is None:
        raise BadRequest("not an HTTP/1.x request line")
    method, target = match.groups()
    headers = tuple(_header(line) for line in lines[1:])
    if method == "CONNECT":
        host, port = _authority(target, None)
        return ProxyRequest(method, host, port, target, headers)
    if target.startswith("/"):  # origin form: the host is in the Host header
        authority = next((v for n, v in headers if n.lower() == "host"), "")
        path = target
    elif target.lower().startswith("http://"):
        rest = target[len("http://"):]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:] or "/"
        path = path if path.startswith("/") else "/" + path
    else:
        raise BadRequest("only http:// URLs are proxied; use CONNECT for https")
    host, port = _authority(authority.rpartition("@")[2], 80)
    return ProxyRequest(method, host, port, path, headers)


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not name or name != name.strip():
        raise BadRequest("a header line is not `name: value`")
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
        raise BadRequest("not a host name or address")
    if not port_text:
        if default_port is None:
            raise BadRequest("CONNECT needs host:port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest("not a port")
    return host, int(port_text)


async def answer(writer: asyncio.StreamWriter, status: int, body: str,
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


async def forward(request: ProxyRequest, reader: asyncio.StreamReader,
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
        answer = await read_head(up_reader)
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


async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
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
