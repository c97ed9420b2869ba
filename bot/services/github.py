"""GitHub subscriptions and deliveries: which routines an event fires."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from bot.core import github
from bot.core.roles import Action
from bot.core.statuses import (
    TriggerKind,
)
from bot.core.trigger import Trigger
from bot.errors import (
    AlreadySubscribed,
    DatabaseUnavailable,
    RoutinesError,
)
from bot.services.context import Service, Shared
from bot.services.killswitch import KillSwitchService
from bot.services.triggers import TriggerService
from bot.services.views import (
    Delivery,
)
from bot.store import audit
from bot.store.queries import row_id
from bot.store.tables import (
    GitHubSubscription,
    Routine,
)


class GitHubService(Service):
    def __init__(self, shared: Shared, triggers: TriggerService,
                 kill_switch: KillSwitchService) -> None:
        super().__init__(shared)
        self.triggers = triggers
        self.kill_switch = kill_switch

    def subscribe(self, name: str, spec: str, actor: str,
                  force: bool = False) -> github.EventFilter:
        """Add an event filter; the spec is stored in canonical form."""
        wanted = github.parse_filter(spec)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            self._check_managed(session, actor, routine, force)
            session.add(GitHubSubscription(routine_id=row_id(routine), spec=wanted.describe(),
                                           created_by=actor))
            try:
                session.flush()
            except IntegrityError:
                raise AlreadySubscribed(routine.name, wanted.describe()) from None
            audit.record(session, actor, "github_subscribed", routine.name, wanted.describe())
        return wanted

    def unsubscribe(self, name: str, actor: str, force: bool = False) -> int:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            self._check_managed(session, actor, routine, force)
            rows = session.exec(select(GitHubSubscription).where(
                GitHubSubscription.routine_id == routine.id)).all()
            for row in rows:
                session.delete(row)
            audit.record(session, actor, "github_unsubscribed", routine.name,
                         f"{len(rows)} filters")
            return len(rows)

    def filters(self, name: str) -> list[str]:
        with self.db.session() as session:
            routine = self._require(session, name)
            return list(session.exec(select(GitHubSubscription.spec).where(
                GitHubSubscription.routine_id == routine.id)).all())

    def delivery(self, event_name: str, delivery_id: str, payload: object) -> Delivery:
        """Fire every routine whose filters match; a redelivered id fires nothing new."""
        event = github.GitHubEvent.from_payload(event_name, payload)
        with self.db.session() as session:
            self.kill_switch.refuse_if_engaged(session)
            rows = session.exec(select(Routine.name, GitHubSubscription.spec).join(
                GitHubSubscription, col(GitHubSubscription.routine_id) == col(Routine.id))).all()
        filters: dict[str, list[github.EventFilter]] = {}
        for routine_name, spec in rows:
            filters.setdefault(routine_name, []).append(github.parse_filter(spec))
        outcome = Delivery(event.kind, [], [], {})
        trigger = Trigger(TriggerKind.GITHUB, event.sender or "github", ref=delivery_id,
                          payload=payload, detail=event.kind)
        for routine_name in github.routines_to_fire(filters, event):
            try:
                triggered = self.triggers.trigger(routine_name, trigger)
            except DatabaseUnavailable:
                # The whole delivery is refused (503): GitHub redelivers it, and the routines
                # that did fire are found by the delivery id then, not fired twice.
                raise
            except RoutinesError as exc:
                outcome.refused[routine_name] = str(exc)
                continue
            (outcome.duplicates if triggered.replayed else outcome.fired).append(triggered.view)
        return outcome
