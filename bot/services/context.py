"""What every service shares: the database, the policy, the redactor, the role rule
and the event bus; and the role check that records refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from bot.core import retry, roles
from bot.core.pricing import PriceTable
from bot.core.redaction import Redactor
from bot.core.roles import Action, RoutineRoles
from bot.core.routine import RoutineLimits
from bot.errors import Forbidden, ManagedFromFiles, MayAct
from bot.services.events import EventBus
from bot.settings import Settings
from bot.store import audit, queries
from bot.store.database import Database
from bot.store.tables import Routine
from runner.egress_policy import DEFAULT_TRUSTED_HOSTS


@dataclass(frozen=True)
class ServicePolicy:
    """Defaults and limits the service applies; built from `Settings` at start-up."""

    default_model: str
    default_timeout_seconds: int
    limits: RoutineLimits
    max_turns: int
    triggers_per_minute: int = 30
    admins: tuple[str, ...] = ()
    approval_timeout_seconds: int = 24 * 3600
    daily_spend_cap_usd: float = 0.0  # 0: no cap
    prices: PriceTable = field(default_factory=PriceTable.default)
    retry_limits: retry.RetryLimits = retry.DEFAULT_LIMITS
    trusted_hosts: tuple[str, ...] = DEFAULT_TRUSTED_HOSTS  # `network=trusted` reaches these

    @classmethod
    def from_settings(cls, settings: Settings) -> ServicePolicy:
        return cls(
            default_model=settings.default_model,
            default_timeout_seconds=settings.default_timeout_seconds,
            limits=RoutineLimits(settings.min_timeout_seconds, settings.max_timeout_seconds,
                                 settings.allow_local_repos,
                                 settings.min_schedule_interval_seconds,
                                 settings.repo_hosts),
            max_turns=settings.max_turns,
            triggers_per_minute=settings.triggers_per_minute,
            admins=settings.admins,
            approval_timeout_seconds=settings.approval_timeout_seconds,
            daily_spend_cap_usd=settings.daily_spend_cap_usd,
            prices=settings.prices,
            retry_limits=retry.RetryLimits(
                min_backoff_seconds=settings.min_retry_backoff_seconds),
            trusted_hosts=settings.trusted_hosts,
        )


@dataclass(frozen=True)
class Shared:
    """What every service is built with."""

    db: Database
    policy: ServicePolicy
    redact: Redactor
    roles: roles.Roles
    bus: EventBus


class Service:
    """Base of every service: the shared context, and the lookups and checks all need."""

    def __init__(self, shared: Shared) -> None:
        self.db = shared.db
        self.policy = shared.policy
        self.redact = shared.redact
        self.roles = shared.roles
        self.bus = shared.bus

    def _check(self, actor: str, action: Action, routine: Routine | None = None,
               requester: str | None = None, is_approver_anywhere: bool = False) -> None:
        """The role rule for every door; refused attempts are recorded too."""
        subject = RoutineRoles(routine.name, roles.split(routine.owners),
                               roles.split(routine.approvers)) if routine else None
        try:
            self.roles.check(actor, action, subject, requester, is_approver_anywhere)
        except Forbidden as exc:
            with self.db.session() as session:
                audit.record(session, actor, "refused", routine.name if routine else None,
                             f"{action.value}: {exc}")
            raise

    def _check_managed(self, session: Session, actor: str, routine: Routine,
                       force: bool) -> None:
        """A routine kept in a file is changed there (`routines apply`); an admin may force
        an edit from another door, and the forcing is recorded with the edit."""
        if routine.managed_by is None:
            return
        if not force:
            raise ManagedFromFiles(routine.name, routine.managed_by)
        if not self.roles.is_admin(actor):
            refused = Forbidden("change a routine managed from files", MayAct.ADMINS,
                                self.roles.admins)
            with self.db.session() as own:
                audit.record(own, actor, "refused", routine.name, f"force: {refused}")
            raise refused
        audit.record(session, actor, "forced", routine.name,
                     f"edited although managed from {routine.managed_by}")

    @staticmethod
    def _require(session: Session, name: str) -> Routine:
        return queries.require_routine(session, name)
