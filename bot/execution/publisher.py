"""The publishing step: after a decision on a medium-risk run's kept commit, push it to
its bot-owned branch or discard it. Done on the host, never from the sandbox."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from bot.core.statuses import ApprovalStatus
from bot.services.publishing import PublishService
from bot.services.views import RunView
from runner.host import publish

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, publishing: PublishService, workspace_root: Path) -> None:
        self.publishing = publishing
        self.workspace_root = workspace_root

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
        try:
            sha = await asyncio.to_thread(publish.push, self.workspace_root, run.id,
                                          routine.repo_url, ref)
        except publish.PublishError as exc:
            log.error("push of run %s failed: %s", run.id, exc)
            await asyncio.to_thread(self.publishing.record_published, run.id, None,
                                    f"push failed: {exc}")
            return
        await asyncio.to_thread(self.publishing.record_published, run.id, ref, f"pushed {sha}")
