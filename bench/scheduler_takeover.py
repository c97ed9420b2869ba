"""How long the scheduler is away when its holder dies, beside the lease it waits out; and
what one try at the lease costs, beside a bare transaction on the same database.

What it measures:

* Takeover (`--trials T`): a holder (a worker id no process has) holds the `scheduler`
  lease, and a real `Scheduler` door (the bot's own, with its services, on the same
  database) starts and is refused it. The holder renews once more and dies at once, the
  worst moment, with the whole lease ahead; that renewal falls at phases spread evenly
  between two of the survivor's tries. Timed from it to the survivor leading (its catch-up
  done, its jobs set), and to the first scheduled run it queued (a routine on `every 1s`:
  the catch-up's run). The baseline is the lease itself
  (`--lease-seconds`): what a takeover cannot beat. The ratio is the median takeover over
  the lease; the door's design bounds it by 1 + 1/3 (it tries every third of the lease).
* One try (`--tries N`): `LeaseService.hold` renewing the lease, one short transaction,
  against a bare `SELECT 1` transaction on a session from the same engine, interleaved.

Run from the repository root (SQLite in a temp dir by default; `DATABASE_URL` for another
database, whose tables are then written: use a scratch database):

    python bench/scheduler_takeover.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import delete, text  # noqa: E402
from sqlmodel import select  # noqa: E402

from bench.report import print_json, readable_report  # noqa: E402
from bot.core.digest import Digest  # noqa: E402
from bot.core.lease import SCHEDULER  # noqa: E402
from bot.core.redaction import Redactor  # noqa: E402
from bot.core.routine import RoutineDraft, RoutineLimits  # noqa: E402
from bot.core.statuses import TriggerKind  # noqa: E402
from bot.doors.scheduler import Scheduler  # noqa: E402
from bot.services import ServicePolicy, Services  # noqa: E402
from bot.services.views import MissedFires  # noqa: E402
from bot.store import schema  # noqa: E402
from bot.store.database import Database  # noqa: E402
from bot.store.tables import Lease, Run  # noqa: E402

DEAD = "bench-dead-host/main"


async def _say(_: MissedFires | Digest) -> None:
    """Slack is not part of what is timed."""


def _scheduled_runs(db: Database) -> int:
    with db.session() as session:
        return len(session.exec(select(Run.id).where(
            Run.trigger_kind == TriggerKind.SCHEDULE)).all())


async def _until(condition: Callable[[], bool], every: float = 0.005) -> None:
    """Polled: what is waited for is another task's state, or the database's."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(every)
    raise TimeoutError("not reached in 60 s")


async def _takeover(services: Services, db: Database, lease: float,
                    phase: float) -> tuple[float, float]:
    """(seconds to lead, seconds to the first run it queued) after the holder died."""
    with db.session() as session:
        session.execute(delete(Lease))
    services.leases.hold(SCHEDULER, DEAD, lease)
    survivor = Scheduler(services, _say, _say, grace_seconds=60, sync_seconds=30,
                         holder="bench-survivor/main", lease_seconds=lease)
    await survivor.start()
    assert not survivor.leading(), "the dead holder's lease was not respected"
    # The holder's last renewal falls anywhere between two of the survivor's tries.
    await asyncio.sleep(phase * lease / 3)
    services.leases.hold(SCHEDULER, DEAD, lease, renewing=True)
    died = time.monotonic()
    before = _scheduled_runs(db)
    try:
        await _until(survivor.leading)
        led = time.monotonic() - died
        await _until(lambda: _scheduled_runs(db) > before)
        return led, time.monotonic() - died
    finally:
        await survivor.stop()


def _tries(services: Services, db: Database, lease: float, count: int) -> tuple[float, float]:
    """Median seconds of one renewal and of one bare transaction, interleaved."""
    services.leases.hold(SCHEDULER, "bench-holder/main", lease)
    hold, bare = [], []
    for _ in range(count):
        start = time.perf_counter()
        got = services.leases.hold(SCHEDULER, "bench-holder/main", lease, renewing=True)
        hold.append(time.perf_counter() - start)
        assert got is not None
        start = time.perf_counter()
        with db.session() as session:
            session.execute(text("SELECT 1")).all()
        bare.append(time.perf_counter() - start)
    services.leases.release(SCHEDULER, "bench-holder/main")
    return statistics.median(hold), statistics.median(bare)


async def _bench(url: str, args: argparse.Namespace) -> tuple[dict[str, float],
                                                               dict[str, float], float]:
    db = Database(url)
    schema.upgrade(db)
    policy = ServicePolicy("m", 60, RoutineLimits(1, 99, True, 1), 5, triggers_per_minute=10**6)
    services = Services(db, policy, Redactor(()))
    with db.session() as session:
        session.execute(delete(Run))  # a scratch database: the runs counted are this run's
    if "tick" not in services.schedules.all():
        services.routines.create(RoutineDraft(
            name="tick", prompt="Tick.", repo_url="file:///r", channel_id="C0BENCH01",
            schedule="every 1s", schedule_tz="UTC"), "U0BENCH01")
    led, fired = [], []
    for trial in range(args.trials):
        phase = (trial + 0.5) / args.trials  # spread evenly over a third of the lease
        to_lead, to_fire = await _takeover(services, db, args.lease_seconds, phase)
        led.append(to_lead)
        fired.append(to_fire)
        print(f"trial {trial + 1}: led after {to_lead:.3f} s, first run after {to_fire:.3f} s"
              f" (lease {args.lease_seconds} s)")
    hold, bare = _tries(services, db, args.lease_seconds, args.tries)
    db.close()
    ratio = statistics.median(led) / args.lease_seconds
    print(f"takeover median {statistics.median(led):.3f} s = {ratio:.3f} x the lease;"
          f" one try {hold * 1000:.2f} ms against a bare transaction {bare * 1000:.2f} ms")
    figures = {"takeover_median_s": round(statistics.median(led), 4),
               "takeover_max_s": round(max(led), 4),
               "first_run_median_s": round(statistics.median(fired), 4),
               "first_run_max_s": round(max(fired), 4),
               "lease_try_ms": round(hold * 1000, 3)}
    baseline = {"lease_s": args.lease_seconds, "bare_transaction_ms": round(bare * 1000, 3)}
    return figures, baseline, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tries", type=int, default=200)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as tmp:
        url = os.environ.get("DATABASE_URL") or f"sqlite:///{Path(tmp) / 'takeover.db'}"
        with readable_report(args.json):
            figures, baseline, ratio = asyncio.run(_bench(url, args))
    if args.json:
        print_json("scheduler_takeover", figures, baseline, ratio,
                   try_ratio=round(figures["lease_try_ms"] / baseline["bare_transaction_ms"], 4),
                   trials=args.trials, tries=args.tries, backend=url.split(":", 1)[0],
                   cpu_count=os.cpu_count())


if __name__ == "__main__":
    main()
