"""Workflow Builder steps: a run started by a step, and the step completed once it ends.

The step's function execution id is the trigger's reference, so a step Slack delivers
twice starts one run. The execution id is kept on the run (it is no secret: completing
needs the bot token), and `workflow_completed_at` makes the completion happen once.
"""

from __future__ import annotations

from sqlmodel import col, select, update

from bot.core.statuses import TriggerKind
from bot.core.trigger import NO_PAYLOAD, Trigger
from bot.core.workflow_step import StepResult, step_result
from bot.services.context import Service, Shared
from bot.services.triggers import TriggerService
from bot.services.views import Triggered
from bot.store import queries
from bot.store.tables import Run, utcnow


class WorkflowService(Service):
    def __init__(self, shared: Shared, triggers: TriggerService) -> None:
        super().__init__(shared)
        self.triggers = triggers

    def start(self, name: str, user: str, text: str, execution_id: str) -> Triggered:
        """Queue the routine's run as the workflow's user, through every rule of a trigger;
        a non-empty `text` is outside data, fenced in the prompt like an API payload."""
        trigger = Trigger(TriggerKind.WORKFLOW, user, ref=execution_id,
                          payload={"text": text} if text.strip() else NO_PAYLOAD,
                          detail="Workflow Builder step")
        with self.db.session() as session:
            triggered = self.triggers.trigger_in(session, self._require(session, name), trigger)
            if not triggered.replayed:
                triggered.view.run.workflow_execution_id = execution_id
                session.add(triggered.view.run)
        self.triggers.queued(triggered)
        return triggered

    def due(self, run_id: int) -> tuple[str, StepResult] | None:
        """The step to complete for this finished run (its execution id and result), or
        None: not started by a step, not finished, or already completed."""
        with self.db.session() as session:
            run, routine = queries.run_with_routine(session, run_id)
            if (run.workflow_execution_id is None or run.workflow_completed_at is not None
                    or not run.status.finished):
                return None
            return run.workflow_execution_id, step_result(
                run_id, routine.name, run.status, run.summary, run.reason)

    def completed(self, run_id: int) -> None:
        with self.db.session() as session:
            session.execute(update(Run).where(col(Run.id) == run_id)
                            .values(workflow_completed_at=utcnow()))

    def pending(self) -> list[int]:
        """Finished runs whose step was not completed (Slack was unreachable, or the bot
        stopped in between): completed again at start."""
        with self.db.session() as session:
            return [run_id for run_id in session.exec(select(Run.id).where(
                col(Run.workflow_execution_id).is_not(None),
                col(Run.workflow_completed_at).is_(None),
                col(Run.finished_at).is_not(None))).all() if run_id is not None]
