"""The model gateway for a claude-code run: the query Claude Code's SDK sends is admitted and
no other, and the self-report it observes is the run's engine's own tool call
(`StructuredOutput` for Claude Code, `report_result` for the built-in agent), never the
other's. Real SDK over the run's Unix socket, real aiohttp, the stand-in upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from runner.contract import Engine, Report, report_tool
from runner.host.gateway import GatewayRun, ModelCall, ModelGateway, new_token, token_sha256
from runner.host.loop import BackgroundLoop
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.environment import API_KEY
from tests.support.sandbox_runs import gateway_client


@pytest.fixture
def gateway(anthropic_api: AnthropicStandIn) -> Iterator[ModelGateway]:
    loop = BackgroundLoop("test-cc-gateway")
    gateway = ModelGateway(loop, anthropic_api.url, API_KEY)
    yield gateway
    gateway.stop()
    loop.stop()


def door(gateway: ModelGateway, path: Path, engine: Engine,
         run_id: int = 1) -> tuple[GatewayRun, list[ModelCall], anthropic.AsyncAnthropic]:
    token = new_token()
    calls: list[ModelCall] = []
    run = GatewayRun(run_id, token_sha256(token), None, calls.append,
                     report_tool=report_tool(engine.value))
    gateway.open(run, path)
    return run, calls, gateway_client(path, token)


def conversation(marker: str) -> list[Any]:
    return [{"role": "user", "content": f"Go. {marker}"}]


async def test_only_claude_codes_beta_query_is_admitted(
    gateway: ModelGateway, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    _, calls, client = door(gateway, tmp_path / "gateway.sock", Engine.CLAUDE_CODE)
    marker = anthropic_api.script("beta", [tool("Bash", command="true")])

    answer = await client.beta.messages.create(model="m", max_tokens=5,
                                               messages=conversation(marker))
    assert answer.content[0].type == "tool_use"
    assert anthropic_api.requests_for("beta")  # went upstream, `?beta=true` and all
    for query in ("beta=false", "beta=true&x=1", "x=1"):
        with pytest.raises(anthropic.NotFoundError) as refused:
            await client.post(f"/v1/messages?{query}", cast_to=object,
                              body={"model": "m", "max_tokens": 5,
                                    "messages": conversation(marker)})
        assert refused.value.body == {"type": "error", "error": {
            "type": "not_found_error",
            "message": f"POST /v1/messages?{query} is not served here"}}
    await client.close()
    assert len(anthropic_api.requests_for("beta")) == 1
    assert [c.status for c in calls] == [200]


@pytest.mark.parametrize("stream", [True, False])
async def test_the_report_is_the_engines_own_tool_call(
    gateway: ModelGateway, anthropic_api: AnthropicStandIn, tmp_path: Path, stream: bool,
) -> None:
    marker = anthropic_api.script(
        "both", [report("success", "built-in words"),
                 tool("StructuredOutput", outcome="success", summary="claude code words")])
    claude, _, claude_client = door(gateway, tmp_path / "a" / "gateway.sock",
                                    Engine.CLAUDE_CODE)
    builtin, _, builtin_client = door(gateway, tmp_path / "b" / "gateway.sock",
                                      Engine.BUILTIN, run_id=2)

    for client in (claude_client, builtin_client):
        if stream:
            async with client.messages.stream(model="m", max_tokens=5,
                                              messages=conversation(marker)) as answer:
                await answer.get_final_message()
        else:
            await client.messages.create(model="m", max_tokens=5,
                                         messages=conversation(marker))
        await client.close()

    assert claude.report == Report("success", "claude code words")
    assert builtin.report == Report("success", "built-in words")
