"""The publishing step: after a decision on a medium-risk run's kept commit, push it to
its bot-owned branch or discard it. Done on the host, never from the sandbox."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

from bot.core.crash_stage import CrashStage
from bot.core.statuses import ApprovalStatus
from bot.execution.crash import CrashPoints
from bot.services.publishing import PublishService
from bot.services.views import RunView
from runner.host import publish
from runner.repo_policy import FetchPolicy

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, publishing: PublishService, workspace_root: Path,
                 policy: FetchPolicy, crash: CrashPoints | None = None) -> None:
        self.publishing = publishing
        self.crash = crash or CrashPoints(None)  # test-only: ROUTINES_TEST_CRASH_AT
        self.workspace_root = workspace_root
        self.policy = policy  # the clone's: the push reaches the same repository

    async def __call__(self, view: RunView) -> None:
        run, routine = view.run, view.routine
        assert run.id is not None
        decision = await asyncio.to_thread(self.publishing.publish_decision, run.id)
        if decision is None or decision.status != ApprovalStatus.APPROVED:
            await asyncio.to_thread(publish.discard, self.workspace_root, run.id)
            why = decision.status if decision else "no decision"
            await asyncio.to_thread(self.publishing.record_published, run.id, None,
                                    f"commit {run.commit_sha} discarded ({why})")
            return
        ref = publish.branch_ref(routine.name, run.id)
        self.crash(CrashStage.PUBLISHING)
        try:
            sha = await asyncio.to_thread(functools.partial(
                publish.push, self.workspace_root, run.id, routine.repo_url, ref,
                policy=self.policy))
        except publish.PublishError as exc:
            log.error("push of run %s failed: %s", run.id, exc)
            await asyncio.to_thread(self.publishing.record_published, run.id, None,
                                    f"push failed: {exc}")
            return
        self.crash(CrashStage.PUSHED)
        await asyncio.to_thread(self.publishing.record_published, run.id, ref, f"pushed {sha}")
        await asyncio.to_thread(publish.discard, self.workspace_root, run.id)  # recorded
