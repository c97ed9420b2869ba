"""`routines doctor` says a worker's heartbeat age as people read it."""

from __future__ import annotations

import pytest

from bot.doctor import describe_age


@pytest.mark.parametrize(("seconds", "said"), [
    (-2.0, "0s"),  # a clock a little ahead of the database's
    (0.4, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"),
    (86399, "23h"), (86400 * 3 + 5, "3d"),
])
def test_the_age_in_its_largest_whole_unit(seconds: float, said: str) -> None:
    assert describe_age(seconds) == said
