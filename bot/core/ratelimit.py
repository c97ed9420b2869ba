"""The trigger rate limit of one routine: at most `limit` accepted triggers in any window.

Pure decisions over what the database holds (`bot.store.trigger_hits` reads it, locked,
and writes the accepted hits in the same transaction): a restart must not forgive a
burst, and two processes together must allow the configured rate, not twice it. Kept
as plain numbers so a group commit counts once per routine and then decides every call
of the batch here, the ones admitted earlier in it included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW = timedelta(seconds=60)  # the limit is "triggers per minute"


@dataclass
class RateWindow:
    """The accepted triggers of one routine within the window ending `now`: how many, and
    when the oldest was (what a refused caller waits for)."""

    limit: int
    now: datetime
    count: int
    oldest: datetime | None
    window: timedelta = WINDOW

    def retry_after(self) -> int | None:
        """None when one more trigger is allowed, else the whole seconds until the oldest
        hit leaves the window (at least 1, as Retry-After counts)."""
        if self.count < self.limit:
            return None
        if self.oldest is None:  # a limit of 0: never allowed, retry after a window
            return math.ceil(self.window.total_seconds())
        waited = (self.oldest + self.window - self.now).total_seconds()
        return max(1, math.ceil(waited))

    def admit(self) -> None:
        """Count one more accepted trigger, at `now` (the caller writes its hit)."""
        self.count += 1
        if self.oldest is None:
            self.oldest = self.now
