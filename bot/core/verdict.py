"""How a run ends: the verdict from what the runner observed. Pure, and the heart of
beating the green-status trap: only an explicit success report is a success."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.statuses import RunStatus
from runner.contract import RunResult


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    summary: str | None
    reason: str | None


def decide_outcome(result: RunResult, timeout_seconds: int) -> RunOutcome:
    if result.infra_error:
        return RunOutcome(RunStatus.ERROR, None, result.infra_error)
    if result.timed_out:
        return RunOutcome(RunStatus.TIMED_OUT, None, f"timed out after {timeout_seconds}s")
    if result.token_budget_exceeded:  # the host's backstop: the agent did not stop itself
        return RunOutcome(RunStatus.FAILED, None, "token budget exhausted")
    if result.killed:
        return RunOutcome(RunStatus.KILLED, None, "killed")
    final = result.final or {}
    kind = final.get("kind")
    summary = str(final.get("summary", "")) or None
    if kind == "report":
        if final.get("outcome") == "success":
            return RunOutcome(RunStatus.SUCCEEDED, summary, None)
        return RunOutcome(RunStatus.FAILED, summary, summary or "the agent reported failure")
    if kind == "api_error":
        return RunOutcome(RunStatus.ERROR, None, summary)
    if kind == "token_budget":
        return RunOutcome(RunStatus.FAILED, None, summary or "token budget exhausted")
    if kind in {"setup_failed", "turn_limit"}:
        return RunOutcome(RunStatus.FAILED, None, summary)
    detail = f" (exit code {result.exit_code})" if result.exit_code is not None else ""
    return RunOutcome(RunStatus.FAILED, None, f"no self-report{detail}")
