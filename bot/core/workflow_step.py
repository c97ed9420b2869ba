"""The Workflow Builder step "Run a routine": what it gives back when its run ends.

A step succeeds only when the run did (the same rule as the run's status: a run without
a self-report is not a success); anything else fails the step with the run's reason, so a
workflow never carries on after a failed routine believing it worked."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.statuses import RunStatus

CALLBACK_ID = "run_routine"  # manifest.json's `functions` key
MAX_OUTPUT_CHARS = 2_000  # a step's outputs are shown in the workflow's UI: keep them short


@dataclass(frozen=True)
class StepResult:
    ok: bool
    outputs: dict[str, str]  # when ok: run_id, status, summary (the manifest's outputs)
    error: str  # when not ok: why, in words for the workflow's owner


def step_result(run_id: int, routine: str, status: RunStatus, summary: str | None,
                reason: str | None) -> StepResult:
    """The step's end, from the run's end."""
    if status == RunStatus.SUCCEEDED:
        return StepResult(True, {"run_id": str(run_id), "status": str(status),
                                 "summary": (summary or "")[:MAX_OUTPUT_CHARS]}, "")
    why = reason or summary or "no reason recorded"
    return StepResult(False, {}, f"{routine} run #{run_id} {status}: {why}"[:MAX_OUTPUT_CHARS])
