"""The product's states and kinds, and every group of run statuses. Pure: tables,
services and doors all speak these."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # a high-risk run waits for a human to start
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ERROR = "error"  # an infrastructure fault: container, engine or Anthropic API
    KILLED = "killed"  # stopped by the kill switch
    CANCELLED = "cancelled"  # stopped by `/routine cancel`, or dropped while held
    REJECTED = "rejected"  # an approver said no before it started
    EXPIRED = "expired"  # nobody decided in time

    @property
    def finished(self) -> bool:
        return self not in PENDING_STATUSES


# Every group of statuses the bot reasons about, defined once.
PENDING_STATUSES = frozenset({RunStatus.AWAITING_APPROVAL, RunStatus.QUEUED,
                              RunStatus.RUNNING})  # not finished yet
NOT_STARTED = frozenset({RunStatus.AWAITING_APPROVAL, RunStatus.QUEUED})  # held, or cancelled
ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})  # what `max-concurrent` counts
NEVER_RAN = frozenset({RunStatus.REJECTED, RunStatus.EXPIRED,
                       RunStatus.CANCELLED})  # not counted in a routine's runs per day
AGENT_FAILURES = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT})  # the agent's to answer for
FAILURES = AGENT_FAILURES | {RunStatus.ERROR}  # alerted, with a Retry button
DIGEST_FAILURES = frozenset({RunStatus.FAILED, RunStatus.ERROR})  # a digest's failures list
STOPPED = frozenset({RunStatus.TIMED_OUT, RunStatus.KILLED})  # a digest's "stopped" line


class StopKind(StrEnum):
    """Why a running run was asked to stop (who asked is `Run.stop_requested_by`)."""

    KILL_SWITCH = "kill_switch"
    CANCEL = "cancel"



class FailureKind(StrEnum):
    """Why a run that was started did not succeed, as data: what retries and digests
    decide on. The run's `reason` says the same to people; its wording is never parsed.
    Runs that never started (rejected, expired, cancelled or dropped while waiting) and
    runs stored before kinds existed have none."""

    # The agent is answerable (retried only with the routine's `agent-failures`):
    NO_SELF_REPORT = "no_self_report"  # it ended without a report (exit code, no result)
    REPORTED_FAILURE = "reported_failure"  # it called report_result with outcome failure
    SETUP_FAILED = "setup_failed"  # the routine's setup script exited non-zero
    TURN_LIMIT = "turn_limit"  # every turn used without a report
    TOKEN_BUDGET = "token_budget"  # noqa: S105 - no secret: the budget spent, no report
    DISK_LIMIT = "disk_limit"  # the run filled its disk limit (whatever it reported)
    TIMED_OUT = "timed_out"  # the routine's timeout was reached
    INTERRUPTED = "interrupted"  # the bot restarted and the run's container was gone
    # Stopped on purpose (never retried):
    KILLED = "killed"  # the container was killed: the kill switch, or a stop
    CANCELLED = "cancelled"  # `/routine cancel`
    # Infrastructure faults (retried up to the routine's attempts), but for a refusal:
    API_UNAVAILABLE = "api_unavailable"  # Anthropic overloaded, 5xx, 408/409/429, unreachable
    API_REFUSED = "api_refused"  # Anthropic client error (another 4xx): not transient
    INFRASTRUCTURE = "infrastructure"  # clone, image, engine or dispatcher fault

class RiskLevel(StrEnum):
    LOW = "low"  # runs freely
    MEDIUM = "medium"  # runs; what it would publish waits for approval
    HIGH = "high"  # every run waits for approval before it starts


class BusyPolicy(StrEnum):
    """What a trigger does when the routine already runs `max_concurrent` runs."""

    QUEUE = "queue"
    SKIP = "skip"


class TriggerKind(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    API = "api"
    GITHUB = "github"
    WORKFLOW = "workflow"  # a Workflow Builder step ("Run a routine"), as the workflow's user


class ApprovalKind(StrEnum):
    START = "start"  # high risk: the run waits to start
    PUBLISH = "publish"  # medium risk: the run's commits wait to be pushed


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the run was cancelled or dropped before anyone decided
