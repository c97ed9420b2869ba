"""How a run ends: the verdict from what the runner observed. Pure, and the heart of
beating the green-status trap: only an explicit success report is a success, and only
as the host saw it (`RunResult.report`, from the model gateway), never as the container
says it (anything in the container can print a `result` line)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.statuses import FailureKind, RunStatus
from runner.contract import RunResult, api_status_code
from runner.disk_limit import describe_size

# Client errors worth another try: request timeout, conflict, rate limited.
TRANSIENT_4XX = frozenset({408, 409, 429})
# Results the agent wrote to say it stopped without a report, and why.
_ENDED_UNREPORTED = {"setup_failed": FailureKind.SETUP_FAILED,
                     "turn_limit": FailureKind.TURN_LIMIT}


@dataclass(frozen=True)
class RunOutcome:
    """The verdict: `reason` says why to people, `failure` says it as data (None: success)."""

    status: RunStatus
    summary: str | None
    reason: str | None
    failure: FailureKind | None

    def __post_init__(self) -> None:
        if (self.failure is None) != (self.status is RunStatus.SUCCEEDED):
            raise ValueError(f"a {self.status.value} outcome with failure {self.failure}")


def decide_outcome(result: RunResult, timeout_seconds: int) -> RunOutcome:
    if result.infra_error:
        return RunOutcome(RunStatus.ERROR, None, result.infra_error, FailureKind.INFRASTRUCTURE)
    if result.timed_out:
        return RunOutcome(RunStatus.TIMED_OUT, None, f"timed out after {timeout_seconds}s",
                          FailureKind.TIMED_OUT)
    if result.token_budget_exceeded:  # the host's backstop: the agent did not stop itself
        return RunOutcome(RunStatus.FAILED, None, "token budget exhausted",
                          FailureKind.TOKEN_BUDGET)
    if result.killed:
        return RunOutcome(RunStatus.KILLED, None, "killed", FailureKind.KILLED)
    return disk_limit_outcome(result) or _agent_outcome(result)


def _agent_outcome(result: RunResult) -> RunOutcome:
    """The verdict from how the agent said it ended (its `result` event), or did not."""
    # The container's own account of its end can make a run fail, never succeed.
    final = result.final or {}
    kind = final.get("kind")
    summary = str(final.get("summary", "")) or None
    if kind == "api_error":
        return RunOutcome(RunStatus.ERROR, None, summary, api_failure(api_status_code(final)))
    if kind == "token_budget":
        return RunOutcome(RunStatus.FAILED, None, summary or "token budget exhausted",
                          FailureKind.TOKEN_BUDGET)
    if kind in _ENDED_UNREPORTED:
        return RunOutcome(RunStatus.FAILED, None, summary, _ENDED_UNREPORTED[kind])
    # The self-report: only the report_result call the host's gateway saw in a model
    # response. A container that says it reported (kind "report") without one did not.
    report = result.report
    if report is not None and kind in {None, "report"}:
        reported = report.summary or None
        if report.outcome == "success":
            return RunOutcome(RunStatus.SUCCEEDED, reported, None, None)
        return RunOutcome(RunStatus.FAILED, reported, reported or "the agent reported failure",
                          FailureKind.REPORTED_FAILURE)
    detail = f" (exit code {result.exit_code})" if result.exit_code is not None else ""
    return RunOutcome(RunStatus.FAILED, None, f"no self-report{detail}",
                      FailureKind.NO_SELF_REPORT)


def disk_limit_outcome(result: RunResult) -> RunOutcome | None:
    """A run that filled its disk failed, whatever the agent then said (a success report
    included: its work may be cut short where a write failed). Checked after the ways
    the host itself ended the run (a timeout, the budget, a kill), which stay what ended
    it. The agent's summary, if any, is kept."""
    if result.disk_limit_reached is None:
        return None
    report = result.report  # as the host saw it, else the container's own words
    summary = (report.summary if report is not None
               else str((result.final or {}).get("summary", ""))) or None
    return RunOutcome(RunStatus.FAILED, summary,
                      f"disk limit of {describe_size(result.disk_limit_reached)} reached",
                      FailureKind.DISK_LIMIT)


def api_failure(status_code: int | None) -> FailureKind:
    """A client error (4xx but a transient one) is a refusal; anything else, including no
    answer at all (None), is the API being unavailable for now."""
    client_error = status_code is not None and 400 <= status_code < 500
    if client_error and status_code not in TRANSIENT_4XX:
        return FailureKind.API_REFUSED
    return FailureKind.API_UNAVAILABLE
