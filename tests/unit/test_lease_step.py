"""What a process does after each try at the scheduler's lease (`lease_step`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.core.lease import Holding, LeaseStep, lease_step

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)


def test_a_lease_not_held_and_now_got_is_taken() -> None:
    assert lease_step(Holding(), NOW, LATER) == (LeaseStep.TAKEN, Holding(LATER))


def test_a_lease_held_and_renewed_is_kept_with_its_new_end() -> None:
    before = Holding(NOW + timedelta(seconds=20))
    assert lease_step(before, NOW, LATER) == (LeaseStep.KEPT, Holding(LATER))


def test_a_failed_renewal_keeps_the_lease_only_until_its_end() -> None:
    before = Holding(NOW + timedelta(seconds=5))
    assert lease_step(before, NOW, None) == (LeaseStep.KEPT, before)
    assert lease_step(before, NOW + timedelta(seconds=5), None) == (LeaseStep.LOST, Holding())


def test_a_lease_that_lapsed_here_and_is_got_again_counts_as_taken() -> None:
    """The gap may hold a fire nobody made: the catch-up runs again."""
    before = Holding(NOW - timedelta(seconds=1))
    assert lease_step(before, NOW, LATER) == (LeaseStep.TAKEN, Holding(LATER))


def test_held_by_another_is_waiting() -> None:
    assert lease_step(Holding(), NOW, None) == (LeaseStep.WAITING, Holding())


def test_an_end_already_past_is_not_a_lease() -> None:
    assert lease_step(Holding(), NOW, NOW) == (LeaseStep.WAITING, Holding())
    assert not Holding(NOW).holds(NOW) and Holding(LATER).holds(NOW)
