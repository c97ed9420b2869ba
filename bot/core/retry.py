"""Retry policy: whether a finished run is tried again, and when. Pure: no I/O.

It decides on the run's `FailureKind`, never on the wording of its reason.
Infrastructure faults (`infrastructure`: the container could not start, the engine or the
clone failed; `api_unavailable`: the Anthropic API was overloaded, answered 5xx or 429,
or could not be reached) are retried up to the routine's `retry_attempts`, after
`retry_backoff_seconds` doubled at each attempt. A failure the agent is answerable for
(a failure report, no report, a timeout...) is retried only when the routine sets
`retry_agent_failures`. An Anthropic client error (`api_refused`: a bad key, a bad
request) is not transient, and a run stopped on purpose is no fault: never retried. A
failed run without a kind (stored before kinds were) is judged by its status: `error` is
an infrastructure fault, anything else the agent's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from bot.core.statuses import FAILURES, FailureKind, RunStatus
from bot.errors import ValidationFailed

INFRASTRUCTURE_FAULTS = frozenset({FailureKind.INFRASTRUCTURE, FailureKind.API_UNAVAILABLE})
NEVER_RETRIED = frozenset({FailureKind.KILLED, FailureKind.CANCELLED})  # stopped on purpose


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


class RetrySettings(Protocol):
    """Where a routine keeps its policy (the `Routine` table, in the store)."""

    @property
    def retry_attempts(self) -> int: ...
    @property
    def retry_backoff_seconds(self) -> int: ...
    @property
    def retry_agent_failures(self) -> bool: ...


def policy_of(routine: RetrySettings) -> RetryPolicy:
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


def decide_retry(policy: RetryPolicy, status: RunStatus, attempt: int,
                 failure: FailureKind | None, finished_at: datetime) -> RetryDecision:
    """Should the run that just finished with `status`, for the reason `failure`, be
    tried again?"""
    if status not in FAILURES:
        return RetryDecision(False, f"{status.value}: nothing to retry")
    if failure is FailureKind.API_REFUSED:
        return RetryDecision(False, "the Anthropic API refused the request (not transient)")
    if failure in NEVER_RETRIED:
        return RetryDecision(False, f"{failure}: never retried")
    if not _infrastructure_fault(status, failure) and not policy.agent_failures:
        return RetryDecision(False, "agent failures are not retried by this routine")
    if attempt >= policy.total_attempts:
        return RetryDecision(False, f"no attempts left ({attempt} of {policy.total_attempts})")
    nxt = attempt + 1
    delay = policy.delay_before(nxt)
    return RetryDecision(True, f"retrying in {delay}s (attempt {nxt} of "
                               f"{policy.total_attempts})", nxt, policy.total_attempts,
                         delay, finished_at + timedelta(seconds=delay))


def _infrastructure_fault(status: RunStatus, failure: FailureKind | None) -> bool:
    if failure is None:  # stored before failures had kinds
        return status is RunStatus.ERROR
    return failure in INFRASTRUCTURE_FAULTS


def _is_count(word: str) -> bool:
    return word.isascii() and word.isdigit() and len(word) <= 6
