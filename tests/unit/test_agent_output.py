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
