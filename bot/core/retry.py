"""Retry policy: whether a finished run is tried again, and when. Pure: no I/O.

Infrastructure faults (status `error`: the container could not start, the engine or the
clone failed, the Anthropic API was overloaded or answered 5xx) are retried up to the
routine's `retry_attempts`, after `retry_backoff_seconds` doubled at each attempt. A
failure the agent is answerable for (`failed`, `timed_out`) is retried only when the
routine sets `retry_agent_failures`. An Anthropic client error (a 4xx other than 408,
409 and 429: a bad key, a bad request) is not transient, so it is never retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.core.statuses import RunStatus
from bot.errors import ValidationFailed
from bot.store.tables import Routine

AGENT_FAILURES = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT})
FAILURES = AGENT_FAILURES | {RunStatus.ERROR}  # what the Retry button is offered for
_API_STATUS = re.compile(r"Anthropic API error: .*?Error code: (\d{3})")
_TRANSIENT_4XX = frozenset({408, 409, 429})
NEVER_RETRIED_REASONS = frozenset({"killed"})  # stopped on purpose: not a fault


@dataclass(frozen=True)
class RetryLimits:
    """What a routine's retry policy may be set to."""

    max_attempts: int = 5
    min_backoff_seconds: int = 5
    max_backoff_seconds: int = 3600


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 0  # extra attempts after the first
    backoff_seconds: int = 30  # before the first retry; doubled at each next one
    agent_failures: bool = False

    @property
    def total_attempts(self) -> int:
        return 1 + self.attempts

    def delay_before(self, attempt: int) -> int:
        """Seconds to wait before attempt number `attempt` (2, 3, ...)."""
        return int(self.backoff_seconds * 2 ** max(attempt - 2, 0))

    def describe(self) -> str:
        if not self.attempts:
            return "no automatic retries"
        agent = ("agent failures and timeouts too" if self.agent_failures
                 else "infrastructure faults only")
        return (f"up to {self.attempts} more attempt(s), waiting {self.backoff_seconds}s "
                f"then doubling; {agent}")


@dataclass(frozen=True)
class ScheduledRetry:
    """The automatic retry queued after a failed run, as its result message shows it."""

    run_id: int
    attempt: int
    of_attempts: int
    delay_seconds: int


@dataclass(frozen=True)
class RetryDecision:
    """`retry` with the next attempt's number and when it may start, or why not."""

    retry: bool
    why: str
    attempt: int = 0
    of_attempts: int = 0
    delay_seconds: int = 0
    not_before: datetime | None = None


DEFAULT_LIMITS = RetryLimits()


def policy_of(routine: Routine) -> RetryPolicy:
    return RetryPolicy(routine.retry_attempts, routine.retry_backoff_seconds,
                       routine.retry_agent_failures)


def validate_policy(policy: RetryPolicy, limits: RetryLimits = DEFAULT_LIMITS) -> None:
    """Raise `ValidationFailed` (field `retries`) if the policy is out of bounds."""
    if not 0 <= policy.attempts <= limits.max_attempts:
        raise ValidationFailed({"retries": f"attempts must be 0 to {limits.max_attempts} "
                                           f"(got {policy.attempts}); nothing changed."})
    low, high = limits.min_backoff_seconds, limits.max_backoff_seconds
    if not low <= policy.backoff_seconds <= high:
        raise ValidationFailed({"retries": f"backoff must be {low} to {high} seconds "
                                           f"(got {policy.backoff_seconds}); nothing changed."})


def parse_policy(words: list[str]) -> RetryPolicy:
    """`ATTEMPTS [BACKOFF_SECONDS] [agent-failures]`, or `off`. The whole policy is set:
    an omitted backoff is 30 s, an omitted `agent-failures` is off. Bounds are checked
    by `validate_policy`, in the service."""
    if [w.lower() for w in words] == ["off"]:
        return RetryPolicy()
    agent = any(w.lower() == "agent-failures" for w in words)
    numbers = [w for w in words if w.lower() != "agent-failures"]
    if not 1 <= len(numbers) <= 2 or not all(_is_count(w) for w in numbers):
        raise ValidationFailed({"retries": "give ATTEMPTS, then optionally BACKOFF_SECONDS "
                                           "and `agent-failures`, e.g. `2 60`; nothing changed."})
    backoff = int(numbers[1]) if len(numbers) == 2 else RetryPolicy.backoff_seconds
    return RetryPolicy(int(numbers[0]), backoff, agent)


def decide_retry(policy: RetryPolicy, status: RunStatus, attempt: int, reason: str | None,
                 finished_at: datetime) -> RetryDecision:
    """Should the run that just finished with `status` be tried again?"""
    if status not in FAILURES:
        return RetryDecision(False, f"{status.value}: nothing to retry")
    if status is RunStatus.ERROR and _client_error(reason):
        return RetryDecision(False, "the Anthropic API refused the request (not transient)")
    if status in AGENT_FAILURES:
        if (reason or "") in NEVER_RETRIED_REASONS:
            return RetryDecision(False, f"{reason}: never retried")
        if not policy.agent_failures:
            return RetryDecision(False, "agent failures are not retried by this routine")
    if attempt >= policy.total_attempts:
        return RetryDecision(False, f"no attempts left ({attempt} of {policy.total_attempts})")
    nxt = attempt + 1
    delay = policy.delay_before(nxt)
    return RetryDecision(True, f"retrying in {delay}s (attempt {nxt} of "
                               f"{policy.total_attempts})", nxt, policy.total_attempts,
                         delay, finished_at + timedelta(seconds=delay))


def _client_error(reason: str | None) -> bool:
    match = _API_STATUS.search(reason or "")
    if match is None:
        return False
    code = int(match.group(1))
    return 400 <= code < 500 and code not in _TRANSIENT_4XX


def _is_count(word: str) -> bool:
    return word.isascii() and word.isdigit() and len(word) <= 6
