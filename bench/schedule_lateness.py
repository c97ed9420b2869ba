"""Fire lateness: N routines (default 10,000) all due at the same minute boundary.

What it measures:

* Set-up, untimed by the lateness figures but printed: the N routines are written as one
  YAML file and applied with the product's own bulk path, `routines apply`
  (`CatalogService.apply`: every document checked by the rules of the other doors, then
  one unit of work), each scheduled `* * * * *`. The bench then waits until the running
  bot's scheduler knows every one of them.
* Lateness of each fire at the next minute boundary, two ways:
  - *queued*: the run's `queued_at` minus its scheduled time (what the product records);
  - *visible*: when a poller on its own database connection (every `POLL_SECONDS`) first
    saw the committed run, minus the scheduled time: an upper bound of when the run was
    durably queued, whatever the code path. The goal figure is this one's p99.
  Checked, not assumed: every routine has exactly one scheduled run for that time (none
  lost, none twice), no scheduled run for any other time, no fire reported missed.
* Baseline, in the same process run: N no-op APScheduler jobs (the library the scheduler
  door is built on, the same `AsyncIOScheduler` and job options) all due at the same
  instant; lateness = when each job's coroutine ran minus the due time. Ratio: the bot's
  visible p99 over the baseline's p99.

Everything is local: the bot and a Slack API stand-in listen on 127.0.0.1; SQLite in a
temp dir, or PostgreSQL when `--database-url` names one (a scratch database is created on
that server and dropped at the end). Docker must be reachable (the bot opens a client at
start-up) but no container is started: runs are queued, never executed.

Run from the repository root:

    python bench/schedule_lateness.py [--routines N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import docker.errors  # noqa: E402
import sqlalchemy  # noqa: E402
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402
from sqlmodel import col, func, select  # noqa: E402

from bench.report import percentile, print_json, readable_report  # noqa: E402
from bot.app import Bot  # noqa: E402
from bot.core.statuses import TriggerKind  # noqa: E402
from bot.doors.cli.as_code import read_path, read_prompt  # noqa: E402
from bot.store.tables import MissedFire, Run, utcnow  # noqa: E402
from tests.standins.environment import local_settings  # noqa: E402
from tests.standins.slack_api import SlackApiStandIn  # noqa: E402

DEFAULT_ROUTINES = 10_000
EVERY_MINUTE = "* * * * *"
ACTOR = "UBENCH0001"
RESULTS_CHANNEL = "C0RESULTS1"
NO_ANTHROPIC = "http://127.0.0.1:9"  # runs are never executed: nothing calls it
BOUNDARY_MARGIN = 5.0  # seconds: a boundary closer than this after set-up is skipped
FIRE_TIMEOUT = 120.0  # seconds after the boundary to wait for every fire
POLL_SECONDS = 0.02
BASELINE_LEAD = 3.0  # seconds from adding the baseline's jobs to their due time


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


@dataclass
class Lateness:
    """Seconds late, sorted, with what the count checks found."""

    expected: int
    late: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        if not self.late:
            return {"fired": 0}
        return {"fired": len(self.late), "p50_s": round(percentile(self.late, 50), 4),
                "p99_s": round(percentile(self.late, 99), 4),
                "max_s": round(self.late[-1], 4), "min_s": round(self.late[0], 4)}


@dataclass
class BotFires:
    due: datetime
    routines: int
    setup_seconds: float
    queued: Lateness
    visible: Lateness
    per_routine: Counter[int] = field(default_factory=Counter)  # routine id -> runs for `due`
    other_times: int = 0  # scheduled runs for any other time
    missed: int = 0  # fires recorded as missed

    @property
    def lost(self) -> int:
        return self.routines - len(self.per_routine)

    @property
    def doubled(self) -> int:
        return sum(1 for n in self.per_routine.values() if n > 1)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.doubled == 0 and self.other_times == 0
                and self.missed == 0 and len(self.visible.late) == self.routines)


# The bot ---------------------------------------------------------------------------------


def routine_file(path: Path, count: int, repo: Path) -> Path:
    """N routines as one YAML file, the format `routines apply` reads."""
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            out.write(f"---\nname: late-{index:05d}\nprompt: Benchmark routine, never run.\n"
                      f"repository: file://{repo}\nchannel: {RESULTS_CHANNEL}\n"
                      f"schedule: {{expression: \"{EVERY_MINUTE}\", timezone: UTC}}\n")
    return path


def make_bot(tmp: Path, slack_url: str, database_url: str) -> Bot:
    settings = local_settings(tmp, slack_url, NO_ANTHROPIC, database_url=database_url,
                              data_dir=tmp / "data", max_concurrent_runs=0,
                              min_schedule_interval_seconds=60)
    try:
        return Bot(settings)
    except docker.errors.DockerException as exc:
        raise BenchError(f"the bot needs a reachable Docker engine at start-up ({exc}); "
                         "no container is started") from None


def next_boundary(after: datetime) -> datetime:
    """The first whole minute strictly after `after`."""
    return after.replace(second=0, microsecond=0) + timedelta(minutes=1)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Poller:
    """Sees scheduled runs for one time appear, on its own connection, from its own thread:
    `seen[run id]` = (wall-clock time first seen, routine id, queued_at)."""

    def __init__(self, database_url: str, ref: str, expected: int) -> None:
        self.engine = sqlalchemy.create_engine(database_url)
        self.ref, self.expected = ref, expected
        self.seen: dict[int, tuple[datetime, int, datetime]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="bench-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self, until: datetime) -> None:
        while len(self.seen) < self.expected and utcnow() < until:
            time.sleep(0.1)
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def _poll(self) -> None:
        after = 0
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                rows = conn.execute(select(Run.id, Run.routine_id, Run.queued_at).where(
                    Run.trigger_kind == TriggerKind.SCHEDULE, Run.trigger_ref == self.ref,
                    col(Run.id) > after).order_by(col(Run.id))).all()
                conn.rollback()  # a fresh snapshot at the next poll
                now = utcnow()
                for run_id, routine_id, queued in rows:
                    self.seen[int(run_id)] = (now, int(routine_id), as_utc(queued))
                    after = max(after, int(run_id))
                self._stop.wait(POLL_SECONDS)


def count_fires(database_url: str, ref: str) -> tuple[int, int]:
    """Scheduled runs for any other time, and fires recorded missed, after the fact."""
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            other = conn.execute(select(func.count()).select_from(Run).where(
                Run.trigger_kind == TriggerKind.SCHEDULE, Run.trigger_ref != ref)).scalar_one()
            missed = conn.execute(select(func.count()).select_from(MissedFire)).scalar_one()
    finally:
        engine.dispose()
    return int(other), int(missed)


async def bench_bot(tmp: Path, database_url: str, count: int) -> BotFires:
    slack_api = SlackApiStandIn()
    bot: Bot | None = None
    (tmp / "repo").mkdir()
    try:
        await slack_api.start()
        bot = make_bot(tmp, slack_api.url, database_url)
        await bot.start()
        documents = read_path(routine_file(tmp / "routines.yaml", count, tmp / "repo"))
        t0 = time.monotonic()
        await asyncio.to_thread(bot.services.catalog.apply, documents, ACTOR, read_prompt)
        deadline = time.monotonic() + FIRE_TIMEOUT  # the scheduler takes them in
        while len(bot.scheduler.runner.names()) < count:
            if time.monotonic() > deadline:
                raise BenchError(f"the scheduler knows only "
                                 f"{len(bot.scheduler.runner.names())} of {count} routines")
            await asyncio.sleep(0.05)
        setup_seconds = time.monotonic() - t0
        due = next_boundary(utcnow() + timedelta(seconds=BOUNDARY_MARGIN))
        print(f"  {count} routines applied and scheduled in {setup_seconds:.1f} s; waiting "
              f"for {due:%H:%M:%S} UTC", file=sys.stderr, flush=True)
        poller = Poller(database_url, due.isoformat(), count)
        await asyncio.sleep(max(0.0, (due - utcnow()).total_seconds() - 1.0))
        poller.start()
        await asyncio.to_thread(poller.wait, due + timedelta(seconds=FIRE_TIMEOUT))
        fires = BotFires(due, count, setup_seconds, Lateness(count), Lateness(count))
        for seen_at, routine_id, queued in poller.seen.values():
            fires.per_routine[routine_id] += 1
            fires.queued.late.append((queued - due).total_seconds())
            fires.visible.late.append((seen_at - due).total_seconds())
        fires.queued.late.sort()
        fires.visible.late.sort()
        await asyncio.sleep(1.0)  # a missed-fire notice or a late double would show by now
        fires.other_times, fires.missed = count_fires(database_url, due.isoformat())
        return fires
    finally:
        if bot is not None:
            await bot.stop()
        await slack_api.stop()


# The baseline: N no-op APScheduler jobs due at one instant -------------------------------


async def bench_apscheduler(count: int) -> Lateness:
    ran: list[float] = []
    all_ran = asyncio.Event()

    async def job() -> None:
        ran.append(time.time())
        if len(ran) == count:
            all_ran.set()

    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.start()
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=BASELINE_LEAD)
    for index in range(count):  # the scheduler door's job options
        scheduler.add_job(job, "date", run_date=due, id=f"noop-{index}", coalesce=True,
                          max_instances=1, misfire_grace_time=300)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_ran.wait(), BASELINE_LEAD + FIRE_TIMEOUT)
    scheduler.shutdown(wait=False)
    await asyncio.sleep(0.05)  # APScheduler shuts down in a callback on the loop
    return Lateness(count, sorted(at - due.timestamp() for at in ran))


# PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def scratch_database(url: str | None, tmp: Path) -> Iterator[str]:
    """SQLite in `tmp` (no URL); or a fresh database on the PostgreSQL server `url` names,
    dropped afterwards (the URL's own database is not touched)."""
    if url is None:
        yield f"sqlite:///{tmp / 'routines.db'}"
        return
    if make_url(url).get_backend_name() != "postgresql":
        raise BenchError("--database-url takes a PostgreSQL URL (SQLite is the default)")
    name = f"routines_bench_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(url).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


# Report ----------------------------------------------------------------------------------


def report(fires: BotFires, baseline: Lateness, backend: str) -> None:
    def line(label: str, late: Lateness) -> str:
        s = late.summary()
        if not late.late:
            return f"{label:<34} none fired"
        return (f"{label:<34} fired {s['fired']:>6}   p50 {s['p50_s'] * 1000:8.1f} ms   "
                f"p99 {s['p99_s'] * 1000:8.1f} ms   max {s['max_s'] * 1000:8.1f} ms")

    print(f"Fire lateness: {fires.routines} routines `{EVERY_MINUTE}` (UTC), {backend}, due "
          f"{fires.due.isoformat()}; set-up (routines apply + scheduled) "
          f"{fires.setup_seconds:.1f} s")
    print(line("bot, queued_at - scheduled", fires.queued))
    print(line("bot, first seen committed", fires.visible))
    print(line("baseline: no-op APScheduler jobs", baseline))
    print(f"lost: {fires.lost}   fired twice: {fires.doubled}   runs for another time: "
          f"{fires.other_times}   recorded missed: {fires.missed}")
    if baseline.late and fires.visible.late:
        print(f"ratio (bot visible p99 / baseline p99): "
              f"{percentile(fires.visible.late, 99) / percentile(baseline.late, 99):.2f}")
    if not fires.ok:
        print("NOT VERIFIED: see the counts above")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routines", type=int, default=DEFAULT_ROUTINES,
                        help=f"routines due at the same minute (default {DEFAULT_ROUTINES})")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server to measure on (default: SQLite in a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.routines < 1:
        parser.error("--routines must be at least 1")
    return args


def run(args: argparse.Namespace, tmp: Path) -> bool:
    with readable_report(args.json):
        baseline = asyncio.run(bench_apscheduler(args.routines))
        with scratch_database(args.database_url, tmp) as database_url:
            backend = make_url(database_url).get_backend_name()
            fires = asyncio.run(bench_bot(tmp, database_url, args.routines))
        report(fires, baseline, backend)
    if args.json:
        figures: dict[str, Any] = {
            "routines": args.routines, "database": backend,
            "setup_seconds": round(fires.setup_seconds, 2),
            "visible": fires.visible.summary(), "queued": fires.queued.summary(),
            "lost": fires.lost, "fired_twice": fires.doubled,
            "other_times": fires.other_times, "missed": fires.missed}
        ratio = (percentile(fires.visible.late, 99) / percentile(baseline.late, 99)
                 if fires.visible.late and baseline.late else float("nan"))
        print_json("schedule_lateness", figures,
                   {"apscheduler_noop_jobs": baseline.summary()}, ratio, verified=fires.ok,
                   cpu_count=os.cpu_count())
    return fires.ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="routines-bench-") as tmp:
            ok = run(args, Path(tmp))
    except (BenchError, SQLAlchemyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
