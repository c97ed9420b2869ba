"""The rules, one service per concept, built together by `Services`.

Doors (Slack, HTTP, the scheduler, the CLI) parse input, call one service method and render
what comes back, so an action behaves the same whichever door it came through. Methods are
synchronous and short; async doors call them through `asyncio.to_thread`. Services tell
the rest of the bot what happened through typed events on `Services.bus`.
"""

from __future__ import annotations

from bot.core import roles
from bot.core.redaction import Redactor
from bot.core.roles import Directory
from bot.services.approvals import ApprovalService
from bot.services.audit import AuditService
from bot.services.catalog import CatalogService
from bot.services.context import ServicePolicy, Shared
from bot.services.digests import DigestService
from bot.services.events import EventBus
from bot.services.github import GitHubService
from bot.services.home import HomeService
from bot.services.killswitch import KillSwitchService
from bot.services.leases import LeaseService
from bot.services.publishing import PublishService
from bot.services.routines import RoutineService
from bot.services.run_leases import RunLeaseService
from bot.services.runs import RunService
from bot.services.schedules import ScheduleService
from bot.services.spend import SpendService
from bot.services.tokens import TokenService
from bot.services.trigger_batch import TriggerBatchService
from bot.services.triggers import TriggerService
from bot.services.workers import WorkerService
from bot.services.workflows import WorkflowService
from bot.store.database import Database

__all__ = ["ServicePolicy", "Services"]


class Services:
    """Every service of one bot, sharing one database, policy, role rule and event bus."""

    def __init__(self, db: Database, policy: ServicePolicy, redact: Redactor,
                 directory: Directory | None = None) -> None:
        self.bus = EventBus()
        shared = Shared(db, policy, redact,
                        roles.Roles(policy.admins, directory or (lambda _group: frozenset())),
                        self.bus)
        self.redact = redact
        self.audit = AuditService(shared)
        self.kill_switch = KillSwitchService(shared)
        self.spend = SpendService(shared)
        self.approvals = ApprovalService(shared)
        self.routines = RoutineService(shared)
        self.catalog = CatalogService(shared)
        self.runs = RunService(shared, self.approvals)
        self.run_leases = RunLeaseService(shared, self.runs)
        self.publishing = PublishService(shared, self.runs)
        self.triggers = TriggerService(shared, self.kill_switch, self.spend, self.approvals)
        self.schedules = ScheduleService(shared, self.triggers, self.kill_switch)
        self.github = GitHubService(shared, self.triggers, self.kill_switch)
        self.tokens = TokenService(shared, self.triggers, self.routines, self.runs)
        self.trigger_batch = TriggerBatchService(shared, self.triggers)
        self.home = HomeService(shared, self.routines, self.kill_switch)
        self.workflows = WorkflowService(shared, self.triggers)
        self.workers = WorkerService(shared)
        self.leases = LeaseService(shared)
        self.digests = DigestService(db, policy.prices, policy.limits.min_schedule_interval,
                                     bus=self.bus)
