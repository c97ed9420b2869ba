"""Unit tests of the pure core of alerts and retries: the retry decision, policy parsing
and bounds, token-shape redaction, and what is cut before storage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from bot.core.redaction import MASK, Redactor
from bot.core.retry import (
    RetryLimits,
    RetryPolicy,
    decide_retry,
    parse_policy,
    policy_of,
    validate_policy,
)
from bot.core.run_log import clip_event
from bot.core.statuses import FailureKind, RunStatus
from bot.doors.slack import commands
from bot.errors import ValidationFailed
from bot.store.tables import Routine

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
# What `decide_outcome` makes of each: the decision reads the kind, never the reason.
OVERLOADED = FailureKind.API_UNAVAILABLE  # 529
SERVER = FailureKind.API_UNAVAILABLE  # 500
AUTH = FailureKind.API_REFUSED  # 401
RATE = FailureKind.API_UNAVAILABLE  # 429
CONNECTION = FailureKind.API_UNAVAILABLE  # no answer
IMAGE = FailureKind.INFRASTRUCTURE  # sandbox image not found
REPORTED = FailureKind.REPORTED_FAILURE  # "3 tests fail"
TIMED_OUT = FailureKind.TIMED_OUT
THREE_30 = RetryPolicy(attempts=2, backoff_seconds=30)
AGENT = RetryPolicy(attempts=2, backoff_seconds=30, agent_failures=True)


@pytest.mark.parametrize(("policy", "status", "attempt", "failure", "retry", "delay", "why"), [
    # infrastructure faults: retried with the backoff doubling at each attempt
    (THREE_30, RunStatus.ERROR, 1, IMAGE, True, 30, "retrying in 30s (attempt 2 of 3)"),
    (THREE_30, RunStatus.ERROR, 2, OVERLOADED, True, 60, "retrying in 60s (attempt 3 of 3)"),
    (THREE_30, RunStatus.ERROR, 3, SERVER, False, 0, "no attempts left (3 of 3)"),
    (THREE_30, RunStatus.ERROR, 1, RATE, True, 30, "retrying in 30s (attempt 2 of 3)"),
    (THREE_30, RunStatus.ERROR, 1, CONNECTION, True, 30, "retrying in 30s (attempt 2 of 3)"),
    (THREE_30, RunStatus.ERROR, 1, None, True, 30, "retrying in 30s (attempt 2 of 3)"),
    (RetryPolicy(5, 3600), RunStatus.ERROR, 5, IMAGE, True, 57600,
     "retrying in 57600s (attempt 6 of 6)"),
    # a client error is not transient
    (THREE_30, RunStatus.ERROR, 1, AUTH, False, 0,
     "the Anthropic API refused the request (not transient)"),
    # no policy: nothing is retried
    (RetryPolicy(), RunStatus.ERROR, 1, IMAGE, False, 0, "no attempts left (1 of 1)"),
    # what the agent is answerable for: only when the routine asks
    (THREE_30, RunStatus.FAILED, 1, REPORTED, False, 0,
     "agent failures are not retried by this routine"),
    (THREE_30, RunStatus.TIMED_OUT, 1, TIMED_OUT, False, 0,
     "agent failures are not retried by this routine"),
    (AGENT, RunStatus.FAILED, 1, REPORTED, True, 30, "retrying in 30s (attempt 2 of 3)"),
    (AGENT, RunStatus.TIMED_OUT, 2, TIMED_OUT, True, 60, "retrying in 60s (attempt 3 of 3)"),
    (AGENT, RunStatus.FAILED, 3, REPORTED, False, 0, "no attempts left (3 of 3)"),
    (AGENT, RunStatus.FAILED, 1, FailureKind.KILLED, False, 0, "killed: never retried"),
    # not failures at all
    (AGENT, RunStatus.SUCCEEDED, 1, None, False, 0, "succeeded: nothing to retry"),
    (AGENT, RunStatus.KILLED, 1, None, False, 0, "killed: nothing to retry"),
    (AGENT, RunStatus.CANCELLED, 1, None, False, 0, "cancelled: nothing to retry"),
    (AGENT, RunStatus.REJECTED, 1, None, False, 0, "rejected: nothing to retry"),
])
def test_retry_decisions(policy: RetryPolicy, status: RunStatus, attempt: int,
                         failure: FailureKind | None, retry: bool, delay: int, why: str) -> None:
    decision = decide_retry(policy, status, attempt, failure, NOW)
    assert (decision.retry, decision.delay_seconds, decision.why) == (retry, delay, why)
    if retry:
        assert decision.attempt == attempt + 1
        assert decision.of_attempts == policy.attempts + 1
        assert decision.not_before == NOW + timedelta(seconds=delay)
    else:
        assert decision.not_before is None


INFRA_FAULTS = (FailureKind.INFRASTRUCTURE, FailureKind.API_UNAVAILABLE)
AGENTS_OWN = (FailureKind.NO_SELF_REPORT, FailureKind.REPORTED_FAILURE,
              FailureKind.SETUP_FAILED, FailureKind.TURN_LIMIT, FailureKind.TOKEN_BUDGET,
              FailureKind.DISK_LIMIT, FailureKind.TIMED_OUT, FailureKind.INTERRUPTED)
NEVER = {FailureKind.API_REFUSED: "the Anthropic API refused the request (not transient)",
         FailureKind.KILLED: "killed: never retried",
         FailureKind.CANCELLED: "cancelled: never retried"}
RETRYING = "retrying in 30s (attempt 2 of 3)"
AGENT_NOT = "agent failures are not retried by this routine"


def test_every_kind_has_its_retry_rule() -> None:
    assert {*INFRA_FAULTS, *AGENTS_OWN, *NEVER} == set(FailureKind)


@pytest.mark.parametrize(("failure", "status", "plain", "with_agent"), [
    *[(kind, RunStatus.ERROR, RETRYING, RETRYING) for kind in INFRA_FAULTS],
    *[(kind, RunStatus.FAILED, AGENT_NOT, RETRYING) for kind in AGENTS_OWN],
    *[(kind, RunStatus.ERROR, why, why) for kind, why in NEVER.items()],
    # without a kind (a run stored before kinds), the status decides
    (None, RunStatus.ERROR, RETRYING, RETRYING),
    (None, RunStatus.FAILED, AGENT_NOT, RETRYING),
    (None, RunStatus.TIMED_OUT, AGENT_NOT, RETRYING),
])
def test_retry_decisions_by_kind(failure: FailureKind | None, status: RunStatus, plain: str,
                                 with_agent: str) -> None:
    assert decide_retry(THREE_30, status, 1, failure, NOW).why == plain
    assert decide_retry(AGENT, status, 1, failure, NOW).why == with_agent


@pytest.mark.parametrize("failure", list(FailureKind))
def test_the_kind_decides_not_the_status(failure: FailureKind) -> None:
    # A kind the agent is answerable for is not retried as an infrastructure fault just
    # because the status says `error`, and the other way round.
    by_error = decide_retry(THREE_30, RunStatus.ERROR, 1, failure, NOW)
    by_failed = decide_retry(THREE_30, RunStatus.FAILED, 1, failure, NOW)
    assert by_error == by_failed
    assert by_error.retry is (failure in INFRA_FAULTS)


def test_policy_of_reads_any_routine_like_value() -> None:
    @dataclass(frozen=True)
    class Settings:
        retry_attempts: int = 3
        retry_backoff_seconds: int = 60
        retry_agent_failures: bool = True

    assert policy_of(Settings()) == RetryPolicy(3, 60, True)
    table = Routine(name="r", prompt="p", repo_url="u", channel_id="C", model="m",
                    timeout_seconds=60, max_turns=5, created_by="U", retry_attempts=2)
    assert policy_of(table) == RetryPolicy(2)


@pytest.mark.parametrize(("words", "policy"), [
    (["2"], RetryPolicy(2, 30, False)),
    (["3", "60"], RetryPolicy(3, 60, False)),
    (["1", "10", "agent-failures"], RetryPolicy(1, 10, True)),
    (["agent-failures", "1"], RetryPolicy(1, 30, True)),
    (["off"], RetryPolicy(0, 30, False)),
    (["OFF"], RetryPolicy(0, 30, False)),
])
def test_retry_policy_parsing(words: list[str], policy: RetryPolicy) -> None:
    assert parse_policy(words) == policy


@pytest.mark.parametrize("words", [[], ["two"], ["1", "2", "3"], ["-1"], ["1.5"], ["1", "x"],
                                   ["٣"], ["9999999"]])
def test_unreadable_retry_policies_are_refused(words: list[str]) -> None:
    with pytest.raises(ValidationFailed, match="give ATTEMPTS"):
        parse_policy(words)


@pytest.mark.parametrize(("policy", "error"), [
    (RetryPolicy(6, 30), "attempts must be 0 to 5 (got 6); nothing changed."),
    (RetryPolicy(1, 4), "backoff must be 5 to 3600 seconds (got 4); nothing changed."),
    (RetryPolicy(1, 3601), "backoff must be 5 to 3600 seconds (got 3601); nothing changed."),
])
def test_out_of_bounds_policies_are_refused(policy: RetryPolicy, error: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_policy(policy)
    assert caught.value.field_errors == {"retries": error}


def test_bounds_that_hold() -> None:
    for policy in (RetryPolicy(0, 5), RetryPolicy(5, 3600), RetryPolicy(3, 60, True)):
        validate_policy(policy)
    validate_policy(RetryPolicy(1, 1), RetryLimits(min_backoff_seconds=1))


def test_the_retries_command_keeps_the_rest_of_the_line() -> None:
    assert commands.parse("retries Nightly 2 60 agent-failures") == commands.Command(
        "retries", "nightly", arg="2 60 agent-failures")
    assert commands.parse("retries nightly").action == "help"


@pytest.mark.parametrize("secret", [
    "xoxb-1234-5678-abcdefgh", "xoxp-1234-5678-abcdefgh", "xapp-1-A0001-1234-abcdef",
    "sk-ant-api03-abcdefghij", "ghp_" + "a1" * 18, "gho_" + "B2" * 18,
    "github_pat_" + "11ABC_" * 5, "rt_" + "Ab-_9" * 9, "AKIAIOSFODNN7EXAMPLE",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----",
])
def test_token_shapes_are_redacted(secret: str) -> None:
    assert Redactor(())(f"before {secret} after") == f"before {MASK} after"


def test_ordinary_words_and_configured_values() -> None:
    redact = Redactor(["hunter2-configured", "abc"])  # too short to mask: it would eat words
    assert redact("start_time restart_policy abc AKIA") == "start_time restart_policy abc AKIA"
    assert redact("pw=hunter2-configured;") == f"pw={MASK};"
    nested = redact.structure({"a": ["hunter2-configured", 3, {"b": "xoxb-1234-5678-abcd"}]})
    assert nested == {"a": [MASK, 3, {"b": MASK}]}


def test_long_event_text_is_cut_before_storage_with_a_note() -> None:
    event = {"type": "output", "text": "x" * 70_000, "n": 3, "input": {"content": "y" * 10}}
    clipped = clip_event(event, limit=64_000)
    assert clipped["text"] == "x" * 64_000 + "\n[... 6000 more characters not stored]"
    assert clipped["n"] == 3 and clipped["input"] == {"content": "y" * 10}
