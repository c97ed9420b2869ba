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
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot import github, schedule
from bot import payload as payloads
from bot.db import Database
from bot.errors import (
    InvalidToken,
    RateLimited,
    RoutineNotFound,
    RoutinePaused,
    RoutinesError,
    RunNotFound,
    TokenNotFound,
    ValidationFailed,
)
from bot.models import (
    PENDING_STATUSES,
    ApiToken,
    AuditEntry,
    GitHubSubscription,
    KillSwitch,
    MissedFire,
    Routine,
    Run,
    RunEvent,
    RunStatus,
    TriggerKind,
    utcnow,
)
from bot.ratelimit import SlidingWindow
from bot.redaction import Redactor
from bot.routine import NAME_RE, RoutineDraft, RoutineLimits, normalized, validate
from bot.run import RunOutcome
from bot.settings import Settings
from bot.trigger import Trigger
from runner.contract import Event, RunSpec


@dataclass(frozen=True)
class RunView:
    """A run with its routine, as adapters show it."""

    run: Run
    routine: Routine

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


class RoutineService:
    def __init__(self, db: Database, policy: ServicePolicy, redact: Redactor) -> None:
        self.db = db
        self.policy = policy
        self.redact = redact
        self.rate_limit = SlidingWindow(policy.triggers_per_minute, 60)
        self._run_queued_listeners: list[Callable[[], None]] = []
        self._schedule_listeners: list[ScheduleListener] = []

    def on_run_queued(self, listener: Callable[[], None]) -> None:
        """Called after a run is durably queued (the dispatcher wakes up on it)."""
        self._run_queued_listeners.append(listener)

    def on_schedule_changed(self, listener: ScheduleListener) -> None:
        """Called after a routine's schedule is saved or removed (the scheduler follows)."""
        self._schedule_listeners.append(listener)

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
            for listener in self._schedule_listeners:
                listener(routine.name, schedule.Schedule(routine.schedule, routine.schedule_tz))
        return routine

    def pause_routine(self, name: str, actor: str) -> Routine:
        """Hold every trigger of the routine (schedules skip, doors refuse) until resumed."""
        with self.db.session() as session:
            routine = self._require(session, name)
            if routine.paused:
                raise RoutinesError(f"Routine `{routine.name}` is already paused "
                                    f"(by {routine.paused_by}).")
            routine.paused_at, routine.paused_by = utcnow(), actor
            _audit(session, actor, "pause", routine.name)
            return routine

    def resume_routine(self, name: str, actor: str) -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            if not routine.paused:
                raise RoutinesError(f"Routine `{routine.name}` is not paused.")
            routine.paused_at, routine.paused_by = None, None
            _audit(session, actor, "resume", routine.name)
            return routine

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

    def _trigger(self, session: Session, routine: Routine, trigger: Trigger) -> Triggered:
        """The rules of every trigger, inside the caller's unit of work (one commit)."""
        if routine.paused:
            raise RoutinePaused(routine.name, routine.paused_by)
        earlier = self._run_for_ref(session, routine, trigger)
        if earlier is not None:
            return Triggered(RunView(earlier, routine), replayed=True)
        retry_after = self.rate_limit.hit(routine.name)
        if retry_after is not None:
            raise RateLimited(routine.name, retry_after)
        run = Run(routine_id=_id(routine), trigger_kind=trigger.kind,
                  triggered_by=trigger.actor, trigger_ref=trigger.ref, prompt=routine.prompt)
        if trigger.has_payload:
            rendered = payloads.render(routine.payload_template, trigger.payload)
            run.prompt = payloads.compose_prompt(routine.prompt, trigger.describe(), rendered)
            run.payload_hash = payloads.payload_hash(trigger.payload)
        session.add(run)
        try:
            session.flush()  # assigns the id; the row's other values are already known
        except IntegrityError:  # the same ref, committed a moment ago by another call
            session.rollback()
            earlier = self._run_for_ref(session, routine, trigger)
            assert earlier is not None
            return Triggered(RunView(earlier, routine), replayed=True)
        return Triggered(RunView(run, routine), replayed=False)

    def _queued(self, triggered: Triggered) -> None:
        if not triggered.replayed:
            for listener in self._run_queued_listeners:
                listener()

    # Schedules ----------------------------------------------------------------------

    def set_schedule(self, name: str, expression: str, timezone: str,
                     actor: str) -> tuple[Routine, schedule.Schedule]:
        """Validate and save; fires before now are not owed (the schedule starts now)."""
        when = schedule.parse_schedule(expression, timezone or "UTC",
                                       self.policy.limits.min_schedule_interval)
        with self.db.session() as session:
            routine = self._require(session, name)
            routine.schedule, routine.schedule_tz = when.expression, when.timezone
            routine.last_fire_at = utcnow()
            _audit(session, actor, "schedule_set", routine.name,
                   f"{when.expression} ({when.timezone})")
        for listener in self._schedule_listeners:
            listener(routine.name, when)
        return routine, when

    def clear_schedule(self, name: str, actor: str) -> Routine:
        with self.db.session() as session:
            routine = self._require(session, name)
            if routine.schedule is None:
                raise RoutinesError(f"Routine `{routine.name}` has no schedule.")
            routine.schedule = None
            _audit(session, actor, "schedule_cleared", routine.name)
        for listener in self._schedule_listeners:
            listener(routine.name, None)
        return routine

    def schedules(self) -> dict[str, schedule.Schedule]:
        """Every saved schedule: the scheduler is rebuilt from these at start-up."""
        with self.db.session() as session:
            rows = session.exec(select(Routine).where(col(Routine.schedule).is_not(None))).all()
        return {r.name: schedule.Schedule(r.schedule or "", r.schedule_tz) for r in rows}

    def schedule_fired(self, name: str, scheduled_for: datetime) -> Triggered | None:
        """A scheduled time came: queue a run, unless the routine is paused (then skip).

        The scheduled time is the run's reference, so the same time never runs twice."""
        self._advance_schedule(name, scheduled_for)
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
                TriggerKind.API, f"token:{token_name}", ref=idempotency_key, payload=payload))
            session.execute(update(ApiToken).where(col(ApiToken.id) == token_id)
                            .values(last_used_at=utcnow()))
        self._queued(triggered)
        return triggered

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
            return RunView(run, routine)

    def run_events(self, run_id: int) -> list[Event]:
        self.get_run(run_id)
        with self.db.session() as session:
            rows = session.exec(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.seq))
            ).all()
            return [json.loads(row.data) for row in rows]

    def claim_next_run(self) -> RunView | None:
        """Move the oldest queued run to `running`; safe when several workers race."""
        with self.db.session() as session:
            run_id = session.exec(
                select(Run.id).where(Run.status == RunStatus.QUEUED)
                .order_by(col(Run.id)).limit(1)
            ).first()
            if run_id is None:
                return None
            claimed = session.execute(
                update(Run).where(col(Run.id) == run_id, col(Run.status) == RunStatus.QUEUED)
                .values(status=RunStatus.RUNNING, started_at=utcnow())
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
        return self.get_run(run_id)

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
                       data=self.redact(json.dumps(event)))
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
                   output_tokens: int, diff: str) -> RunView:
        """Record the verdict once; a run that already finished keeps its first verdict."""
        with self.db.session() as session:
            session.execute(
                update(Run)
                .where(col(Run.id) == run_id, col(Run.status).in_(PENDING_STATUSES))
                .values(status=outcome.status,
                        summary=self.redact(outcome.summary) if outcome.summary else None,
                        reason=self.redact(outcome.reason) if outcome.reason else None,
                        input_tokens=input_tokens, output_tokens=output_tokens,
                        diff=self.redact(diff), finished_at=utcnow())
            )
        return self.get_run(run_id)

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

    # Kill switch ---------------------------------------------------------------------

    def kill_switch(self) -> KillSwitch:
        """The switch's stored state (a fresh, disengaged one if it was never touched)."""
        with self.db.session() as session:
            return session.get(KillSwitch, 1) or KillSwitch(id=1)

    # Helpers -----------------------------------------------------------------------

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


def _token_hash(value: str) -> str:
    # Tokens are 256-bit random values: a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(value.encode()).hexdigest()


def _id(row: Routine | Run) -> int:
    assert row.id is not None, "row must be flushed before its id is used"
    return row.id


def _aware(value: datetime) -> datetime:
    """SQLite drops the time zone; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
