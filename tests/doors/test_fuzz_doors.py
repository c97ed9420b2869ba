"""Every door holds: whatever a hostile client sends, no answer is a 5xx, a request refused
at the door changes nothing, and the bot still answers afterwards.

Property-based (Hypothesis, shrinking a failure to its smallest input); `FUZZ` in
tests/support/fuzz.py sets the examples per door (`ROUTINES_FUZZ_EXAMPLES` for more).
One bot per test serves all its examples; each example fingerprints the state before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.app import Bot
from bot.core.routine import RoutineDraft
from tests.standins.environment import SIGNING_SECRET
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.fuzz import (
    CONTENT_TYPES,
    FORM_BODIES,
    FUZZ,
    HEADER_TEXT,
    INTERACTIVE,
    JSON_TEXT,
    SHAPED_JSON,
    SLASH_COMMANDS,
    TEXT,
    slash_form,
    stale_timestamp,
    state_fingerprint,
)
from tests.support.http_doors import WEBHOOK_SECRET

pytestmark = [pytest.mark.docker]

OWNER = "U0ALICE01"
# Refused at the door, before any rule was asked: such a request must change nothing.
# (403, 409, 422 and 429 are the rules' answers to an authenticated request; they may audit.)
DOOR_REFUSALS = {400, 401, 404, 405, 408, 413, 415}
DANGEROUS = ["run nightly", "resume nightly", "delete nightly", "killswitch engage now",
             "token nightly stolen", "budget cap 0", 'github nightly "push"', "set nightly x=1"]


@dataclass
class Door:
    """The bot under fuzz, with what a legitimate client would hold."""

    bot: Bot
    slack_api: SlackApiStandIn
    session: aiohttp.ClientSession
    token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.bot.port}"

    async def send(self, method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None) -> int:
        async with self.session.request(method, self.base + path, data=body,
                                        headers=headers or {}) as response:
            await response.read()
            return response.status

    async def slack(self, body: bytes, *, signed: bool = True, timestamp: int | None = None,
                    signature: str | None = None, content_type: str = "") -> int:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(SIGNING_SECRET.encode(), f"v0:{ts}:".encode() + body,
                          hashlib.sha256).hexdigest()
        headers = {"X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": signature if signature is not None else (
                       f"v0={digest}" if signed else "v0=" + "0" * 64)}
        if content_type:
            headers["Content-Type"] = content_type
        return await self.send("POST", "/slack/events", body, headers)

    async def check(self, status_of: Any, *, forged: bool = False,
                    forged_answers: frozenset[int] = frozenset({401})) -> int:
        """Send one request; hold the properties every door keeps."""
        before, calls = state_fingerprint(self.bot), len(self.slack_api.calls)
        status = int(await status_of)
        assert status < 500, f"answered {status}"
        if forged:
            assert status in forged_answers, f"a forged request was answered {status}"
            assert len(self.slack_api.calls) == calls, "a forged request reached Slack's API"
        if status in DOOR_REFUSALS:
            assert state_fingerprint(self.bot) == before, f"a {status} changed the state"
        return status

    async def still_healthy(self) -> None:
        assert await self.send("GET", "/healthz") == 200
        body = slash_form("list", {}).encode()
        assert await self.slack(body, content_type="application/x-www-form-urlencoded") == 200


@pytest.fixture
async def door(start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
               ) -> AsyncIterator[Door]:
    """A bot with one paused routine (so an accepted trigger queues nothing to run), its
    API token and a GitHub subscription: what a forged request would want to reach."""
    bot, _ = await start_bot(http_body_timeout_seconds=5.0)
    services = bot.services
    services.routines.create(RoutineDraft(name="nightly", prompt="Check things.",
                                          repo_url=git_repo, channel_id=RESULTS_CHANNEL),
                             OWNER)
    token = services.tokens.create("nightly", "ci", OWNER)
    services.github.subscribe("nightly", "push", OWNER)
    services.routines.pause("nightly", OWNER)
    async with aiohttp.ClientSession() as session:
        door = Door(bot, slack_api, session, token)
        yield door
        await door.still_healthy()


# --- Slack over HTTP ------------------------------------------------------------------

async def test_the_requests_that_were_500s_are_now_refused_with_a_reason(door: Door) -> None:
    """Found by a hostile client: Bolt parsed before it verified, and a parse error was a 500."""
    unparsable = [b"payload=%%%", b"{", b'payload="x"', b"payload=[1]", b"\xff\xfe",
                  b"payload=" + b"[" * 3000, b'{"team": 5, "user": "x"}']
    for body in unparsable:
        assert await door.slack(body, signed=False) == 401
        assert await door.slack(body) == 400
    assert await door.slack(b'{"type": "nothing"}') == 404  # well formed, nobody's request
    view = json.dumps({"type": "view_submission", "view": {"callback_id": "routine_create"}})
    assert await door.slack(f"payload={view}".encode()) == 400


@FUZZ
@given(body=st.binary(max_size=2048), signed=st.booleans(), content_type=CONTENT_TYPES)
async def test_slack_door_with_arbitrary_bytes(door: Door, body: bytes, signed: bool,
                                               content_type: str) -> None:
    await door.check(door.slack(body, signed=signed, content_type=content_type),
                     forged=not signed)


@FUZZ
@given(body=st.one_of(FORM_BODIES, JSON_TEXT, SLASH_COMMANDS, INTERACTIVE),
       content_type=CONTENT_TYPES)
async def test_slack_door_with_signed_garbage(door: Door, body: str, content_type: str) -> None:
    """Valid signatures over forms, JSON, slash commands and clicks of any shape."""
    await door.check(door.slack(body.encode(), content_type=content_type))


@FUZZ
@given(body=st.one_of(st.sampled_from(DANGEROUS).map(lambda t: slash_form(t, {})),
                      INTERACTIVE, SLASH_COMMANDS),
       forgery=st.sampled_from(["zeros", "other-secret", "stale", "none", "garbage"]),
       garbage=HEADER_TEXT)
async def test_slack_door_refuses_forged_signatures_over_valid_payloads(
    door: Door, body: str, forgery: str, garbage: str,
) -> None:
    raw, ts = body.encode(), int(time.time())
    other = "v0=" + hmac.new(b"not-the-secret", f"v0:{ts}:".encode() + raw,
                             hashlib.sha256).hexdigest()
    sent = {
        "zeros": door.slack(raw, signed=False),
        "other-secret": door.slack(raw, signature=other),
        "stale": door.slack(raw, timestamp=stale_timestamp()),
        "none": door.send("POST", "/slack/events", raw),
        "garbage": door.slack(raw, signature=garbage, timestamp=ts),
    }
    for name, coroutine in sent.items():
        if name == forgery:
            await door.check(coroutine, forged=True)
        else:
            coroutine.close()


# --- the API door ---------------------------------------------------------------------

@FUZZ
@given(name=st.sampled_from(["nightly"]) | TEXT.filter(bool),
       auth=st.sampled_from(["valid", "forged", "none", "scheme"]), forged_token=HEADER_TEXT,
       body=st.binary(max_size=1024) | JSON_TEXT.map(str.encode),
       key=st.none() | HEADER_TEXT, content_type=CONTENT_TYPES,
       route=st.sampled_from(["runs", "pause", "resume", "status"]))
async def test_api_door(door: Door, name: str, auth: str, forged_token: str, body: bytes,
                        key: str | None, content_type: str, route: str) -> None:
    headers = {"Content-Type": content_type}
    if auth == "valid" and route in {"runs", "status"}:  # pause/resume would change it
        headers["Authorization"] = f"Bearer {door.token}"
    elif auth == "forged":
        headers["Authorization"] = f"Bearer {forged_token}"
    elif auth == "scheme":
        headers["Authorization"] = f"Basic {door.token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    quoted = quote(name, safe="")
    path = (f"/api/v1/runs/{quoted}" if route == "status"
            else f"/api/v1/routines/{quoted}/{route}")
    method = "GET" if route == "status" else "POST"
    # A run id that is not a number is no run's, and a name with a brace matches no route
    # (aiohttp's `{name}` is `[^{}/]+`): 404 before any token is looked at, naming nothing.
    answers = frozenset({401, 404} if route == "status" or set(name) & set("{}") else {401})
    status = await door.check(door.send(method, path, body, headers),
                              forged="Authorization" not in headers or auth != "valid",
                              forged_answers=answers)
    assert status != 202, "the routine is paused: nothing may be queued"


# --- the GitHub webhook ---------------------------------------------------------------

@FUZZ
@given(body=st.binary(max_size=1024) | JSON_TEXT.map(str.encode)
       | SHAPED_JSON.map(lambda v: json.dumps({"ref": "refs/heads/main", "x": v}).encode()),
       signed=st.booleans(), signature=HEADER_TEXT,
       event=st.sampled_from(["push", "pull_request", "ping", "issues", "workflow_run", ""])
       | HEADER_TEXT, delivery=HEADER_TEXT)
async def test_github_door(door: Door, body: bytes, signed: bool, signature: str, event: str,
                           delivery: str) -> None:
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
               "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": f"sha256={digest}" if signed else signature}
    forged = not signed and not hmac.compare_digest(signature.encode(),
                                                    f"sha256={digest}".encode())
    await door.check(door.send("POST", "/github/webhook", body, headers), forged=forged)


# --- the ops endpoints and any other path ---------------------------------------------

@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
       path=st.sampled_from(["/healthz", "/readyz", "/metrics", "/slack/events",
                             "/github/webhook", "/api/v1/routines/nightly/runs",
                             "/api/v1/runs/1", "/"]),
       suffix=st.sampled_from(["", "/", "?", "?a=%%", "/..%2f", "?x=" + "y" * 500])
       | HEADER_TEXT.map(lambda t: "?" + t.replace("#", "")),
       headers=st.dictionaries(st.sampled_from(
           ["Accept", "X-Forwarded-For", "Authorization", "Content-Type", "X-Custom",
            "Range", "Accept-Encoding", "If-None-Match"]), HEADER_TEXT, max_size=4),
       body=st.binary(max_size=256))
async def test_ops_and_unknown_paths(door: Door, method: str, path: str, suffix: str,
                                     headers: dict[str, str], body: bytes) -> None:
    """Nothing here holds a credential: whatever the answer, the state is unchanged."""
    before = state_fingerprint(door.bot)
    await door.check(door.send(method, path + suffix, body if method != "HEAD" else b"",
                               headers))
    assert state_fingerprint(door.bot) == before


@FUZZ
@given(raw=st.binary(max_size=512)
       | st.tuples(st.sampled_from([b"GET", b"POST", b"\x00", b"PRI"]), st.binary(max_size=64),
                   st.sampled_from([b" /healthz HTTP/1.1\r\n", b" /slack/events HTTP/1.0\r\n",
                                    b" * HTTP/9.9\r\n", b"\r\n"]),
                   st.binary(max_size=128)).map(b"".join))
async def test_raw_bytes_on_the_socket(door: Door, raw: bytes) -> None:
    """Not even HTTP: whatever comes back is not a 5xx, and the connection ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", door.bot.port)
    try:
        writer.write(raw)
        await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    if answer.startswith(b"HTTP/"):
        assert not answer.split(b" ", 2)[1].startswith(b"5"), answer[:200]


# --- slow and half-open clients -------------------------------------------------------

async def closed_by_the_server(port: int, sent: bytes) -> bytes:
    """Send `sent`, never the rest; return what the server answered before it hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 60)  # EOF: the server closed it
    finally:
        writer.close()


async def test_slow_and_half_open_clients_are_let_go(start_bot: BotFactory) -> None:
    bot, _ = await start_bot(http_header_timeout_seconds=0.5, http_body_timeout_seconds=0.5)
    port = bot.port

    silent = await closed_by_the_server(port, b"")
    half_headers = await closed_by_the_server(
        port, b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nContent-Le")
    half_bodies = {path: await closed_by_the_server(port, (
        f"POST {path} HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{\"a\": ").encode())
        for path in ("/slack/events", "/github/webhook")}

    assert silent == b"" and half_headers == b""
    for path, answer in half_bodies.items():
        assert answer.startswith(b"HTTP/1.1 408 "), (path, answer[:100])
        assert b'"error": "body_timeout"' in answer
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/healthz") as response:
        assert response.status == 200


# --- Socket Mode ----------------------------------------------------------------------

SOCKET_KINDS = st.sampled_from(["slash_commands", "interactive", "events_api", "hello"]) | TEXT


@FUZZ
@given(raw=st.one_of(TEXT, JSON_TEXT, SHAPED_JSON.map(json.dumps)),
       kind=SOCKET_KINDS.filter(lambda k: k != "disconnect"),
       payload=st.one_of(SHAPED_JSON, st.builds(
           lambda text, extra: {"command": "/routine", "text": text, **extra}, TEXT,
           st.dictionaries(st.sampled_from(["user_id", "channel_id", "trigger_id"]),
                           SHAPED_JSON, max_size=2)),
           INTERACTIVE.map(lambda form: json.loads(
               unquote_plus(form[len("payload="):])))))
async def test_socket_mode_envelopes(socket_bot: SlackApiStandIn, raw: str, kind: str,
                                     payload: Any) -> None:
    """Garbage frames are ignored and garbage envelopes acknowledged; the loop lives on."""
    if '"disconnect"' not in raw:
        await socket_bot.send_raw(raw)
    number = next(ENVELOPES)
    acked = await socket_bot.send_unanswered(kind, payload, f"fuzz-{number}")
    ack = await asyncio.wait_for(acked, 30)
    assert ack["envelope_id"] == f"fuzz-{number}"
    probe = await socket_bot.send_envelope("slash_commands",
                                           dict(parse_qsl(slash_form("list", {}))))
    assert probe["payload"]["response_type"] == "ephemeral"


ENVELOPES = iter(range(1, 10**9))


@pytest.fixture
async def socket_bot(start_bot: BotFactory, slack_api: SlackApiStandIn,
                     ) -> AsyncIterator[SlackApiStandIn]:
    bot, _ = await start_bot(slack_app_token="xapp-1-test-app-token-0000")
    yield slack_api
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bot.port}/healthz") as response:
        assert response.status == 200


async def test_without_a_signing_secret_the_http_door_refuses_everything(
    start_bot: BotFactory,
) -> None:
    """A Socket Mode install needs no signing secret; its HTTP door then trusts nothing
    (Bolt, told not to verify in Socket Mode, would have run an unsigned command)."""
    _, fake = await start_bot(slack_app_token="xapp-1-test-app-token-0000",
                                slack_signing_secret="")
    body = slash_form("run nightly", {})
    unsigned = await fake.post(body, signature="v0=")
    signed_with_empty_secret = await fake.post(body, signature="v0=" + hmac.new(
        b"", f"v0:{int(time.time())}:{body}".encode(), hashlib.sha256).hexdigest())

    assert (unsigned.status, signed_with_empty_secret.status) == (401, 401)
    assert json.loads(unsigned.text)["error"] == "bad_signature"
