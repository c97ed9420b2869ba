"""One-holder leases over the shared database: the scheduler's, so that one `serve`
process at a time fires schedules and digests and expires approvals (docs/scale-out.md).
The statements are `bot.store.leases`; what a process does after a try is
`bot.core.lease.lease_step`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.services.context import Service
from bot.store import leases
from bot.store.tables import utcnow


@dataclass(frozen=True)
class LeaseView:
    name: str
    holder: str
    until: datetime
    taken_at: datetime

    def held(self, now: datetime) -> bool:
        """Still held at `now` (a lease past its time is free to take)."""
        return now < self.until


class LeaseService(Service):
    def hold(self, name: str, holder: str, seconds: float, renewing: bool = False,
             now: datetime | None = None) -> datetime | None:
        """Take or renew `name` for `seconds` from now: its new end, or None if another
        process holds it. `renewing` (this holder had it, not past its time): a plain
        renewal first, the upsert only if that found nothing (the row was released...)."""
        now = now or utcnow()
        until = now + timedelta(seconds=seconds)
        with self.db.session() as session:
            if renewing and leases.renew(session, name, holder, now, until):
                return until
            return until if leases.take(session, name, holder, now, until) else None

    def release(self, name: str, holder: str) -> bool:
        with self.db.session() as session:
            return leases.release(session, name, holder)

    def holder(self, name: str) -> LeaseView | None:
        """Who holds `name` and until when (past `until`: nobody, until someone takes it);
        what `/metrics`, `routines doctor` and the App Home show of the scheduler."""
        with self.db.session() as session:
            found = leases.holder(session, name)
        return None if found is None else LeaseView(name, *found)
