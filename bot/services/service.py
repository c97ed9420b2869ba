"""The service layer: every rule about routines and runs lives here.

Slack listeners, HTTP handlers, the scheduler and the CLI are adapters that parse
input, call one method here, and render what comes back; so an action behaves the
same whichever door it came through. Methods are synchronous and short; async
adapters call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core import budget, github, retry, roles, schedule
from bot.core import payload as payloads
from bot.core.pricing import PriceTable
from bot.core.ratelimit import SlidingWindow
from bot.core.redaction import Redactor
from bot.core.roles import Action, Directory, RoutineRoles
from bot.core.routine import NAME_RE, RoutineDraft, RoutineLimits, normalized, validate
from bot.core.run_log import clip_event
from bot.core.statuses import (
    PENDING_STATUSES,
    ApprovalKind,
    ApprovalStatus,
    BusyPolicy,
    FailureKind,
    RiskLevel,
    RunStatus,
    TriggerKind,
)
from bot.core.trigger import Trigger
from bot.core.verdict import RunOutcome
from bot.errors import (
    AlreadyDecided,
    ApprovalNotFound,
    BudgetExceeded,
    Forbidden,
    InvalidToken,
    KillSwitchEngaged,
    RateLimited,
    RoutineBusy,
    RoutineNotFound,
    RoutinePaused,
    RoutinesError,
    RunNotFound,
    TokenNotFound,
    ValidationFailed,
)
from bot.settings import Settings
from bot.store.database import Database
from bot.store.tables import (
    ApiToken,
    Approval,
    AuditEntry,
    GitHubSubscription,
    KillSwitch,
    MissedFire,
    Routine,
    Run,
    RunEvent,
    SpendCap,
    utcnow,
)
from runner.contract import Event, RunSpec


@dataclass(frozen=True)
class RunView:
    """A run with its routine, as adapters show it."""

    run: Run
    routine: Routine
    next_retry: retry.ScheduledRetry | None = None  # queued by the retry policy after it

    @property
    def duration_seconds(self) -> float | None:
        if self.run.started_at and self.run.finished_at:
            return (_aware(self.run.finished_at) - _aware(self.run.started_at)).total_seconds()
        return None


@dataclass(frozen=True)
class RoutineOverview:
    routine: Routine
    last_run: Run | None
    next_fires: tuple[datetime, ...] = ()


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

    @classmethod
    def from_settings(cls, settings: Settings) -> ServicePolicy:
        return cls(
            default_model=settings.default_model,
            default_timeout_seconds=settings.default_timeout_seconds,
            limits=RoutineLimits(settings.min_timeout_seconds, settings.max_timeout_seconds,
                                 settings.allow_local_repos,
                                 settings.min_schedule_interval_seconds),
            max_turns=settings.max_turns,
            triggers_per_minute=settings.triggers_per_minute,
            admins=settings.admins,
            approval_timeout_seconds=settings.approval_timeout_seconds,
            daily_spend_cap_usd=settings.daily_spend_cap_usd,
            prices=settings.prices,
            retry_limits=retry.RetryLimits(
                min_backoff_seconds=settings.min_retry_backoff_seconds),
        )


@dataclass(frozen=True)
class Delivery:
    """What one GitHub delivery did, routine by routine."""

    event: str
    fired: list[RunView]
    duplicates: list[RunView]
    refused: dict[str, str]  # routine -> why (paused, rate limited, template failed)


@dataclass(frozen=True)
class MissedFires:
    """Scheduled times that will not run: said in the routine's channel, never silent."""

    routine: Routine
    times: tuple[datetime, ...]
    why: str
    more: bool = False  # older missed times were left out


ScheduleListener = Callable[[str, "schedule.Schedule | None"], None]


@dataclass(frozen=True)
class Triggered:
    view: RunView
    replayed: bool  # an earlier run with the same Idempotency-Key or delivery id
    approval: Approval | None = None  # a high-risk run waits for this decision


@dataclass(frozen=True)
class ApprovalView:
    """An approval request with its run and routine, as the request message shows it."""

    approval: Approval
    run: Run
    routine: Routine


@dataclass(frozen=True)
class HeldRuns:
    """What the kill switch holds: runs that will not start until released or dropped."""

    queued: int
    awaiting_approval: int

    @property
    def total(self) -> int:
        return self.queued + self.awaiting_approval


@dataclass(frozen=True)
class KillSwitchReport:
    state: KillSwitch
    stopping: int  # running runs being killed (engage)
    held: HeldRuns


ListenerOf = Callable[[int], None]  # called with a run id


class RoutineService:
    def __init__(self, db: Database, policy: ServicePolicy, redact: Redactor,
                 directory: Directory | None = None) -> None:
        self.db = db
        self.policy = policy
        self.redact = redact
        self.roles = roles.Roles(policy.admins, directory or (lambda _group: frozenset()))
        self.rate_limit = SlidingWindow(policy.triggers_per_minute, 60)
        self._run_queued_listeners: list[Callable[[], None]] = []
        self._schedule_listeners: list[ScheduleListener] = []
        self._approval_listeners: list[Callable[[], None]] = []
        self._stop_listeners: list[ListenerOf] = []
        self._publish_listeners: list[ListenerOf] = []

    def on_run_queued(self, listener: Callable[[], None]) -> None:
        """Called after a run is durably queued (the dispatcher wakes up on it)."""
        self._run_queued_listeners.append(listener)

    def on_schedule_changed(self, listener: ScheduleListener) -> None:
        """Called after a routine's schedule is saved or removed (the scheduler follows)."""
        self._schedule_listeners.append(listener)

    def on_approval_requested(self, listener: Callable[[], None]) -> None:
        """Called after an approval request is stored (its message is to be posted)."""
        self._approval_listeners.append(listener)

    def on_stop_requested(self, listener: ListenerOf) -> None:
        """Called with a running run's id when it must be stopped (cancel, kill switch)."""
        self._stop_listeners.append(listener)

    def on_publish_approved(self, listener: ListenerOf) -> None:
        """Called with a run's id when its kept commit may be pushed."""
        self._publish_listeners.append(listener)

    # Routines ----------------------------------------------------------------------

    def create_routine(self, draft: RoutineDraft, actor: str) -> Routine:
        draft = normalized(draft)
        errors = validate(draft, self.policy.limits)
        with self.db.session() as session:
            if "name" not in errors and self._find(session, draft.name):
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
                created_by=actor,
                owners=actor,
            )
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
            _audit(session, actor, "create", routine.name, f"repo {routine.repo_url}")
        if routine.schedule:
            _notify(self._schedule_listeners, routine.name,
                    schedule.Schedule(routine.schedule, routine.schedule_tz))
        return routine

    def pause_routine(self, name: str, actor: str) -> Routine:
        """Hold every trigger of the routine (schedules skip, doors refuse) until resumed."""
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.PAUSE, routine)
            if routine.paused:
                raise RoutinesError(f"Routine `{routine.name}` is already paused "
                                    f"(by {routine.paused_by}).")
            routine.paused_at, routine.paused_by = utcnow(), actor
            _audit(session, actor, "pause", routine.name)
            return routine

    def resume_routine(self, name: str, actor: str) -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.RESUME, routine)
            if not routine.paused:
                raise RoutinesError(f"Routine `{routine.name}` is not paused.")
            routine.paused_at, routine.paused_by = None, None
            _audit(session, actor, "resume", routine.name)
            return routine

    def change_routine(self, name: str, changes: dict[str, object], actor: str) -> Routine:
        """Apply settings parsed by `bot.core.routine.parse_changes` (owners and admins only)."""
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            for column, value in changes.items():
                setattr(routine, column, value)
            _audit(session, actor, "change", routine.name,
                   ", ".join(f"{k}={v}" for k, v in changes.items()))
            return routine

    def delete_routine(self, name: str, actor: str) -> None:
        """Remove the routine with its runs, tokens and filters; the audit log keeps the
        record. Refused while a run is pending: cancel it first."""
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.DELETE, routine)
            if self._active_runs(session, routine, pending=True):
                raise RoutinesError(f"Routine `{routine.name}` has runs in progress or "
                                    "waiting; cancel them first (`/routine history` lists "
                                    "them).")
            run_ids = select(Run.id).where(Run.routine_id == routine.id)
            for table, column in ((RunEvent, RunEvent.run_id), (Approval, Approval.run_id)):
                session.execute(delete(table).where(col(column).in_(run_ids)))
            for owned in (Run, ApiToken, GitHubSubscription):
                session.execute(delete(owned).where(col(owned.routine_id) == routine.id))
            session.delete(routine)
            _audit(session, actor, "delete", routine.name, f"repo {routine.repo_url}")
        _notify(self._schedule_listeners, name, None)

    def get_routine(self, name: str) -> Routine:
        with self.db.session() as session:
            return self._require(session, name)

    def list_routines(self) -> list[RoutineOverview]:
        with self.db.session() as session:
            routines = session.exec(select(Routine).order_by(col(Routine.name))).all()
            return [RoutineOverview(r, self._last_run(session, r)) for r in routines]

    def routine_overview(self, name: str) -> RoutineOverview:
        with self.db.session() as session:
            routine = self._require(session, name)
            last_run = self._last_run(session, routine)
        next_fires: tuple[datetime, ...] = ()
        if routine.schedule and not routine.paused:
            when = schedule.Schedule(routine.schedule, routine.schedule_tz)
            next_fires = tuple(schedule.next_fire_times(when, utcnow(), 3))
        return RoutineOverview(routine, last_run, next_fires)

    def run_history(self, name: str, limit: int = 10) -> list[RunView]:
        routine = self.get_routine(name)
        with self.db.session() as session:
            runs = session.exec(
                select(Run).where(Run.routine_id == routine.id)
                .order_by(col(Run.id).desc()).limit(limit)
            ).all()
            return [RunView(run, routine) for run in runs]

    # Runs --------------------------------------------------------------------------

    def trigger_run(self, name: str, trigger: Trigger) -> Triggered:
        """Queue a run, whichever door it came through. Written before this returns, so an
        acknowledgement never lies; a repeated `trigger.ref` returns the first run."""
        with self.db.session() as session:
            triggered = self._trigger(session, self._require(session, name), trigger)
        self._queued(triggered)
        return triggered

    def _trigger(self, session: Session, routine: Routine, trigger: Trigger,
                 requester: str | None = None) -> Triggered:
        """The rules of every trigger, inside the caller's unit of work (one commit).

        `requester` is who may not approve the run (the actor, or an API token's creator).
        """
        self._refuse_if_killed(session)
        if routine.paused:
            raise RoutinePaused(routine.name, routine.paused_by)
        earlier = self._run_for_ref(session, routine, trigger)
        if earlier is not None:
            return Triggered(RunView(earlier, routine), replayed=True)
        retry_after = self.rate_limit.hit(routine.name)
        if retry_after is not None:
            raise RateLimited(routine.name, retry_after)
        self._enforce_budgets(session, routine)
        run = Run(routine_id=_id(routine), trigger_kind=trigger.kind,
                  triggered_by=trigger.actor, trigger_ref=trigger.ref, prompt=routine.prompt)
        if trigger.has_payload:
            rendered = payloads.render(routine.payload_template, trigger.payload)
            run.prompt = payloads.compose_prompt(routine.prompt, trigger.describe(), rendered)
            run.payload_hash = payloads.payload_hash(trigger.payload)
        if routine.risk == RiskLevel.HIGH:
            run.status = RunStatus.AWAITING_APPROVAL
        session.add(run)
        try:
            session.flush()  # assigns the id; the row's other values are already known
        except IntegrityError:  # the same ref, committed a moment ago by another call
            session.rollback()
            earlier = self._run_for_ref(session, routine, trigger)
            assert earlier is not None
            return Triggered(RunView(earlier, routine), replayed=True)
        approval = None
        if run.status == RunStatus.AWAITING_APPROVAL:
            approval = self._request_approval(session, run, routine, ApprovalKind.START,
                                              requester or trigger.actor)
        _audit(session, trigger.actor, "run", routine.name,
               f"run #{run.id} by {trigger.kind}" + (" (awaiting approval)" if approval else ""))
        return Triggered(RunView(run, routine), replayed=False, approval=approval)

    def _queued(self, triggered: Triggered) -> None:
        if triggered.replayed:
            return
        listeners = self._approval_listeners if triggered.approval else self._run_queued_listeners
        for listener in listeners:
            listener()

    def _enforce_budgets(self, session: Session, routine: Routine) -> None:
        """Refuse (and record) a trigger over the routine's day, its busy limit, or the
        global spend cap."""
        now = utcnow()
        refusal = budget.runs_per_day_refusal(
            routine.name, self._runs_since(session, routine, budget.day_start(now)),
            routine.max_runs_per_day)
        if refusal is None and routine.busy_policy == BusyPolicy.SKIP:
            busy = budget.busy_refusal(routine.name, self._active_runs(session, routine),
                                       routine.max_concurrent)
            if busy is not None:
                raise RoutineBusy(busy)
        if refusal is None:
            refusal = self._spend(session, now).refusal()
        if refusal is not None:
            with self.db.session() as audit_session:  # kept although the trigger is refused
                _audit(audit_session, "budget", "budget_hit", routine.name, refusal)
            raise BudgetExceeded(refusal)

    # Schedules ----------------------------------------------------------------------

    def set_schedule(self, name: str, expression: str, timezone: str,
                     actor: str) -> tuple[Routine, schedule.Schedule]:
        """Validate and save; fires before now are not owed (the schedule starts now)."""
        when = schedule.parse_schedule(expression, timezone or "UTC",
                                       self.policy.limits.min_schedule_interval)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            routine.schedule, routine.schedule_tz = when.expression, when.timezone
            routine.last_fire_at = utcnow()
            _audit(session, actor, "schedule_set", routine.name,
                   f"{when.expression} ({when.timezone})")
        _notify(self._schedule_listeners, routine.name, when)
        return routine, when

    def clear_schedule(self, name: str, actor: str) -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            if routine.schedule is None:
                raise RoutinesError(f"Routine `{routine.name}` has no schedule.")
            routine.schedule = None
            _audit(session, actor, "schedule_cleared", routine.name)
        _notify(self._schedule_listeners, routine.name, None)
        return routine

    def schedules(self) -> dict[str, schedule.Schedule]:
        """Every saved schedule: the scheduler is rebuilt from these at start-up."""
        with self.db.session() as session:
            rows = session.exec(select(Routine).where(col(Routine.schedule).is_not(None))).all()
        return {r.name: schedule.Schedule(r.schedule or "", r.schedule_tz) for r in rows}

    def schedule_fired(self, name: str, scheduled_for: datetime) -> Triggered | None:
        """A scheduled time came: queue a run, unless the routine is paused (then skip).

        The scheduled time is the run's reference, so the same time never runs twice.
        While the kill switch is engaged the fire is skipped and recorded as missed."""
        engaged = self.kill_switch().engaged
        self._advance_schedule(name, scheduled_for, missed=(scheduled_for,) if engaged else ())
        if engaged:
            return None
        try:
            return self.trigger_run(name, Trigger(TriggerKind.SCHEDULE, "schedule",
                                                  ref=scheduled_for.isoformat()))
        except RoutinePaused:
            return None

    def schedule_missed(self, name: str, times: tuple[datetime, ...], why: str,
                        more: bool = False) -> MissedFires:
        """Scheduled times that will not run: recorded, and returned to be announced."""
        routine = self._advance_schedule(name, times[-1], missed=times, why=why)
        return MissedFires(routine, times, why, more)

    def catch_up_schedules(self, now: datetime, grace_seconds: int) -> list[MissedFires]:
        """At start-up: at most one run per routine for fires missed while the bot was down
        (within the grace period); every other missed fire is returned to be announced."""
        missed: list[MissedFires] = []
        for name, when in self.schedules().items():
            last = self.get_routine(name).last_fire_at
            decision = schedule.catch_up(when, last and _aware(last), now, grace_seconds)
            if decision.missed:
                missed.append(self.schedule_missed(name, decision.missed,
                                                   "the bot was not running", decision.capped))
            if decision.run_for is not None:
                self.schedule_fired(name, decision.run_for)
        return missed

    def _advance_schedule(self, name: str, scheduled_for: datetime,
                          missed: tuple[datetime, ...] = (), why: str = "") -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            last = _aware(routine.last_fire_at) if routine.last_fire_at else scheduled_for
            routine.last_fire_at = max(last, scheduled_for)
            if missed:
                _audit(session, "schedule", "schedule_missed", routine.name,
                       f"{len(missed)} fire(s), last {missed[-1].isoformat()}")
            session.add_all(MissedFire(routine_id=_id(routine), scheduled_for=when, why=why)
                            for when in missed)  # for digests
            return routine

    # GitHub -------------------------------------------------------------------------

    def subscribe_github(self, name: str, spec: str, actor: str) -> github.EventFilter:
        """Add an event filter; the spec is stored in canonical form."""
        wanted = github.parse_filter(spec)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            session.add(GitHubSubscription(routine_id=_id(routine), spec=wanted.describe(),
                                           created_by=actor))
            try:
                session.flush()
            except IntegrityError:
                raise RoutinesError(f"Routine `{routine.name}` already listens to "
                                    f"`{wanted.describe()}`.") from None
            _audit(session, actor, "github_subscribed", routine.name, wanted.describe())
        return wanted

    def unsubscribe_github(self, name: str, actor: str) -> int:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            rows = session.exec(select(GitHubSubscription).where(
                GitHubSubscription.routine_id == routine.id)).all()
            for row in rows:
                session.delete(row)
            _audit(session, actor, "github_unsubscribed", routine.name, f"{len(rows)} filters")
            return len(rows)

    def github_filters(self, name: str) -> list[str]:
        with self.db.session() as session:
            routine = self._require(session, name)
            return list(session.exec(select(GitHubSubscription.spec).where(
                GitHubSubscription.routine_id == routine.id)).all())

    def github_delivery(self, event_name: str, delivery_id: str, payload: object) -> Delivery:
        """Fire every routine whose filters match; a redelivered id fires nothing new."""
        event = github.GitHubEvent.from_payload(event_name, payload)
        with self.db.session() as session:
            self._refuse_if_killed(session)
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
                triggered = self.trigger_run(routine_name, trigger)
            except RoutinesError as exc:
                outcome.refused[routine_name] = str(exc)
                continue
            (outcome.duplicates if triggered.replayed else outcome.fired).append(triggered.view)
        return outcome

    # API tokens ---------------------------------------------------------------------

    def create_token(self, name: str, token_name: str, actor: str) -> str:
        """A new token for the routine's API door; the value is returned once, never stored."""
        if not NAME_RE.match(token_name):
            raise ValidationFailed({"token": "Name tokens with 2-40 lowercase letters, digits "
                                             "and dashes."})
        value = "rt_" + secrets.token_urlsafe(32)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            session.add(ApiToken(routine_id=_id(routine), name=token_name,
                                 token_hash=_token_hash(value), created_by=actor))
            try:
                session.flush()
            except IntegrityError:
                raise ValidationFailed({"token": f"Routine `{routine.name}` already has a "
                                                 f"token named `{token_name}`."}) from None
            _audit(session, actor, "token_created", routine.name, token_name)
        return value

    def list_tokens(self, name: str) -> list[ApiToken]:
        with self.db.session() as session:
            routine = self._require(session, name)
            return list(session.exec(select(ApiToken).where(ApiToken.routine_id == routine.id)
                                     .order_by(col(ApiToken.name))).all())

    def revoke_token(self, name: str, token_name: str, actor: str) -> None:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            token = session.exec(select(ApiToken).where(
                ApiToken.routine_id == routine.id, ApiToken.name == token_name,
                col(ApiToken.revoked_at).is_(None))).first()
            if token is None:
                raise TokenNotFound(routine.name, token_name)
            token.revoked_at, token.revoked_by = utcnow(), actor
            _audit(session, actor, "token_revoked", routine.name, token_name)

    def api_trigger(self, name: str, bearer: str, payload: object,
                    idempotency_key: str | None) -> Triggered:
        """The API door's rule: a live token of this very routine, then a normal trigger,
        all in one unit of work (the token's last use is written with the run)."""
        with self.db.session() as session:
            routine = self._require(session, name)
            token = self._authenticate(session, bearer)
            if token.routine_id != routine.id:
                raise InvalidToken()
            token_id, token_name = token.id, token.name
            triggered = self._trigger(session, routine, Trigger(
                TriggerKind.API, f"token:{token_name}", ref=idempotency_key, payload=payload),
                requester=token.created_by)
            session.execute(update(ApiToken).where(col(ApiToken.id) == token_id)
                            .values(last_used_at=utcnow()))
        self._queued(triggered)
        return triggered

    def api_set_paused(self, name: str, bearer: str, paused: bool) -> Routine:
        """Pause or resume through the API, with the authority of the token's creator
        (so a token outlives nobody's role: a former owner's token is refused)."""
        with self.db.session() as session:
            routine = self._require(session, name)
            token = self._authenticate(session, bearer)
            if token.routine_id != routine.id:
                raise InvalidToken()
            creator = token.created_by
        return (self.pause_routine if paused else self.resume_routine)(name, creator)

    def api_run(self, run_id: int, bearer: str) -> RunView:
        """A run, for a token of its routine; another routine's run is simply not found."""
        with self.db.session() as session:
            token = self._authenticate(session, bearer)
        view = self.get_run(run_id)
        if view.run.routine_id != token.routine_id:
            raise RunNotFound(run_id)
        return view

    def get_run(self, run_id: int) -> RunView:
        with self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise RunNotFound(run_id)
            routine = session.get(Routine, run.routine_id)
            assert routine is not None
            return RunView(run, routine, self._scheduled_retry(session, run, routine))

    def run_events(self, run_id: int) -> list[Event]:
        self.get_run(run_id)
        with self.db.session() as session:
            rows = session.exec(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.seq))
            ).all()
            return [json.loads(row.data) for row in rows]

    def claim_next_run(self) -> RunView | None:
        """Move the oldest startable queued run to `running`; safe when workers race.

        Startable: the kill switch is off, the run is not held, its retry backoff is over,
        and its routine is under its own `max_concurrent`."""
        now = utcnow()
        with self.db.session() as session:
            if KillSwitch.current(session).engaged:
                return None
            candidates = session.exec(
                select(Run.id, Run.routine_id, Routine.max_concurrent)
                .join(Routine, col(Routine.id) == col(Run.routine_id))
                .where(Run.status == RunStatus.QUEUED, col(Run.held_at).is_(None),
                       or_(col(Run.not_before).is_(None), col(Run.not_before) <= now))
                .order_by(col(Run.id)).limit(200)).all()
            busy: set[int] = set()
            for run_id, routine_id, limit in candidates:
                if routine_id in busy or (limit is not None and session.exec(
                        select(func.count()).select_from(Run).where(
                            Run.routine_id == routine_id,
                            Run.status == RunStatus.RUNNING)).one() >= limit):
                    busy.add(routine_id)
                    continue
                claimed = session.execute(
                    update(Run).where(col(Run.id) == run_id,
                                      col(Run.status) == RunStatus.QUEUED)
                    .values(status=RunStatus.RUNNING, started_at=now))
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    return None
                break
            else:
                return None
        return self.get_run(_id_of(run_id))

    def run_spec(self, view: RunView) -> RunSpec:
        routine, run = view.routine, view.run
        return RunSpec(
            run_id=_id(run),
            routine=routine.name,
            prompt=run.prompt,
            repo_url=routine.repo_url,
            branch=routine.branch,
            model=routine.model,
            timeout_seconds=routine.timeout_seconds,
            max_turns=routine.max_turns,
            setup_script=routine.setup_script,
            max_tokens=routine.max_tokens_per_run,
            publish=routine.risk == RiskLevel.MEDIUM,
        )

    def runs_with_status(self, status: RunStatus) -> list[RunView]:
        with self.db.session() as session:
            ids = session.exec(select(Run.id).where(Run.status == status)).all()
        return [self.get_run(run_id) for run_id in ids if run_id is not None]

    def record_container(self, run_id: int, container_id: str) -> None:
        with self.db.session() as session:
            session.execute(update(Run).where(col(Run.id) == run_id)
                            .values(container_id=container_id))

    def record_event(self, run_id: int, seq: int, event: Event) -> None:
        """Store one event, redacted. A replayed `seq` (after adoption) is ignored."""
        row = RunEvent(run_id=run_id, seq=seq, type=str(event.get("type")),
                       data=json.dumps(self.redact.structure(clip_event(event))))
        try:
            with self.db.session() as session:
                session.add(row)
        except IntegrityError:
            pass  # already stored by an earlier process following the same container

    def last_event_seq(self, run_id: int) -> int:
        with self.db.session() as session:
            return int(session.exec(
                select(func.coalesce(func.max(RunEvent.seq), 0)).where(RunEvent.run_id == run_id)
            ).one())

    def finish_run(self, run_id: int, outcome: RunOutcome, input_tokens: int,
                   output_tokens: int, diff: str, commit: str | None = None) -> RunView:
        """Record the verdict once; a run that already finished keeps its first verdict.

        A medium-risk run that succeeded with a kept `commit` asks for publish approval."""
        retried = False
        with self.db.session() as session:
            run = session.get(Run, run_id)
            assert run is not None
            routine = session.get(Routine, run.routine_id)
            assert routine is not None
            outcome = self._stopped_outcome(session, outcome, run.stop_requested_by)
            publish = (commit is not None and routine.risk == RiskLevel.MEDIUM
                       and outcome.status == RunStatus.SUCCEEDED)
            finished = session.execute(
                update(Run)
                .where(col(Run.id) == run_id, col(Run.status).in_(PENDING_STATUSES))
                .values(status=outcome.status,
                        summary=self.redact(outcome.summary) if outcome.summary else None,
                        reason=self.redact(outcome.reason) if outcome.reason else None,
                        failure_kind=outcome.failure,
                        input_tokens=input_tokens, output_tokens=output_tokens,
                        diff=self.redact(diff), finished_at=utcnow(),
                        commit_sha=commit if publish else None))
            approval = None
            if finished.rowcount == 1:  # type: ignore[attr-defined]
                retried = self._queue_retry(session, run_id)
                if publish:
                    session.refresh(run)
                    approval = self._request_approval(session, run, routine,
                                                      ApprovalKind.PUBLISH, run.triggered_by)
        if retried:
            _notify(self._run_queued_listeners)
        if approval is not None:
            _notify(self._approval_listeners)
        return self.get_run(run_id)

    def _stopped_outcome(self, session: Session, outcome: RunOutcome,
                         stopped_by: str | None) -> RunOutcome:
        """A killed container was stopped on purpose: by the kill switch or a cancel."""
        if outcome.status != RunStatus.KILLED:
            return outcome
        if stopped_by == KILL_SWITCH_ACTOR:
            state = KillSwitch.current(session)
            why = f": {state.reason}" if state.reason else ""
            return RunOutcome(RunStatus.KILLED, None, f"killed by the kill switch{why}",
                              FailureKind.KILLED)
        if stopped_by:
            return RunOutcome(RunStatus.CANCELLED, None, f"cancelled by <@{stopped_by}>",
                              FailureKind.CANCELLED)
        return outcome

    def runs_to_announce(self) -> list[RunView]:
        """Finished runs whose result message has not reached Slack yet."""
        with self.db.session() as session:
            ids = session.exec(
                select(Run.id).where(col(Run.notified_at).is_(None),
                                     col(Run.finished_at).is_not(None))
            ).all()
        return [self.get_run(run_id) for run_id in ids if run_id is not None]

    def mark_announced(self, run_id: int) -> None:
        with self.db.session() as session:
            session.execute(update(Run).where(col(Run.id) == run_id)
                            .values(notified_at=utcnow()))

    # Approvals ---------------------------------------------------------------------

    def _request_approval(self, session: Session, run: Run, routine: Routine,
                          kind: ApprovalKind, requester: str) -> Approval:
        now = utcnow()
        approval = Approval(run_id=_id(run), kind=kind, requested_by=requester,
                            requested_at=now, channel_id=routine.channel_id,
                            expires_at=now + timedelta(
                                seconds=self.policy.approval_timeout_seconds))
        session.add(approval)
        session.flush()
        _audit(session, requester, "approval_requested", routine.name,
               f"run #{run.id}: {kind} approval #{approval.id}")
        return approval

    def approvals_to_post(self) -> list[ApprovalView]:
        """Pending requests whose message has not reached Slack yet (retried until it has)."""
        with self.db.session() as session:
            ids = session.exec(select(Approval.id).where(
                Approval.status == ApprovalStatus.PENDING,
                col(Approval.message_ts).is_(None))).all()
        return [self.get_approval(approval_id) for approval_id in ids if approval_id]

    def record_approval_message(self, approval_id: int, channel_id: str, ts: str) -> None:
        with self.db.session() as session:
            session.execute(update(Approval).where(col(Approval.id) == approval_id)
                            .values(channel_id=channel_id, message_ts=ts))

    def get_approval(self, approval_id: int) -> ApprovalView:
        with self.db.session() as session:
            approval = session.get(Approval, approval_id)
            if approval is None:
                raise ApprovalNotFound(approval_id)
            run = session.get(Run, approval.run_id)
            assert run is not None
            routine = session.get(Routine, run.routine_id)
            assert routine is not None
            return ApprovalView(approval, run, routine)

    def decide(self, approval_id: int, actor: str, approve: bool,
               reason: str = "") -> ApprovalView:
        """Approve or reject. The first decision wins (a conditional UPDATE); a later one
        raises `AlreadyDecided` saying who decided. A request past its expiry expires."""
        current = self.get_approval(approval_id)
        self._check(actor, Action.APPROVE, current.routine, requester=current.approval.requested_by)
        if current.approval.status == ApprovalStatus.PENDING and \
                _aware(current.approval.expires_at) <= utcnow():
            self.expire_approvals(utcnow())
            current = self.get_approval(approval_id)
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
        with self.db.session() as session:
            won = session.execute(
                update(Approval).where(col(Approval.id) == approval_id,
                                       col(Approval.status) == ApprovalStatus.PENDING)
                .values(status=status, decided_by=actor, decided_at=utcnow(),
                        reason=self.redact(reason.strip())[:500]))
            if won.rowcount != 1:  # type: ignore[attr-defined]
                raise AlreadyDecided(_decided_text(self.get_approval(approval_id).approval))
            kind = current.approval.kind
            _audit(session, actor, "approve" if approve else "reject", current.routine.name,
                   f"run #{current.run.id} ({kind})" + (f": {reason.strip()}" if reason else ""))
            if kind == ApprovalKind.START:
                self._settle_waiting_run(session, _id(current.run), approve,
                                         None if approve else _rejection(actor, reason))
        self._after_decision(current.approval, approve)
        return self.get_approval(approval_id)

    def _after_decision(self, approval: Approval, approve: bool) -> None:
        if approval.kind == ApprovalKind.START and approve:
            _notify(self._run_queued_listeners)
        elif approval.kind == ApprovalKind.PUBLISH:
            _notify(self._publish_listeners, approval.run_id)  # pushed, or discarded

    def _settle_waiting_run(self, session: Session, run_id: int, start: bool,
                            reason: str | None, status: RunStatus = RunStatus.REJECTED) -> None:
        """A decided high-risk run: to the queue, or finished without running."""
        values: dict[str, object] = {"status": RunStatus.QUEUED} if start else {
            "status": status, "reason": reason, "finished_at": utcnow(),
            "notified_at": utcnow()}  # the request message, updated in place, says it
        session.execute(update(Run).where(
            col(Run.id) == run_id, col(Run.status) == RunStatus.AWAITING_APPROVAL).values(**values))

    def expire_approvals(self, now: datetime) -> list[ApprovalView]:
        """Requests nobody decided in time: a waiting run ends `expired`, a kept commit
        is discarded. Returned so their messages can be updated."""
        with self.db.session() as session:
            due = session.exec(select(Approval).where(
                Approval.status == ApprovalStatus.PENDING,
                col(Approval.expires_at) <= now)).all()
            expired: list[Approval] = []
            for approval in due:
                won = session.execute(
                    update(Approval).where(col(Approval.id) == approval.id,
                                           col(Approval.status) == ApprovalStatus.PENDING)
                    .values(status=ApprovalStatus.EXPIRED, decided_at=now))
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                expired.append(approval)
                routine_name = session.exec(select(Routine.name).join(
                    Run, col(Run.routine_id) == col(Routine.id)).where(
                    Run.id == approval.run_id)).one()
                _audit(session, "approvals", "expire", routine_name,
                       f"run #{approval.run_id} ({approval.kind}) after "
                       f"{self.policy.approval_timeout_seconds}s without a decision")
                if approval.kind == ApprovalKind.START:
                    self._settle_waiting_run(session, approval.run_id, False,
                                             "nobody approved it in time", RunStatus.EXPIRED)
        for approval in expired:
            if approval.kind == ApprovalKind.PUBLISH:
                _notify(self._publish_listeners, approval.run_id)
        return [self.get_approval(_id(a)) for a in expired]

    def publish_pending(self) -> list[RunView]:
        """Runs whose kept commit awaits the push (approved) or the discard (rejected,
        expired): the dispatcher deals with them, also after a restart."""
        with self.db.session() as session:
            ids = session.exec(select(Run.id).join(
                Approval, col(Approval.run_id) == col(Run.id)).where(
                Approval.kind == ApprovalKind.PUBLISH,
                col(Approval.status) != ApprovalStatus.PENDING,
                col(Run.commit_sha).is_not(None), col(Run.published_ref).is_(None))).all()
        return [self.get_run(run_id) for run_id in ids if run_id is not None]

    def publish_decision(self, run_id: int) -> Approval | None:
        with self.db.session() as session:
            return session.exec(select(Approval).where(
                Approval.run_id == run_id, Approval.kind == ApprovalKind.PUBLISH)).first()

    def record_published(self, run_id: int, ref: str | None, detail: str) -> None:
        """The push happened (`ref`), or the kept commit was discarded (`ref` None)."""
        with self.db.session() as session:
            run = session.get(Run, run_id)
            assert run is not None
            routine = session.get(Routine, run.routine_id)
            run.published_ref = ref or ""
            _audit(session, "publisher", "published" if ref else "publish_discarded",
                   routine.name if routine else None, f"run #{run_id}: {detail}")
    # Retries and alerts ----------------------------------------------------------------

    def set_retry_policy(self, name: str, policy: retry.RetryPolicy, actor: str) -> Routine:
        """Set how the routine's failed runs are retried; out of bounds changes nothing."""
        retry.validate_policy(policy, self.policy.retry_limits)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            routine.retry_attempts = policy.attempts
            routine.retry_backoff_seconds = policy.backoff_seconds
            routine.retry_agent_failures = policy.agent_failures
            _audit(session, actor, "retry_policy_set", routine.name, policy.describe())
            return routine

    def retry_run(self, run_id: int, actor: str) -> Triggered:
        """Run a finished, unsuccessful run again: same prompt and payload provenance, by
        `actor`, through every rule of a trigger. Twice for one run gives the first retry."""
        with self.db.session() as session:
            failed = session.get(Run, run_id)
            if failed is None:
                raise RunNotFound(run_id)
            routine = session.get(Routine, failed.routine_id)
            assert routine is not None
            if not RunStatus(failed.status).finished:
                raise RoutinesError(f"Run #{run_id} is still {failed.status}.")
            if failed.status == RunStatus.SUCCEEDED:
                raise RoutinesError(f"Run #{run_id} succeeded: nothing to retry "
                                    f"(`/routine run {routine.name}` runs it again).")
            triggered = self._trigger(session, routine, Trigger(
                TriggerKind.MANUAL, actor, ref=f"retry-of-{run_id}"))
            if not triggered.replayed:
                run = triggered.view.run
                run.prompt, run.payload_hash, run.retry_of = (failed.prompt, failed.payload_hash,
                                                             run_id)
                _audit(session, actor, "run_retried", routine.name, f"#{run_id} as #{run.id}")
        self._queued(triggered)
        return triggered

    def record_announcement(self, run_id: int, channel: str, ts: str) -> None:
        """Where the run's result message is: its log is posted in that thread."""
        with self.db.session() as session:
            session.execute(update(Run).where(col(Run.id) == run_id)
                            .values(announce_channel=channel, announce_ts=ts))

    def _queue_retry(self, session: Session, run_id: int) -> bool:
        """Apply the routine's retry policy to a run that just finished (same unit of work):
        the next attempt keeps the trigger's provenance and waits out its backoff."""
        run = session.get(Run, run_id)
        assert run is not None
        routine = session.get(Routine, run.routine_id)
        assert routine is not None
        decision = retry.decide_retry(retry.policy_of(routine), RunStatus(run.status),
                                      run.attempt, run.failure_kind, utcnow())
        held = routine.paused or KillSwitch.current(session).engaged
        if not decision.retry or held:
            return False
        session.add(Run(routine_id=run.routine_id, trigger_kind=run.trigger_kind,
                        triggered_by=run.triggered_by, payload_hash=run.payload_hash,
                        prompt=run.prompt, attempt=decision.attempt, retry_of=run_id,
                        not_before=decision.not_before))
        return True

    @staticmethod
    def _scheduled_retry(session: Session, run: Run,
                         routine: Routine) -> retry.ScheduledRetry | None:
        if run.status not in retry.FAILURES or run.finished_at is None:
            return None
        nxt = session.exec(select(Run).where(Run.retry_of == run.id,
                                             Run.attempt == run.attempt + 1)).first()
        if nxt is None or nxt.id is None or nxt.not_before is None:
            return None
        delay = (_aware(nxt.not_before) - _aware(run.finished_at)).total_seconds()
        return retry.ScheduledRetry(nxt.id, nxt.attempt,
                                    max(1 + routine.retry_attempts, nxt.attempt),
                                    max(round(delay), 0))

    # Kill switch ---------------------------------------------------------------------

    def kill_switch(self) -> KillSwitch:
        """The switch's stored state (a fresh, disengaged one if it was never touched)."""
        with self.db.session() as session:
            return KillSwitch.current(session)

    def engage_kill_switch(self, actor: str, reason: str) -> KillSwitchReport:
        """Stop everything: running runs are killed, queued and waiting runs are held,
        schedules skip and every door refuses, until an admin disengages."""
        reason = reason.strip()
        if not reason:
            raise ValidationFailed({"reason": "Say why: the reason is announced and kept."})
        self._check(actor, Action.ENGAGE, is_approver_anywhere=self._approves_anything(actor))
        now = utcnow()
        with self.db.session() as session:
            state = KillSwitch.current(session)
            if state.engaged:
                raise RoutinesError(f"The kill switch is already engaged (by "
                                    f"<@{state.changed_by}>: {state.reason}).")
            state.engaged, state.reason, state.changed_by, state.changed_at = (
                True, self.redact(reason)[:500], actor, now)
            session.add(state)
            session.execute(update(Run).where(
                col(Run.status).in_([RunStatus.QUEUED, RunStatus.AWAITING_APPROVAL]),
                col(Run.held_at).is_(None)).values(held_at=now))
            running = list(session.exec(select(Run.id).where(
                Run.status == RunStatus.RUNNING)).all())
            session.execute(update(Run).where(col(Run.id).in_(running))
                            .values(stop_requested_by=KILL_SWITCH_ACTOR))
            _audit(session, actor, "engage", None, state.reason)
            held = self._held(session)
        for run_id in running:
            _notify(self._stop_listeners, _id_of(run_id))
        return KillSwitchReport(self.kill_switch(), len(running), held)

    def disengage_kill_switch(self, actor: str) -> KillSwitchReport:
        """Admins only. Schedules resume from now (no burst of the fires skipped while
        engaged); held runs stay held until released or dropped."""
        self._check(actor, Action.DISENGAGE)
        now = utcnow()
        with self.db.session() as session:
            state = KillSwitch.current(session)
            if not state.engaged:
                raise RoutinesError("The kill switch is not engaged.")
            state.engaged, state.changed_by, state.changed_at = False, actor, now
            session.execute(update(Routine).where(col(Routine.schedule).is_not(None))
                            .values(last_fire_at=now))
            _audit(session, actor, "disengage", None, f"was engaged for: {state.reason}")
            held = self._held(session)
        return KillSwitchReport(self.kill_switch(), 0, held)

    def kill_switch_report(self) -> KillSwitchReport:
        with self.db.session() as session:
            held = self._held(session)
        return KillSwitchReport(self.kill_switch(), 0, held)

    def release_held(self, actor: str, drop: bool) -> HeldRuns:
        """After disengaging: let held runs go on (`drop` False) or cancel them."""
        self._check(actor, Action.DISENGAGE)
        if self.kill_switch().engaged:
            raise RoutinesError("Disengage the kill switch first: held runs cannot start "
                                "while it is engaged.")
        with self.db.session() as session:
            held = self._held(session)
            held_ids = select(Run.id).where(col(Run.held_at).is_not(None),
                                            col(Run.status).in_(PENDING_STATUSES))
            if drop:
                session.execute(update(Approval).where(
                    col(Approval.run_id).in_(held_ids),
                    col(Approval.status) == ApprovalStatus.PENDING).values(
                    status=ApprovalStatus.WITHDRAWN, decided_by=actor, decided_at=utcnow()))
                session.execute(update(Run).where(col(Run.id).in_(held_ids)).values(
                    status=RunStatus.CANCELLED, finished_at=utcnow(), notified_at=utcnow(),
                    reason=f"dropped after the kill switch by {actor}"))
            else:
                session.execute(update(Run).where(col(Run.id).in_(held_ids))
                                .values(held_at=None))
            _audit(session, actor, "held_dropped" if drop else "held_released", None,
                   f"{held.queued} queued, {held.awaiting_approval} awaiting approval")
        if not drop:
            _notify(self._run_queued_listeners)
        return held

    def cancel_run(self, run_id: int, actor: str) -> RunView:
        """Stop one run: a waiting or queued one ends at once, a running one is killed."""
        view = self.get_run(run_id)
        self._check(actor, Action.CANCEL, view.routine, requester=view.run.triggered_by)
        if view.run.status.finished:
            raise RoutinesError(f"Run #{run_id} already ended ({view.run.status}).")
        with self.db.session() as session:
            session.execute(update(Approval).where(
                col(Approval.run_id) == run_id, col(Approval.status) == ApprovalStatus.PENDING)
                .values(status=ApprovalStatus.WITHDRAWN, decided_by=actor, decided_at=utcnow()))
            ended = session.execute(update(Run).where(
                col(Run.id) == run_id,
                col(Run.status).in_([RunStatus.QUEUED, RunStatus.AWAITING_APPROVAL])).values(
                status=RunStatus.CANCELLED, finished_at=utcnow(),
                reason=f"cancelled by {actor} before it started"))
            if ended.rowcount != 1:  # type: ignore[attr-defined]
                session.execute(update(Run).where(col(Run.id) == run_id)
                                .values(stop_requested_by=actor))
            _audit(session, actor, "cancel", view.routine.name, f"run #{run_id}")
        if ended.rowcount != 1:  # type: ignore[attr-defined]
            _notify(self._stop_listeners, run_id)
        return self.get_run(run_id)

    def _refuse_if_killed(self, session: Session) -> None:
        state = KillSwitch.current(session)
        if state.engaged:
            raise KillSwitchEngaged(state.reason, state.changed_by)

    def _approves_anything(self, actor: str) -> bool:
        with self.db.session() as session:
            approvers = session.exec(select(Routine.approvers).where(
                Routine.approvers != "")).all()
        return any(self.roles.holds(actor, roles.split(a)) for a in approvers)

    @staticmethod
    def _held(session: Session) -> HeldRuns:
        counts = dict(session.exec(select(Run.status, func.count()).where(
            col(Run.held_at).is_not(None), col(Run.status).in_(PENDING_STATUSES))
            .group_by(col(Run.status))).all())
        return HeldRuns(int(counts.get(RunStatus.QUEUED, 0)),
                        int(counts.get(RunStatus.AWAITING_APPROVAL, 0)))

    # Budgets -------------------------------------------------------------------------

    def spend_today(self) -> budget.Spend:
        with self.db.session() as session:
            return self._spend(session, utcnow())

    def set_spend_cap(self, amount_usd: float, actor: str) -> budget.Spend:
        self._check(actor, Action.RAISE_CAP)
        if not 0 <= amount_usd <= 1_000_000:
            raise ValidationFailed({"cap": "Use an amount in dollars from 0 (no cap) to "
                                           "1,000,000."})
        with self.db.session() as session:
            cap = session.get(SpendCap, 1) or SpendCap(id=1, cap_usd=0, changed_by=actor)
            cap.cap_usd, cap.changed_by, cap.changed_at = amount_usd, actor, utcnow()
            session.add(cap)
            _audit(session, actor, "budget_cap", None, f"daily spend cap ${amount_usd:.2f}")
        return self.spend_today()

    def spend_alert_due(self) -> budget.Spend | None:
        """The spend level, the first time today it reaches 80% or 100% (then recorded, so
        each level is announced once a day)."""
        now = utcnow()
        with self.db.session() as session:
            spend = self._spend(session, now)
            if spend.level is budget.SpendLevel.OK:
                return None
            action = f"spend_{spend.level}"
            said = session.exec(select(func.count()).select_from(AuditEntry).where(
                AuditEntry.action == action,
                col(AuditEntry.at) >= budget.day_start(now))).one()
            if said:
                return None
            _audit(session, "budget", action, None,
                   f"${spend.spent_usd:.2f} of ${spend.cap_usd:.2f} today")
            return spend

    def _spend(self, session: Session, now: datetime) -> budget.Spend:
        rows = session.exec(select(Routine.model, func.sum(Run.input_tokens),
                                   func.sum(Run.output_tokens))
                            .join(Routine, col(Routine.id) == col(Run.routine_id))
                            .where(col(Run.started_at) >= budget.day_start(now))
                            .group_by(col(Routine.model))).all()
        spent = sum(self.policy.prices.cost_usd(model, int(i or 0), int(o or 0))
                    for model, i, o in rows)
        cap = session.get(SpendCap, 1)
        return budget.Spend(spent, cap.cap_usd if cap else self.policy.daily_spend_cap_usd)

    @staticmethod
    def _runs_since(session: Session, routine: Routine, since: datetime) -> int:
        return int(session.exec(select(func.count()).select_from(Run).where(
            Run.routine_id == routine.id, col(Run.queued_at) >= since,
            col(Run.status).not_in([RunStatus.REJECTED, RunStatus.EXPIRED,
                                    RunStatus.CANCELLED]))).one())

    @staticmethod
    def _active_runs(session: Session, routine: Routine, pending: bool = False) -> int:
        statuses = PENDING_STATUSES if pending else [RunStatus.QUEUED, RunStatus.RUNNING]
        return int(session.exec(select(func.count()).select_from(Run).where(
            Run.routine_id == routine.id, col(Run.status).in_(statuses))).one())

    # Audit ---------------------------------------------------------------------------

    def audit_entries(self, routine: str | None = None, limit: int | None = 20,
                      after_id: int = 0, page: int = 500) -> list[AuditEntry]:
        """The latest `limit`, newest first (for Slack); with no limit, a page of the
        export, oldest first, after `after_id`."""
        query = select(AuditEntry).where(col(AuditEntry.id) > after_id)
        if routine:
            query = query.where(AuditEntry.routine == routine.strip().lower())
        if limit is None:
            query = query.order_by(col(AuditEntry.id)).limit(page)
        else:
            query = query.order_by(col(AuditEntry.id).desc()).limit(limit)
        with self.db.session() as session:
            return list(session.exec(query).all())

    # Helpers -----------------------------------------------------------------------

    def _check(self, actor: str, action: Action, routine: Routine | None = None,
               requester: str | None = None, is_approver_anywhere: bool = False) -> None:
        """The role rule for every door; refused attempts are recorded too."""
        subject = RoutineRoles(routine.name, roles.split(routine.owners),
                               roles.split(routine.approvers)) if routine else None
        try:
            self.roles.check(actor, action, subject, requester, is_approver_anywhere)
        except Forbidden as exc:
            with self.db.session() as session:
                _audit(session, actor, "refused", routine.name if routine else None,
                       f"{action.value}: {exc}")
            raise

    @staticmethod
    def _find(session: Session, name: str) -> Routine | None:
        return session.exec(select(Routine).where(Routine.name == name.strip().lower())).first()

    @classmethod
    def _require(cls, session: Session, name: str) -> Routine:
        routine = cls._find(session, name)
        if routine is None:
            raise RoutineNotFound(name)
        return routine

    @staticmethod
    def _run_for_ref(session: Session, routine: Routine, trigger: Trigger) -> Run | None:
        if trigger.ref is None:
            return None
        return session.exec(select(Run).where(
            Run.routine_id == routine.id, Run.trigger_kind == trigger.kind,
            Run.trigger_ref == trigger.ref)).first()

    @staticmethod
    def _authenticate(session: Session, bearer: str) -> ApiToken:
        token = session.exec(select(ApiToken).where(
            ApiToken.token_hash == _token_hash(bearer),
            col(ApiToken.revoked_at).is_(None))).first() if bearer else None
        if token is None:
            raise InvalidToken()
        return token

    @staticmethod
    def _last_run(session: Session, routine: Routine) -> Run | None:
        return session.exec(
            select(Run).where(Run.routine_id == routine.id).order_by(col(Run.id).desc()).limit(1)
        ).first()


def _audit(session: Session, actor: str, action: str, routine: str | None,
           details: str = "") -> None:
    session.add(AuditEntry(actor=actor, action=action, routine=routine, details=details))


KILL_SWITCH_ACTOR = "kill switch"


def _notify(listeners: list[Callable[..., None]], *args: object) -> None:
    for listener in listeners:
        listener(*args)


def _decided_text(approval: Approval) -> str:
    if approval.status == ApprovalStatus.EXPIRED:
        return "This request expired before anyone decided."
    if approval.status == ApprovalStatus.WITHDRAWN:
        return f"This request was withdrawn (the run was cancelled by {approval.decided_by})."
    return (f"Already {approval.status} by <@{approval.decided_by}> at "
            f"{_aware(approval.decided_at or utcnow()).strftime('%H:%M:%S UTC')}.")


def _rejection(actor: str, reason: str) -> str:
    return f"rejected by <@{actor}>" + (f": {reason.strip()}" if reason.strip() else "")


def _id_of(value: int | None) -> int:
    assert value is not None
    return value


def _token_hash(value: str) -> str:
    # Tokens are 256-bit random values: a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(value.encode()).hexdigest()


def _id(row: Routine | Run | Approval) -> int:
    assert row.id is not None, "row must be flushed before its id is used"
    return row.id


def _aware(value: datetime) -> datetime:
    """SQLite drops the time zone; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
