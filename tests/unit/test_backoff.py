"""The retry decision after a dependency failed: Retry-After wins, else doubling, capped."""

from __future__ import annotations

import pytest

from bot.core.backoff import Backoff, delay


@pytest.mark.parametrize(("failures", "retry_after", "expected"), [
    (1, None, 1.0), (2, None, 2.0), (3, None, 4.0), (7, None, 60.0), (40, None, 60.0),
    (1, 3.0, 3.0), (9, 120.0, 120.0), (1, -5.0, 0.0),
])
def test_delay(failures: int, retry_after: float | None, expected: float) -> None:
    assert delay(failures, retry_after, base=1.0, most=60.0) == expected


def test_backoff_holds_until_its_time_and_resets_on_success() -> None:
    backoff = Backoff()
    assert backoff.ready(0.0)
    assert backoff.failed(10.0) == 1.0
    assert not backoff.ready(10.5) and backoff.ready(11.0)
    assert backoff.failed(11.0) == 2.0
    assert backoff.failed(13.0, retry_after=7.0) == 7.0
    assert not backoff.ready(19.9) and backoff.ready(20.0)
    backoff.succeeded()
    assert backoff.ready(0.0) and backoff.failed(30.0) == 1.0
