"""The agent's tool output, pure: a long output is cut to the limit with a note of how much."""

from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

from runner.contract import api_status_code
from runner.inside import agent


def test_long_output_is_truncated_with_a_note() -> None:
    text = agent.truncate("x" * 20_000, limit=100)
    assert text.startswith("x" * 100) and "truncated 19900 characters" in text


REQUEST = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")


@pytest.mark.parametrize(("error", "code", "summary"), [
    (anthropic.OverloadedError("Error code: 529 - overloaded", body=None,
                               response=httpx2.Response(529, request=REQUEST)), 529,
     "Anthropic API error: OverloadedError: Error code: 529 - overloaded"),
    (anthropic.AuthenticationError("Error code: 401 - invalid x-api-key", body=None,
                                   response=httpx2.Response(401, request=REQUEST)), 401,
     "Anthropic API error: AuthenticationError: Error code: 401 - invalid x-api-key"),
    (anthropic.APIConnectionError(request=REQUEST), None,
     "Anthropic API error: APIConnectionError: Connection error."),
])
def test_an_api_error_result_carries_the_http_status_as_data(
    error: anthropic.APIError, code: int | None, summary: str,
) -> None:
    event = agent.api_error_result(error)
    assert event == {"type": "result", "kind": "api_error", "status_code": code,
                     "summary": summary}
    assert api_status_code(json.loads(json.dumps(event))) == code  # as the host reads it


class FlakyMessages:
    """A client's `messages` whose first calls find no gateway (the bot restarting)."""

    def __init__(self, failures: list[anthropic.APIError]) -> None:
        self.failures = failures
        self.calls = 0

    def create(self, **request: object) -> dict[str, object]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"answered": request}


class FlakyClient:
    def __init__(self, failures: list[anthropic.APIError]) -> None:
        self.messages = FlakyMessages(failures)


class SteppedClock:
    """The agent module's `time`: each reading ten seconds after the last; no sleep waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 10.0
        return self.now

    def sleep(self, _: float) -> None:
        pass


def test_a_model_call_waits_for_a_restarting_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runner.inside.agent.time", SteppedClock())
    client = FlakyClient([anthropic.APIConnectionError(request=REQUEST)] * 3)

    answer = agent.create_message(client, model="m")  # type: ignore[arg-type]

    assert answer == {"answered": {"model": "m"}} and client.messages.calls == 4


def test_a_gateway_gone_for_good_or_a_timeout_still_fails_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("runner.inside.agent.time", SteppedClock())
    gone = FlakyClient([anthropic.APIConnectionError(request=REQUEST)] * 1000)
    with pytest.raises(anthropic.APIConnectionError):
        agent.create_message(gone, model="m")  # type: ignore[arg-type]
    assert 1 < gone.messages.calls < 1000  # asked again until GATEWAY_RETURN_SECONDS passed

    timed_out = FlakyClient([anthropic.APITimeoutError(request=REQUEST)])
    with pytest.raises(anthropic.APITimeoutError):
        agent.create_message(timed_out, model="m")  # type: ignore[arg-type]
    assert timed_out.messages.calls == 1  # that call may have been forwarded: not resent
