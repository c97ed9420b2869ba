"""One-holder leases (the scheduler, docs/scale-out.md): what a process does after each try
to take or renew one. Pure: the database part is `bot.store.leases`.

A process holds a lease only until the time its last successful try gave it; a try that
failed, or did not answer, leaves that time where it was, so the holder stops at it (the
others may take the lease from then on) even when the database never answers again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

SCHEDULER = "scheduler"  # the lease of the one process that fires schedules and digests


class LeaseStep(StrEnum):
    TAKEN = "taken"  # it was not held here: start what the lease guards (catch up first)
    KEPT = "kept"  # renewed in time: carry on
    LOST = "lost"  # it was held here and is no more: stop at once
    WAITING = "waiting"  # another process holds it: do nothing


@dataclass(frozen=True)
class Holding:
    """What this process knows of a lease it may hold: until when (None: not held)."""

    until: datetime | None = None

    def holds(self, now: datetime) -> bool:
        return self.until is not None and now < self.until


def lease_step(before: Holding, now: datetime, got: datetime | None) -> tuple[LeaseStep,
                                                                           Holding]:
    """After a try at `now`: `got` is the new end of the lease, None if the try was
    refused (held by another) or failed. A lease that lapsed here before the try succeeded
    counts as taken again: a fire may have been missed, or fired elsewhere, in the gap."""
    held = before.holds(now)
    if got is not None and got > now:
        return (LeaseStep.KEPT if held else LeaseStep.TAKEN), Holding(got)
    if held:  # refused or failed, but not over yet: keep the time already given
        return LeaseStep.KEPT, before
    if before.until is not None:
        return LeaseStep.LOST, Holding()
    return LeaseStep.WAITING, Holding()
