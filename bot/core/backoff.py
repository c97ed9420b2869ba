"""When to try a dependency again after it failed: its own `Retry-After` when it gave one
(Slack's 429), else exponential backoff capped at `most` seconds.

Pure: the caller passes the clock (monotonic seconds), so the decision is tested without
waiting."""

from __future__ import annotations

from dataclasses import dataclass


def delay(failures: int, retry_after: float | None, base: float = 1.0,
          most: float = 60.0) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1 for the first)."""
    if retry_after is not None:
        return max(0.0, retry_after)  # the server said when: never earlier, never capped
    return float(min(most, base * 2.0 ** max(0, failures - 1)))


@dataclass
class Backoff:
    """The state of one dependency's retries: failures in a row and the earliest next try."""

    base: float = 1.0
    most: float = 60.0
    failures: int = 0
    not_before: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.not_before

    def failed(self, now: float, retry_after: float | None = None) -> float:
        """Record a failure; returns how long to wait before the next try."""
        self.failures += 1
        wait = delay(self.failures, retry_after, self.base, self.most)
        self.not_before = now + wait
        return wait

    def succeeded(self) -> None:
        self.failures, self.not_before = 0, 0.0
