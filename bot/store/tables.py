"""Database tables. The database, not memory, is the truth: a restart loses nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, UniqueConstraint
from sqlmodel import Field, Session, SQLModel

from bot.core.statuses import (
    ApprovalKind,
    ApprovalStatus,
    BusyPolicy,
    FailureKind,
    RiskLevel,
    RunStatus,
    StopKind,
    TriggerKind,
)
from runner.contract import Engine, RepoConfig
from runner.egress_policy import EgressPolicy, NetworkMode


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite drops the time zone; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def timestamp_field(*, required: bool = False) -> Any:
    """A time-zone-aware column: every time is stored and compared in UTC."""
    if required:
        return Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    return Field(default=None, sa_type=DateTime(timezone=True))


class Routine(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=40)
    prompt: str
    repo_url: str
    branch: str = "main"
    setup_script: str = ""
    channel_id: str
    model: str
    timeout_seconds: int
    max_turns: int
    payload_template: str = ""
    schedule: str | None = None  # see bot.core.schedule.parse_schedule
    schedule_tz: str = "UTC"
    last_fire_at: datetime | None = timestamp_field()  # the last scheduled time dealt with
    created_by: str
    created_at: datetime = timestamp_field(required=True)
    paused_at: datetime | None = timestamp_field()
    paused_by: str | None = None
    # Roles: Slack user ids, comma-separated; a user group is written `subteam:S0123`.
    owners: str = ""  # the creator by default; owners and admins may change the routine
    approvers: str = ""  # who may approve its runs (admins always may)
    risk: RiskLevel = RiskLevel.LOW
    # Budgets (None: no limit of its own; the global daily spend cap still applies)
    max_runs_per_day: int | None = None
    max_concurrent: int | None = None
    busy_policy: BusyPolicy = BusyPolicy.QUEUE
    max_tokens_per_run: int | None = None
    # Retries of infrastructure faults (container, engine, Anthropic API overloaded/5xx)
    retry_attempts: int = 0  # extra attempts after the first
    retry_backoff_seconds: int = 30  # doubled after each attempt
    retry_agent_failures: bool = False  # also retry when the agent itself reported failure
    # Egress (`runner.egress_policy`): trusted (the operator's list), none, custom, full.
    network: NetworkMode = NetworkMode.TRUSTED
    network_hosts: str = ""  # custom: the patterns, comma-separated
    # The file it is kept in (`routines apply`); None: made in Slack or the CLI. A routine
    # managed from files refuses edits elsewhere unless an admin forces them.
    managed_by: str | None = None
    # Which agent runs (README "Engines"), and whether a repository's own hooks and MCP
    # servers may run under Claude Code (`repo-config=trusted`: set by owners, audited).
    engine: Engine = Engine.BUILTIN
    repo_config: RepoConfig = RepoConfig.UNTRUSTED

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    @property
    def egress(self) -> EgressPolicy:
        """The stored setting (`trusted` without its list: see `EgressPolicy.with_trusted`)."""
        return EgressPolicy(self.network, tuple(p for p in self.network_hosts.split(",") if p))


class Run(SQLModel, table=True):
    """One execution of a routine, with its provenance: which door, who, and what came in.

    `trigger_ref` is the caller's Idempotency-Key or GitHub's delivery id: unique per
    routine and trigger kind, so a retried call or a redelivery never runs twice."""

    __table_args__ = (UniqueConstraint("routine_id", "trigger_kind", "trigger_ref"),)

    id: int | None = Field(default=None, primary_key=True)
    routine_id: int = Field(foreign_key="routine.id", index=True)
    status: RunStatus = Field(default=RunStatus.QUEUED, index=True)
    trigger_kind: TriggerKind = TriggerKind.MANUAL
    triggered_by: str
    trigger_ref: str | None = None
    payload_hash: str | None = None
    prompt: str
    queued_at: datetime = timestamp_field(required=True)
    started_at: datetime | None = timestamp_field()
    finished_at: datetime | None = timestamp_field()
    container_id: str | None = None
    summary: str | None = None
    reason: str | None = None
    failure_kind: FailureKind | None = None  # `reason` as data; None: succeeded, or not yet
    input_tokens: int = 0
    output_tokens: int = 0
    diff: str = ""
    notified_at: datetime | None = timestamp_field()
    attempt: int = 1  # 2, 3...: an automatic retry of `retry_of` after an infrastructure fault
    retry_of: int | None = Field(default=None, foreign_key="run.id")
    not_before: datetime | None = timestamp_field()  # a retry waits out its backoff
    held_at: datetime | None = timestamp_field()  # held by the kill switch until released
    stop_requested_by: str | None = None  # who engaged the kill switch or cancelled it
    stop_kind: StopKind | None = None  # why it was asked to stop
    commit_sha: str | None = None  # medium risk: the kept commit, pushed after approval
    published_ref: str | None = None  # where it was pushed
    announce_channel: str | None = None  # where the result message was posted...
    announce_ts: str | None = None  # ...and its ts: the log is posted in its thread
    # Started by a Workflow Builder step: the step's function execution, completed (with the
    # run's outputs, or failed with its reason) once when the run ends.
    workflow_execution_id: str | None = None
    workflow_completed_at: datetime | None = timestamp_field()
    # Scale-out: the worker that claimed it ("host/name"), and until when its claim holds
    # unless that worker's heartbeat renews it; past it, the run is the worker's no more.
    worker_id: str | None = Field(default=None, index=True, max_length=128)
    lease_until: datetime | None = timestamp_field()
    # Its result message is posted by one process: the one that claimed it, until then.
    announce_claimed_by: str | None = Field(default=None, max_length=128)
    announce_claim_until: datetime | None = timestamp_field()


class RunEvent(SQLModel, table=True):
    """One line of a run's log, already redacted. `seq` orders it and makes replay idempotent."""

    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    seq: int
    type: str
    data: str
    created_at: datetime = timestamp_field(required=True)


class ApiToken(SQLModel, table=True):
    """A routine's API token. Only a hash is stored: the value is shown once, at creation."""

    __table_args__ = (UniqueConstraint("routine_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    routine_id: int = Field(foreign_key="routine.id", index=True)
    name: str
    token_hash: str = Field(index=True, unique=True)
    created_by: str
    created_at: datetime = timestamp_field(required=True)
    revoked_at: datetime | None = timestamp_field()
    revoked_by: str | None = None
    last_used_at: datetime | None = timestamp_field()


class AuditEntry(SQLModel, table=True):
    """Who did what, when: every change of a routine's state is recorded here."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = timestamp_field(required=True)
    actor: str
    action: str = Field(index=True)
    routine: str | None = Field(default=None, index=True)
    details: str = ""


class GitHubSubscription(SQLModel, table=True):
    """A routine listens to GitHub events matching `spec` (see `bot.core.github.parse_filter`)."""

    __table_args__ = (UniqueConstraint("routine_id", "spec"),)

    id: int | None = Field(default=None, primary_key=True)
    routine_id: int = Field(foreign_key="routine.id", index=True)
    spec: str
    created_by: str
    created_at: datetime = timestamp_field(required=True)


class Approval(SQLModel, table=True):
    """A request for a human decision on one run, and the decision. The first decision
    wins: it is written by a conditional UPDATE on `status = pending`."""

    __table_args__ = (UniqueConstraint("run_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    kind: ApprovalKind
    status: ApprovalStatus = Field(default=ApprovalStatus.PENDING, index=True)
    requested_by: str  # who may not approve it (four eyes)
    requested_at: datetime = timestamp_field(required=True)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))
    decided_by: str | None = None
    decided_at: datetime | None = timestamp_field()
    reason: str = ""  # why it was rejected (optional)
    channel_id: str = ""  # where the request message is (updated in place)
    message_ts: str | None = None  # None until the request reached Slack


class SpendCap(SQLModel, table=True):
    """The global daily spend cap as raised or lowered by an admin (one row, id 1);
    absent, the configured default applies."""

    id: int | None = Field(default=None, primary_key=True)
    cap_usd: float
    changed_by: str
    changed_at: datetime = timestamp_field(required=True)


class KillSwitch(SQLModel, table=True):
    """The kill switch: one row (id 1). Stored, so an engaged switch survives a restart."""

    id: int | None = Field(default=None, primary_key=True)
    engaged: bool = False
    reason: str = ""
    changed_by: str = ""
    changed_at: datetime | None = timestamp_field()

    @classmethod
    def current(cls, session: Session) -> KillSwitch:
        """The stored state, or a fresh disengaged one if the switch was never touched."""
        return session.get(cls, 1) or cls(id=1)


class HomeViewer(SQLModel, table=True):
    """A user who opened the App Home tab: their Home is republished after changes, and
    a restart keeps the list."""

    user_id: str = Field(primary_key=True, max_length=32)
    opened_at: datetime = timestamp_field(required=True)


class DigestSubscription(SQLModel, table=True):
    """A channel's scheduled digest of runs. `last_sent_at` starts the next digest's period
    (the subscription time until the first one is sent)."""

    id: int | None = Field(default=None, primary_key=True)
    channel_id: str = Field(index=True, unique=True, max_length=40)
    schedule: str  # cron or interval, see bot.core.schedule.parse_schedule
    schedule_tz: str = "UTC"
    last_sent_at: datetime = timestamp_field(required=True)
    created_by: str
    created_at: datetime = timestamp_field(required=True)


class MissedFire(SQLModel, table=True):
    """A scheduled time that did not run (the bot was down, the scheduler was late); once
    per routine and time, whichever process saw it first (its notice is posted once)."""

    __table_args__ = (UniqueConstraint("routine_id", "scheduled_for",
                                       name="uq_missedfire_routine_scheduled_for"),)
    id: int | None = Field(default=None, primary_key=True)
    routine_id: int = Field(foreign_key="routine.id", index=True)
    scheduled_for: datetime = timestamp_field(required=True)
    why: str = ""
    # Digests select by when it was recorded, so each one is reported exactly once.
    recorded_at: datetime = Field(default_factory=utcnow, index=True,
                                  sa_type=DateTime(timezone=True))


class Worker(SQLModel, table=True):
    """A process serving this database (`routines serve` or `routines worker`), by its
    stable worker id "host/name"; its heartbeat says it is alive."""

    id: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=63)
    name: str = Field(max_length=63)
    role: str = Field(max_length=16)  # "serve" or "worker"
    executes: bool = True  # whether it claims runs
    pid: int
    started_at: datetime = timestamp_field(required=True)
    heartbeat_at: datetime = timestamp_field(required=True)
    stopped_at: datetime | None = timestamp_field()  # None: running, or died without saying


class Lease(SQLModel, table=True):
    """Something one process at a time does (the scheduler), held by a worker id until
    `until` unless renewed; a lease past its time may be taken by any process."""

    name: str = Field(primary_key=True, max_length=40)
    holder: str = Field(max_length=128)
    until: datetime = Field(sa_type=DateTime(timezone=True))
    taken_at: datetime = timestamp_field(required=True)  # when this holder took it


class TriggerHit(SQLModel, table=True):
    """One accepted trigger of a routine, for the rate limit every process shares (old
    hits are pruned as new ones come)."""

    id: int | None = Field(default=None, primary_key=True)
    routine_id: int = Field(foreign_key="routine.id")
    at: datetime = Field(sa_type=DateTime(timezone=True))


class RunRollup(SQLModel, table=True):
    """The runs of one routine that finished in one hour (UTC) with one status, added up: what a
    digest reads for the whole hours of its period instead of the runs themselves.

    Kept by `bot.store.rollups.count_finished` in the unit of work that moves runs to a
    finished status, exactly once per run; built from the stored runs by migration 0008.
    The primary key leads with the hour, so a period is one range of it (a table without
    rowid on SQLite: the rows are stored in that order)."""

    __table_args__ = {"sqlite_with_rowid": False}

    hour: datetime = Field(primary_key=True, sa_type=DateTime(timezone=True))
    routine_id: int = Field(primary_key=True, foreign_key="routine.id")
    status: RunStatus = Field(primary_key=True)
    runs: int = Field(sa_type=BigInteger)
    input_tokens: int = Field(sa_type=BigInteger)
    output_tokens: int = Field(sa_type=BigInteger)
    no_report: int = Field(sa_type=BigInteger)  # failed without a self-report
    # The slowest run of the group (the longest, then the lowest id: a digest's order), so a
    # digest looks for its slowest runs in a few groups, not in every run of the period.
    slowest_seconds: float | None = None
    slowest_run_id: int | None = None  # a run id (no foreign key: it goes with its routine)


class RunDayRollup(SQLModel, table=True):
    """The runs of one routine that finished in one UTC day with one status, added up: what a
    digest reads for the whole days of its period (a week is 7 of these per group, not 168
    hourly rollups). Kept with the hourly ones (`RunRollup`), in the same unit of work, by
    `bot.store.rollups.count_finished`; built from the stored runs by migration 0011. The
    slowest runs are looked for through the hourly rollups only."""

    __table_args__ = {"sqlite_with_rowid": False}

    day: datetime = Field(primary_key=True, sa_type=DateTime(timezone=True))
    routine_id: int = Field(primary_key=True, foreign_key="routine.id")
    status: RunStatus = Field(primary_key=True)
    runs: int = Field(sa_type=BigInteger)
    input_tokens: int = Field(sa_type=BigInteger)
    output_tokens: int = Field(sa_type=BigInteger)
    no_report: int = Field(sa_type=BigInteger)  # failed without a self-report


# Digests aggregate the runs finished in a period: this index covers that query (range on
# finished_at, GROUP BY routine and status, sums of tokens, durations, the count of runs
# without a self-report) without table reads.
_RUN_COLUMNS = Run.__table__.c  # type: ignore[attr-defined]
Index("ix_run_digest", *(_RUN_COLUMNS[name] for name in (
    "finished_at", "status", "routine_id", "input_tokens", "output_tokens", "started_at",
    "failure_kind")))

# The rate limit counts a routine's hits in its window.
_HIT_COLUMNS = TriggerHit.__table__.c  # type: ignore[attr-defined]
Index("ix_triggerhit_routine_at", _HIT_COLUMNS["routine_id"], _HIT_COLUMNS["at"])

# A digest's slowest runs start from the groups whose own slowest runs come first: walked
# down this index, a period's first groups are found without sorting all of its rollups.
_ROLLUP_COLUMNS = RunRollup.__table__.c  # type: ignore[attr-defined]
Index("ix_runrollup_slowest", _ROLLUP_COLUMNS["slowest_seconds"].desc(),
      _ROLLUP_COLUMNS["slowest_run_id"])
