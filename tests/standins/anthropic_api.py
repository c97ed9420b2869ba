"""An Anthropic Messages API stand-in that serves scripted tool-use turns.

It listens on the gateway address of the project's own docker network, so the real
`anthropic` SDK inside the real sandbox container reaches it. A scenario is chosen by
a marker in the routine's prompt, `[[scenario:NAME]]`; the turn served is the number
of assistant turns already in the conversation.
"""

from __future__ import annotations

import asyncio
import itertools
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
    def __init__(self, host: str, api_key: str) -> None:
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

    async def _messages(self, request: web.Request) -> web.Response:
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
        return web.json_response({
            "id": f"msg_{next(self._ids):06d}", "type": "message", "role": "assistant",
            "model": body.get("model"), "content": content, "stop_reason": stop,
            "stop_sequence": None, "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        })


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
