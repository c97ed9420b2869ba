"""The Workflow Builder step "Run a routine" (a custom step: Bolt's `app.function`).

Its inputs are the routine's name, the workflow's user (whose roles apply) and an optional
text payload. A refusal (unknown routine, paused, kill switch, budget, rate limit) fails the
step at once with the reason; otherwise the step stays open until the run ends, and the
announcer completes it: success with the run's id, status and summary, or an error with
the run's reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.context.fail.async_fail import AsyncFail
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import RoutinesError
from bot.services import Services

log = logging.getLogger(__name__)


class WorkflowStep:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def executed(self, event: dict[str, Any], inputs: dict[str, Any],
                       fail: AsyncFail) -> None:
        """`function_executed` (acknowledged by Bolt before this runs)."""
        name = str(inputs.get("routine", "")).strip().lower()
        user = str(inputs.get("user", "")).strip()
        text = str(inputs.get("payload") or "")
        if not name or not user:
            await fail("The step needs a routine name and the workflow's user.")
            return
        try:
            await asyncio.to_thread(self.services.workflows.start, name, user, text,
                                    str(event["function_execution_id"]))
        except RoutinesError as exc:
            await fail(str(exc))  # plain words: the workflow's UI shows no mrkdwn


async def complete(client: AsyncWebClient, services: Services, run_id: int) -> None:
    """Complete the step that started this run, if any, once."""
    due = await asyncio.to_thread(services.workflows.due, run_id)
    if due is None:
        return
    execution_id, result = due
    if result.ok:
        await client.functions_completeSuccess(function_execution_id=execution_id,
                                               outputs=result.outputs)
    else:
        await client.functions_completeError(function_execution_id=execution_id,
                                             error=result.error)
    await asyncio.to_thread(services.workflows.completed, run_id)
