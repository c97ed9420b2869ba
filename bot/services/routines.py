"""Routines: create, change, pause, resume, delete, and what they look like."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core import retry, schedule
from bot.core.roles import Action
from bot.core.routine import (
    RoutineDraft,
    engine_of,
    network_columns,
    network_policy,
    normalized,
    validate,
)
from bot.errors import (
    AlreadyPaused,
    Forbidden,
    NotPaused,
    RunsPending,
    ValidationFailed,
)
from bot.services.context import Service
from bot.services.events import ScheduleChanged
from bot.services.views import (
    RoutineOverview,
    RunView,
)
from bot.store import audit, queries
from bot.store.tables import (
    ApiToken,
    Approval,
    GitHubSubscription,
    MissedFire,
    Routine,
    Run,
    RunDayRollup,
    RunEvent,
    RunRollup,
    TriggerHit,
    utcnow,
)
from runner.contract import Engine, RepoConfig
from runner.egress_policy import EgressPolicy, NetworkMode


class RoutineService(Service):
    def create(self, draft: RoutineDraft, actor: str) -> Routine:
        draft = normalized(draft)
        errors = validate(draft, self.policy.limits)
        network = network_policy(draft.network) if "network" not in errors else None
        if network is not None and network.mode is NetworkMode.FULL:
            try:
                self._check(actor, Action.FULL_NETWORK)
            except Forbidden as exc:
                errors["network"] = str(exc)
        with self.db.session() as session:
            if "name" not in errors and queries.find_routine(session, draft.name):
                errors["name"] = f"A routine named `{draft.name}` already exists."
            if errors:
                raise ValidationFailed(errors)
            routine = Routine(
                name=draft.name,
                prompt=draft.prompt,
                repo_url=draft.repo_url,
                branch=draft.branch,
                setup_script=draft.setup_script,
                channel_id=draft.channel_id,
                model=draft.model or self.policy.default_model,
                timeout_seconds=int(draft.timeout_seconds or self.policy.default_timeout_seconds),
                max_turns=self.policy.max_turns,
                payload_template=draft.payload_template,
                engine=engine_of(draft.engine),
                created_by=actor,
                owners=actor,
            )
            for column, value in network_columns(
                    network or EgressPolicy(NetworkMode.TRUSTED)).items():
                setattr(routine, column, value)
            if draft.schedule:
                when = schedule.parse_schedule(draft.schedule, draft.schedule_tz or "UTC",
                                               self.policy.limits.min_schedule_interval)
                routine.schedule, routine.schedule_tz = when.expression, when.timezone
                routine.last_fire_at = utcnow()
            session.add(routine)
            try:
                session.flush()
            except IntegrityError:  # the same name created at the same moment elsewhere
                raise ValidationFailed(
                    {"name": f"A routine named `{draft.name}` already exists."}) from None
            session.refresh(routine)
            audit.record(session, actor, "create", routine.name,
                         f"repo {routine.repo_url}, network {routine.egress.describe()}"
                         + ("" if routine.engine is Engine.BUILTIN
                            else f", engine {routine.engine.value}"))
            if routine.network is NetworkMode.FULL:
                audit.record(session, actor, "network_full", routine.name, "network=full")
        if routine.schedule:
            self.bus.publish(ScheduleChanged(
                routine.name, schedule.Schedule(routine.schedule, routine.schedule_tz)))
        return routine

    def pause(self, name: str, actor: str) -> Routine:
        """Hold every trigger of the routine (schedules skip, doors refuse) until resumed."""
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.PAUSE, routine)
            if routine.paused:
                raise AlreadyPaused(routine.name, routine.paused_by)
            routine.paused_at, routine.paused_by = utcnow(), actor
            audit.record(session, actor, "pause", routine.name)
            return routine

    def resume(self, name: str, actor: str) -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.RESUME, routine)
            if not routine.paused:
                raise NotPaused(routine.name)
            routine.paused_at, routine.paused_by = None, None
            audit.record(session, actor, "resume", routine.name)
            return routine

    def change(self, name: str, changes: dict[str, object], actor: str,
               force: bool = False) -> Routine:
        """Apply settings parsed by `bot.core.routine.parse_changes` (owners and admins
        only; `network=full` admins only, and audited as such; a routine managed from files
        only when an admin forces it). A refusal changes nothing."""
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            self._check_managed(session, actor, routine, force)
            full = changes.get("network") is NetworkMode.FULL
            if full:
                self._check(actor, Action.FULL_NETWORK, routine)
            for column, value in changes.items():
                setattr(routine, column, value)
            audit.record(session, actor, "change", routine.name,
                   ", ".join(f"{k}={v}" for k, v in changes.items()))
            if full:
                audit.record(session, actor, "network_full", routine.name, "network=full")
            if changes.get("repo_config") is RepoConfig.TRUSTED:
                audit.record(session, actor, "repo_config_trusted", routine.name,
                             "repo-config=trusted: the repository's hooks and MCP servers "
                             "may run")
            return routine

    def delete(self, name: str, actor: str, force: bool = False) -> None:
        """Remove the routine with its runs, tokens and filters; the audit log keeps the
        record. Refused while a run is pending: cancel it first."""
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.DELETE, routine)
            self._check_managed(session, actor, routine, force)
            delete_in(session, routine, actor)
        self.bus.publish(ScheduleChanged(name, None))

    def get(self, name: str) -> Routine:
        with self.db.session() as session:
            return self._require(session, name)

    def overviews(self, limit: int | None = None) -> list[RoutineOverview]:
        """The routines by name (the first `limit` of them), each with its last run."""
        with self.db.session() as session:
            routines = session.exec(
                select(Routine).order_by(col(Routine.name)).limit(limit)).all()
            last = queries.last_runs(session, None if limit is None
                                     else [queries.row_id(r) for r in routines])
            return [RoutineOverview(r, last.get(queries.row_id(r))) for r in routines]

    def count(self) -> int:
        with self.db.session() as session:
            return session.exec(select(func.count()).select_from(Routine)).one()

    def overview(self, name: str) -> RoutineOverview:
        with self.db.session() as session:
            routine = self._require(session, name)
            last_run = queries.last_run(session, routine)
        next_fires: tuple[datetime, ...] = ()
        if routine.schedule and not routine.paused:
            when = schedule.Schedule(routine.schedule, routine.schedule_tz)
            next_fires = tuple(schedule.next_fire_times(when, utcnow(), 3))
        return RoutineOverview(routine, last_run, next_fires)

    def history(self, name: str, limit: int = 10) -> list[RunView]:
        routine = self.get(name)
        with self.db.session() as session:
            runs = session.exec(
                select(Run).where(Run.routine_id == routine.id)
                .order_by(col(Run.id).desc()).limit(limit)
            ).all()
            return [RunView(run, routine) for run in runs]

    def set_retry_policy(self, name: str, policy: retry.RetryPolicy, actor: str,
                         force: bool = False) -> Routine:
        """Set how the routine's failed runs are retried; out of bounds changes nothing."""
        retry.validate_policy(policy, self.policy.retry_limits)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            self._check_managed(session, actor, routine, force)
            routine.retry_attempts = policy.attempts
            routine.retry_backoff_seconds = policy.backoff_seconds
            routine.retry_agent_failures = policy.agent_failures
            audit.record(session, actor, "retry_policy_set", routine.name, policy.describe())
            return routine


def delete_in(session: Session, routine: Routine, actor: str, details: str = "") -> None:
    """Remove a routine with its runs, tokens and filters, inside the caller's unit of
    work (roles already checked). Refused while a run is pending: cancel it first."""
    if queries.active_runs(session, routine, pending=True):
        raise RunsPending(routine.name)
    run_ids = select(Run.id).where(Run.routine_id == routine.id)
    for table, column in ((RunEvent, RunEvent.run_id), (Approval, Approval.run_id)):
        session.execute(delete(table).where(col(column).in_(run_ids)))
    for owned in (RunRollup, RunDayRollup, Run, ApiToken, GitHubSubscription, TriggerHit,
                  MissedFire):
        session.execute(delete(owned).where(col(owned.routine_id) == routine.id))
    session.delete(routine)
    audit.record(session, actor, "delete", routine.name, details or f"repo {routine.repo_url}")
