"""An Anthropic Messages API stand-in that serves scripted tool-use turns.

It listens on loopback: the host's model gateway (`runner.host.gateway`) reaches it, as
it reaches the real API, on behalf of the real `anthropic` SDK inside the real sandbox
container (which has no network). A scenario is chosen by a marker in the routine's
prompt, `[[scenario:NAME]]`; the turn served is the number of assistant turns already in
the conversation. `"stream": true` is answered as the Messages API streams: Server-Sent
Events from `message_start` to `message_stop`, a tool call's input as `input_json_delta`s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Block = dict[str, Any]
MARKER = re.compile(r"\[\[scenario:([\w-]+)\]\]")


@dataclass
class Turn:
    content: list[Block]
    delay: float = 0.0
    status: int = 200  # answered instead of `content`: an API error (500, 529 overloaded...)
    failures: int | None = None  # only the first N requests get `status` (None: all)
    usage: tuple[int, int] | None = None  # (input, output); default 100+N, 20+N on turn N


@dataclass
class Recorded:
    scenario: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


def tool(name: str, **args: Any) -> Block:
    return {"type": "tool_use", "name": name, "input": args}


def text(value: str) -> Block:
    return {"type": "text", "text": value}


def report(outcome: str, summary: str) -> Block:
    return tool("report_result", outcome=outcome, summary=summary)


class AnthropicStandIn:
    def __init__(self, api_key: str, host: str = "127.0.0.1") -> None:
        self.host = host
        self.api_key = api_key
        self.scenarios: dict[str, list[Turn]] = {}
        self.requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self._served: dict[tuple[str, int], int] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, name: str, *turns: Turn | list[Block]) -> str:
        """Register a scenario; returns the marker to put in a prompt."""
        self.scenarios[name] = [t if isinstance(t, Turn) else Turn(t) for t in turns]
        return f"[[scenario:{name}]]"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def requests_for(self, scenario: str) -> list[Recorded]:
        return [r for r in self.requests if r.scenario == scenario]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if self.api_key not in {request.headers.get("x-api-key"),
                                request.headers.get("authorization", "").removeprefix("Bearer ")}:
            return web.json_response({"type": "error", "error": {
                "type": "authentication_error", "message": "invalid x-api-key"}}, status=401)
        body = await request.json()
        scenario = _scenario_of(body)
        self.requests.append(Recorded(scenario, body, dict(request.headers)))
        turn_index = sum(1 for m in body["messages"] if m["role"] == "assistant")
        script = self.scenarios.get(scenario, [])
        turn = script[turn_index] if turn_index < len(script) else Turn([text("(no script)")])
        if turn.delay:
            await asyncio.sleep(turn.delay)
        served = self._served[scenario, turn_index] = self._served.get(
            (scenario, turn_index), 0) + 1
        if turn.status != 200 and (turn.failures is None or served <= turn.failures):
            return web.json_response({"type": "error", "error": {
                "type": "overloaded_error" if turn.status == 529 else "api_error",
                "message": "scripted failure"}}, status=turn.status)
        content = [dict(b, id=f"toolu_{next(self._ids):04d}") if b["type"] == "tool_use" else b
                   for b in turn.content]
        stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        usage = turn.usage or (100 + turn_index, 20 + turn_index)
        message = {
            "id": f"msg_{next(self._ids):06d}", "type": "message", "role": "assistant",
            "model": body.get("model"), "content": content, "stop_reason": stop,
            "stop_sequence": None, "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }
        if body.get("stream"):
            return await _stream(request, message)
        return web.json_response(message)


async def _stream(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
    """The message as the API streams it, one event per write (so it really is chunked)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    for name, data in stream_events(message):
        await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
    await response.write_eof()
    return response


def stream_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Messages API's event sequence for `message` (usage: input at the start,
    output so far at the start and final in `message_delta`)."""
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None,
                 usage={"input_tokens": usage["input_tokens"], "output_tokens": 1})
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}), ("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            opening = dict(block, input={})
            raw = json.dumps(block["input"])
            pieces = [raw[i:i + 7] for i in range(0, len(raw), 7)]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces]]
        else:
            opening = {"type": "text", "text": ""}
            words = block["text"].split(" ")
            deltas = [{"type": "text_delta", "text": w if i == 0 else " " + w}
                      for i, w in enumerate(words)]
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": opening}))
        events.extend(("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": d}) for d in deltas)
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _scenario_of(body: dict[str, Any]) -> str:
    first = body["messages"][0]["content"]
    first_text = first if isinstance(first, str) else " ".join(
        b.get("text", "") for b in first if isinstance(b, dict))
    match = MARKER.search(first_text)
    return match.group(1) if match else ""


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every tool_result block the agent sent back in this request."""
    found: list[dict[str, Any]] = []
    for message in body["messages"]:
        if message["role"] == "user" and isinstance(message["content"], list):
            found.extend(b for b in message["content"] if b.get("type") == "tool_result")
    return found
