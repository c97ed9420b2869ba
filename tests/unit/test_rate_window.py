"""The rate limit's pure decision over what the database counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.core.ratelimit import WINDOW, RateWindow

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_under_the_limit_a_trigger_is_allowed_and_counted() -> None:
    window = RateWindow(2, NOW, count=0, oldest=None)
    assert window.retry_after() is None
    window.admit()
    assert (window.count, window.oldest) == (1, NOW)
    assert window.retry_after() is None
    window.admit()
    assert window.retry_after() == 60  # the first hit, just now, leaves in a minute


def test_at_the_limit_the_wait_is_until_the_oldest_hit_leaves() -> None:
    window = RateWindow(3, NOW, count=3, oldest=NOW - timedelta(seconds=42.5))
    assert window.retry_after() == 18  # 17.5 s, in whole seconds up
    leaving = RateWindow(3, NOW, count=3, oldest=NOW - WINDOW + timedelta(milliseconds=1))
    assert leaving.retry_after() == 1  # never 0: Retry-After counts whole seconds


def test_a_limit_of_zero_refuses_for_a_window() -> None:
    assert RateWindow(0, NOW, count=0, oldest=None).retry_after() == 60
