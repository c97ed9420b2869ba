"""One scheduler across processes (docs/scale-out.md): two `routines serve` on one PostgreSQL
database, each with a data directory and worker name of its own, as on two hosts. The one
holding the `scheduler` lease is SIGKILLed while a 1-second schedule fires; the other takes
the lease over and fires on, and over a minute no scheduled time is run twice, lost, recorded
missed twice or announced missed twice.

Runs are only queued (no process executes them: ROUTINES_EXECUTE=off, no concurrency slot),
so the test costs no container per second; what is counted is what the schedulers did."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from bot.core.lease import SCHEDULER
from bot.core.statuses import TriggerKind
from bot.settings import Settings
from bot.store import leases
from bot.store.database import Database
from bot.store.tables import MissedFire, Run, as_utc
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL
from tests.support.served_bot import ServedBot
from tests.support.slack_flows import routine, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

LEASE_SECONDS = 3
WATCHED_SECONDS = 60  # from the first fire to the end
NAME = "tick"
MISSED = re.compile(rf"^Routine {NAME} missed (\d+) scheduled run\(s\)")


def needs_postgres(database_url: str) -> None:
    """Two processes cannot share SQLite (it refuses the second, see
    test_one_process_sqlite.py): on SQLite this test is skipped, saying why, never passed;
    CI runs it on PostgreSQL (`-m postgres` with ROUTINES_TEST_POSTGRES set)."""
    if database_url.startswith("sqlite"):
        pytest.skip("two serve processes need PostgreSQL: set ROUTINES_TEST_POSTGRES "
                    "(CI's -m postgres pass runs this test)")


def serve(settings: Settings, tmp_path: Path, name: str) -> ServedBot:
    """A serve process as on a host of its own: its own data directory and worker name."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    own = replace(settings, data_dir=tmp_path / name, max_concurrent_runs=0, warm_pool=0)
    return ServedBot(own, logs, env={
        "ROUTINES_WORKER_NAME": name, "ROUTINES_WORKER_HOST": f"host-{name}",
        "ROUTINES_LEASE_SECONDS": str(LEASE_SECONDS), "ROUTINES_EXECUTE": "off",
        "ROUTINES_WARM_POOL": "0", "ROUTINES_MIN_INTERVAL_SECONDS": "1",
        "ROUTINES_TRIGGERS_PER_MINUTE": "100000", "ROUTINES_SCHEDULE_SYNC_SECONDS": "1"})


async def test_the_scheduler_survives_its_holder_killed_with_no_fire_doubled(
        settings: Settings, tmp_path: Path, database_url: str, slack_api: SlackApiStandIn,
        git_repo: str, docker_client: Any) -> None:
    needs_postgres(database_url)
    first, second = serve(settings, tmp_path, "s1"), serve(settings, tmp_path, "s2")
    db = Database(database_url)
    try:
        await first.start()
        await second.start()
        await routine(first.slack, NAME, "Tick.", git_repo)
        reply = (await first.slack.slash(f'schedule {NAME} "every 1s"')).json()
        assert reply["text"].startswith(f"Routine {NAME}"), reply
        await wait_until(lambda: len(scheduled(db)) >= 3, timeout=20)
        started = time.monotonic()

        await asyncio.sleep(5)
        holder = lease_holder(db)
        killed, survivor = ((first, second) if holder == "host-s1/s1" else (second, first))
        assert holder in ("host-s1/s1", "host-s2/s2")
        assert killed.proc is not None
        killed.proc.send_signal(signal.SIGKILL)
        assert await killed.died() == -signal.SIGKILL
        last_before = max(scheduled(db))

        # Within the lease (and a few seconds of slack) the other fires on.
        await wait_until(lambda: max(scheduled(db)) > last_before + timedelta(seconds=2),
                         timeout=LEASE_SECONDS + 10)
        assert lease_holder(db) == survivor.env["ROUTINES_WORKER_HOST"] + "/" + \
            survivor.env["ROUTINES_WORKER_NAME"]
        await asyncio.sleep(max(0.0, WATCHED_SECONDS - (time.monotonic() - started)))
        await survivor.stop()

        runs, missed = scheduled_runs(db), missed_fires(db)
        notices = [m["text"] for m in slack_api.messages_in(RESULTS_CHANNEL)
                   if MISSED.match(m["text"])]
        assert [when for when, count in runs.items() if count > 1] == []  # none doubled
        assert [when for when, count in missed.items() if count > 1] == []
        assert set(runs) & set(missed) == set()  # a time is run or missed, never both
        times = sorted(set(runs) | set(missed))
        gaps = [b for a, b in itertools.pairwise(times)
                if b - a != timedelta(seconds=1)]
        assert gaps == []  # and none lost: every second from the first to the last
        assert len(times) >= WATCHED_SECONDS - 5
        # Each notice counts the times it says were missed: doubled, they add up to more.
        said = sum(int(found.group(1)) for text in notices if (found := MISSED.match(text)))
        assert said == sum(missed.values())
        assert "holds the scheduler lease" in survivor.log()
    finally:
        db.close()
        for bot in (first, second):
            await bot.stop()
            await asyncio.to_thread(bot.remove_leftovers, docker_client)


def lease_holder(db: Database) -> str:
    with db.session() as session:
        found = leases.holder(session, SCHEDULER)
    assert found is not None
    return found[0]


def scheduled(db: Database) -> list[datetime]:
    return sorted(scheduled_runs(db))


def scheduled_runs(db: Database) -> Counter[datetime]:
    """Runs queued by the schedulers, counted per scheduled time (their reference)."""
    with db.session() as session:
        refs = session.exec(select(Run.trigger_ref).where(
            Run.trigger_kind == TriggerKind.SCHEDULE)).all()
    return Counter(datetime.fromisoformat(ref) for ref in refs if ref)


def missed_fires(db: Database) -> Counter[datetime]:
    with db.session() as session:
        times = session.exec(select(MissedFire.scheduled_for)
                             .order_by(col(MissedFire.scheduled_for))).all()
    return Counter(as_utc(when) for when in times)
