"""What every HTTP door does before it believes a byte: bound the body, time its read, check
the signature on the raw bytes, and answer a refusal as a short JSON reason.

A refusal is raised as `Refused` anywhere in a handler and answered by the `refusals`
middleware, so a door reads top to bottom as its checks, in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

SLACK_MAX_SKEW_SECONDS = 5 * 60  # Slack's own replay window


class Refused(Exception):
    """A request answered with a 4xx (or a deliberate 5xx) and a short reason."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def refusal_body(status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=headers)


@web.middleware
async def refusals(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                   ) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as refused:
        response = refusal_body(refused.status, refused.code, refused.message, refused.headers)
        if refused.status == 408:
            response.force_close()  # the rest of a stalled body is not waited for
        return response


async def read_body(request: web.Request, limit: int, within: float) -> bytes:
    """The whole body, at most `limit` bytes (refused before reading when the declared
    length is over), read within `within` seconds so a client that stalls mid-body is let go."""
    if request.content_length is not None and request.content_length > limit:
        raise Refused(413, "too_large", f"body over the {limit}-byte limit")
    if request.content.is_eof():  # all of it has arrived: nothing to wait for or to time
        body = request.content.read_nowait(limit + 1)
    else:
        try:
            async with asyncio.timeout(within):
                body = await _read_up_to(request, limit + 1)
        except TimeoutError:
            raise Refused(408, "body_timeout",
                          f"body not received within {within:g}s") from None
    if len(body) > limit:
        raise Refused(413, "too_large", f"body over the {limit}-byte limit")
    return body


async def _read_up_to(request: web.Request, most: int) -> bytes:
    """Until the end of the body or `most` bytes: one `read(n)` returns what has arrived so
    far, which for a body sent in pieces is only its first piece."""
    chunks: list[bytes] = []
    size = 0
    while size < most:
        chunk = await request.content.read(most - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def slack_signature_valid(secret: str, body: bytes, timestamp: str | None,
                          signature: str | None, now: float | None = None) -> bool:
    """Slack's `v0` scheme checked on the raw bytes: HMAC-SHA256 of `v0:{ts}:{body}`.

    slack_sdk's SignatureVerifier decodes the body and parses the timestamp first, so a
    forged request with non-UTF-8 bytes, a non-numeric timestamp or a non-ASCII signature
    raises instead of being refused; here every such request is simply not valid."""
    if not secret or not timestamp or not signature:
        return False
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > SLACK_MAX_SKEW_SECONDS:
        return False
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body,
                      hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"v0={digest}".encode(),
                               signature.encode("utf-8", "surrogateescape"))
