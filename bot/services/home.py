"""What the App Home needs from the database: who looks at it, what it shows, and a
cheap stamp that moves whenever any of it changes (from any door or process)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from bot.core.statuses import PENDING_STATUSES
from bot.services.context import Service, Shared
from bot.services.killswitch import KillSwitchService
from bot.services.routines import RoutineService
from bot.services.views import RoutineOverview
from bot.store.tables import AuditEntry, HomeViewer, KillSwitch, Run, utcnow

Snapshot = tuple[list[RoutineOverview], KillSwitch]


class HomeService(Service):
    def __init__(self, shared: Shared, routines: RoutineService,
                 kill_switch: KillSwitchService) -> None:
        super().__init__(shared)
        self.routines = routines
        self.kill_switch = kill_switch

    def seen(self, user_id: str) -> None:
        """The user opened Home: their Home is republished after changes (the
        `homeviewer` table, so a restart keeps the list)."""
        try:
            with self.db.session() as session:
                viewer = session.get(HomeViewer, user_id) or HomeViewer(user_id=user_id)
                viewer.opened_at = utcnow()
                session.add(viewer)
        except IntegrityError:  # the same user's first open, recorded a moment ago elsewhere
            pass

    def viewers_since(self, when: datetime) -> list[str]:
        with self.db.session() as session:
            return list(session.exec(select(HomeViewer.user_id).where(
                col(HomeViewer.opened_at) >= when).order_by(col(HomeViewer.user_id))).all())

    def snapshot(self) -> Snapshot:
        """Everything a Home page is built from, read once for all viewers."""
        return self.routines.overviews(), self.kill_switch.state()

    def change_stamp(self) -> tuple[Any, ...]:
        """Moves whenever something a Home shows changes: a state change is audited, a run
        is queued (a new id), starts or finishes (the pending set), the kill switch flips."""
        with self.db.session() as session:
            audit = session.exec(select(func.max(AuditEntry.id))).one()
            newest_run = session.exec(select(func.max(Run.id))).one()
            # Per status, how many and which (the sum of their ids): moves when one starts
            # or finishes, counted by the database rather than a row per pending run
            # brought into Python on every wake (thousands while the API queues a burst).
            pending = tuple(session.exec(select(Run.status, func.count(), func.sum(Run.id))
                                         .where(col(Run.status).in_(PENDING_STATUSES))
                                         .group_by(col(Run.status))
                                         .order_by(col(Run.status))).all())
            switch = KillSwitch.current(session)
            switch_state = (switch.engaged, switch.changed_at)
        return audit, newest_run, pending, switch_state
