"""A bot's start-up posts the results owed through the same claim as every other post: it
leaves alone a result another live process has claimed, and posts one whose claimer died
(its claim ran out) or that nobody claimed, each once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col

from bot.core.routine import RoutineDraft
from bot.core.statuses import RunStatus
from bot.core.trigger import manual
from bot.core.verdict import RunOutcome
from bot.settings import Settings
from bot.store.tables import Run, utcnow
from tests.services.test_group_commit import services_on
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.postgres]
ADMIN = "U0ADMIN01"


def results(slack_api: SlackApiStandIn, run_id: int) -> int:
    return sum(f"run #{run_id}: " in str(m.get("text", ""))
               for m in slack_api.messages_in(RESULTS_CHANNEL))


async def test_start_up_posts_only_the_results_nobody_live_has_claimed(
    settings: Settings, start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    seeded = services_on(settings.database_url, triggers_per_minute=1000)
    seeded.routines.create(RoutineDraft(name="tidy", prompt="p", repo_url="file:///r",
                                        channel_id=RESULTS_CHANNEL), ADMIN)
    ids: list[int] = []
    for _ in range(3):
        seeded.triggers.trigger("tidy", manual(ADMIN))
        view = seeded.runs.claim_next()
        assert view is not None and view.run.id is not None
        seeded.runs.finish(view.run.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None),
                           1, 1, "")
        ids.append(view.run.id)
    free, live, dead = ids
    assert seeded.runs.claim_announcement(live, "elsewhere/w1", 3600)  # a live process's
    assert seeded.runs.claim_announcement(dead, "gone/w1", 30)
    with seeded.runs.db.session() as session:  # ...and one whose process died long ago
        session.execute(update(Run).where(col(Run.id) == dead).values(
            announce_claim_until=utcnow() - timedelta(seconds=5)))

    bot, _ = await start_bot()
    await wait_until(lambda: results(slack_api, free) and results(slack_api, dead))
    assert (results(slack_api, free), results(slack_api, dead)) == (1, 1)
    assert results(slack_api, live) == 0
    for run_id in (free, dead):
        assert bot.services.runs.get(run_id).run.notified_at is not None
    still = bot.services.runs.get(live).run
    assert still.notified_at is None and still.announce_claimed_by == "elsewhere/w1"
