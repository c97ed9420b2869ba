"""The model gateway on the host, without a container: the real `anthropic` SDK talks to it
over the run's Unix socket, and it forwards to the Anthropic stand-in on loopback (real
aiohttp both ways, real Server-Sent Events)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from runner.contract import Report
from runner.host.gateway import GatewayRun, ModelCall, ModelGateway, new_token, token_sha256
from runner.host.loop import BackgroundLoop
from tests.standins.anthropic_api import AnthropicStandIn, Turn, report, text, tool
from tests.standins.environment import API_KEY
from tests.support.sandbox_runs import gateway_client


@pytest.fixture
def servers() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop("test-gateway")
    yield loop
    loop.stop()


class Door:
    """One run opened on a gateway, and what the gateway told the sandbox about it."""

    def __init__(self, gateway: ModelGateway, path: Path, max_tokens: int | None = None,
                 run_id: int = 1) -> None:
        self.token = new_token()
        self.calls: list[ModelCall] = []
        self.run = GatewayRun(run_id, token_sha256(self.token), max_tokens, self.calls.append)
        self.path = path
        gateway.open(self.run, path)

    def client(self, token: str | None = None) -> anthropic.AsyncAnthropic:
        return gateway_client(self.path, self.token if token is None else token)


@pytest.fixture
def gateway(servers: BackgroundLoop, anthropic_api: AnthropicStandIn) -> Iterator[ModelGateway]:
    gateway = ModelGateway(servers, anthropic_api.url, API_KEY)
    yield gateway
    gateway.stop()


def conversation(marker: str) -> list[Any]:
    return [{"role": "user", "content": f"Go. {marker}"}]


async def test_a_streamed_answer_passes_through_and_is_metered_from_its_events(
    gateway: ModelGateway, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    marker = anthropic_api.script("sse", Turn(
        [text("All checks pass, reporting now."),
         report("success", "dependencies are current")], usage=(1234, 56)))
    door = Door(gateway, tmp_path / "run-1.sock" / "gateway.sock")
    client = door.client()

    async with client.messages.stream(model="claude-test", max_tokens=500,
                                      messages=conversation(marker)) as stream:
        streamed = [chunk async for chunk in stream.text_stream]
        message = await stream.get_final_message()
    await client.close()

    # SSE passed through: the SDK rebuilt the text from its deltas, the tool call's input
    # from its input_json_deltas, and the usage from message_start and message_delta.
    assert len(streamed) > 1 and "".join(streamed) == "All checks pass, reporting now."
    blocks = [b for b in message.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in blocks] == [
        ("report_result", {"outcome": "success", "summary": "dependencies are current"})]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1234, 56)
    # The gateway read the same from the stream as it passed.
    assert (door.run.input_tokens, door.run.output_tokens) == (1234, 56)
    assert door.run.report == Report("success", "dependencies are current")
    assert [c.to_event() for c in door.calls] == [{
        "type": "model_call", "source": "host", "path": "/v1/messages",
        "model": "claude-test", "status": 200, "input_tokens": 1234, "output_tokens": 56,
        "report": {"outcome": "success", "summary": "dependencies are current"}}]
    # Upstream, the real key replaced the run's token.
    sent = anthropic_api.requests_for("sse")
    assert [r.headers.get("x-api-key") for r in sent] == [API_KEY]
    assert door.token not in repr([r.headers for r in sent])
    assert sent[0].body["stream"] is True


async def test_a_json_answer_is_metered_and_a_report_seen(
    gateway: ModelGateway, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    marker = anthropic_api.script(
        "json", Turn([tool("run_shell", command="ls")], usage=(300, 40)),
        Turn([report("failure", "tests are red")], usage=(400, 50)))
    door = Door(gateway, tmp_path / "s" / "gateway.sock")
    client = door.client()
    first = await client.messages.create(model="claude-test", max_tokens=100,
                                         messages=conversation(marker))
    assert door.run.report is None  # a tool call, but not the report
    await client.messages.create(model="claude-test", max_tokens=100, messages=[
        *conversation(marker), {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "next"}])
    await client.close()

    assert first.content[0].type == "tool_use"
    assert (door.run.input_tokens, door.run.output_tokens) == (700, 90)
    assert door.run.report == Report("failure", "tests are red")


async def test_forged_revoked_and_wrong_paths_are_refused(
    gateway: ModelGateway, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    door = Door(gateway, tmp_path / "a" / "gateway.sock")
    other = Door(gateway, tmp_path / "b" / "gateway.sock", run_id=2)
    message: Any = conversation("")

    for token in ("forged-token", other.token, API_KEY):  # another run's token, the key
        client = door.client(token)
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model="m", max_tokens=5, messages=message)
        await client.close()
    client = door.client()
    for method, path in [("get", "/v1/models"), ("post", "/v1/complete"),
                         ("post", "/v1/messages/batches"), ("get", "/v1/messages")]:
        with pytest.raises(anthropic.NotFoundError) as refused:
            await getattr(client, method)(path, cast_to=object,
                                          **({"body": {"model": "m"}} if method == "post"
                                             else {}))
        assert refused.value.body == {"type": "error", "error": {
            "type": "not_found_error", "message": f"{method.upper()} {path} is not served here"}}
    await client.messages.create(model="m", max_tokens=5, messages=message)  # the door works
    gateway.revoke(1)
    with pytest.raises(anthropic.AuthenticationError):
        await client.messages.create(model="m", max_tokens=5, messages=message)
    await client.close()

    assert len(anthropic_api.requests) == 1  # nothing refused went upstream
    assert [c.status for c in door.calls] == [200]
    gateway.close(1)
    assert not door.path.exists()


async def test_the_call_after_the_budget_is_spent_is_refused(
    gateway: ModelGateway, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    marker = anthropic_api.script("spend", Turn([text("a")], usage=(700, 300)))
    door = Door(gateway, tmp_path / "c" / "gateway.sock", max_tokens=1000)
    client = door.client()
    await client.messages.create(model="m", max_tokens=5, messages=conversation(marker))
    assert door.calls[0].refused is None  # 1000 tokens spent: the budget, not beyond
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(model="m", max_tokens=5, messages=conversation(marker))
    await client.close()

    assert refused.value.body == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "token budget exhausted (1000 of 1000 tokens)"}}
    assert door.run.budget_exceeded
    assert [c.refused for c in door.calls] == [None, refused.value.body["error"]["message"]]
    assert len(anthropic_api.requests_for("spend")) == 1


async def test_an_upstream_error_is_relayed_with_its_status(
    gateway: ModelGateway, anthropic_api: AnthropicStandIn, tmp_path: Path,
) -> None:
    marker = anthropic_api.script("busy", Turn([], status=529))
    door = Door(gateway, tmp_path / "d" / "gateway.sock")
    client = door.client()
    with pytest.raises(anthropic.APIStatusError) as failed:
        await client.messages.create(model="m", max_tokens=5, messages=conversation(marker))
    await client.close()

    assert failed.value.status_code == 529
    assert [(c.status, c.input_tokens) for c in door.calls] == [(529, 0)]


def test_a_socket_path_longer_than_an_address_holds_still_listens(
    servers: BackgroundLoop, tmp_path: Path,
) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 5) / "gateway.sock"
    assert len(str(deep)) > 108
    gateway = ModelGateway(servers, "http://127.0.0.1:9", API_KEY)
    Door(gateway, deep)
    assert deep.is_socket() and oct(deep.stat().st_mode & 0o777) == "0o666"
    gateway.stop()
    assert not deep.exists()
