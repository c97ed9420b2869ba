"""Trigger throughput of the API door (fire lateness is `bench/schedule_lateness.py`).

What it measures:

* API trigger throughput: requests per second that the bot answers 202 *and* records
  durably. The bot runs in-process on loopback with `max_concurrent_runs=0`, so runs are
  queued and never executed: what is timed is the door (`POST /api/v1/routines/NAME/runs`
  with a bearer token, a JSON body and a unique `Idempotency-Key`) plus the database write.
  `--requests N` requests go out from one aiohttp ClientSession, `--concurrency C` in
  flight, after a short untimed warm-up. Every answer must be 202, and once the bot has
  stopped a fresh database connection must find exactly N timed runs: "recorded" is
  checked, not assumed. Measured on SQLite (a file in a temp dir), and also on PostgreSQL
  when `DATABASE_URL` is a PostgreSQL URL: a scratch database is created on that server for
  the run and dropped at the end (the URL's own database is not touched).
* Baseline, in the same process run: a bare aiohttp handler that reads the body and
  answers 202, hit by the same client code with the same N and concurrency. Both rates
  and the ratio (bot / bare) are printed. The client shares the process and event loop
  with the server in both cases, so the ratio compares like with like.

Everything is local: the bot, a Slack API stand-in and the bare server listen on
127.0.0.1; PostgreSQL only if `DATABASE_URL` points at one. Docker must be reachable (the
bot opens a client at start-up) but no container is started.

Run from the repository root:

    python bench/trigger_throughput.py
    DATABASE_URL=postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/postgres \\
        python bench/trigger_throughput.py

Options: `--requests N` (default 2000), `--concurrency C` (default 32).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
import docker.errors  # noqa: E402
import sqlalchemy  # noqa: E402
from aiohttp import web  # noqa: E402
from sqlalchemy.engine import Connection, make_url  # noqa: E402
from sqlalchemy.exc import ArgumentError, SQLAlchemyError  # noqa: E402

from bench.report import print_json, readable_report  # noqa: E402
from bot.app import Bot  # noqa: E402
from bot.core.routine import RoutineDraft  # noqa: E402
from bot.services import Services  # noqa: E402
from bot.settings import Settings  # noqa: E402
from tests.standins.environment import local_settings  # noqa: E402
from tests.standins.slack_api import SlackApiStandIn  # noqa: E402

DEFAULT_REQUESTS = 2000
DEFAULT_CONCURRENCY = 32
WARMUP_REQUESTS = 50
ROUTINE = "bench-trigger"
TOKEN_NAME = "bench"
ACTOR = "UBENCH0001"
RESULTS_CHANNEL = "C0RESULTS1"
# Runs are never executed (max_concurrent_runs=0): nothing ever calls this address.
NO_ANTHROPIC = "http://127.0.0.1:9"
REQUEST_TIMEOUT = 60.0
TIMED_PREFIX = "timed-"


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


@dataclass
class Batch:
    """One timed batch of POSTs against one target."""

    label: str
    requests: int
    seconds: float
    statuses: Counter[int]  # 0 counts transport errors (no HTTP answer)
    recorded: int | None = None  # timed runs a fresh connection found (None: not the bot)
    total_runs: int | None = None
    durability: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def accepted(self) -> int:
        return self.statuses[202]

    @property
    def ok(self) -> bool:
        return self.accepted == self.requests and self.recorded in (None, self.requests)


# The client, the same for every target ---------------------------------------------------


def client_session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))


async def post_batch(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                     requests: int, concurrency: int, key_prefix: str) -> Counter[int]:
    """POST `requests` JSON bodies, `concurrency` in flight, each with its own key."""
    statuses: Counter[int] = Counter()
    indexes = iter(range(requests))  # shared by the workers: one loop, no lock needed

    async def worker() -> None:
        for index in indexes:
            try:
                async with session.post(url, json={"n": index}, headers={
                        **headers, "Idempotency-Key": f"{key_prefix}{index}"}) as reply:
                    await reply.read()
                    statuses[reply.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses[0] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def measure(label: str, url: str, headers: dict[str, str], requests: int,
                  concurrency: int) -> Batch:
    """An untimed warm-up (connections, caches), then the timed batch."""
    async with client_session(concurrency) as session:
        warmup = await post_batch(session, url, headers, min(WARMUP_REQUESTS, requests),
                                  concurrency, "warmup-")
        if set(warmup) != {202}:
            raise BenchError(f"{label}: warm-up answers were {dict(warmup)}, not all 202")
        t0 = time.monotonic()
        statuses = await post_batch(session, url, headers, requests, concurrency,
                                    TIMED_PREFIX)
        seconds = time.monotonic() - t0
    print(f"  {label}: {requests} requests in {seconds:.3f}s", file=sys.stderr, flush=True)
    return Batch(label, requests, seconds, statuses)


# The baseline: a bare aiohttp handler ----------------------------------------------------


async def bench_bare(requests: int, concurrency: int) -> Batch:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True}, status=202)

    app = web.Application()
    app.router.add_post("/api/v1/routines/{name}/runs", accept)
    runner = web.AppRunner(app, access_log=None)  # as the bot's own server
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return await measure("bare aiohttp", f"http://127.0.0.1:{port}/api/v1/routines/"
                             f"{ROUTINE}/runs", {"Authorization": "Bearer none"},
                             requests, concurrency)
    finally:
        await runner.cleanup()


# The bot ---------------------------------------------------------------------------------


def bot_settings(tmp: Path, slack_url: str, database_url: str, **overrides: object) -> Settings:
    return local_settings(tmp, slack_url, NO_ANTHROPIC, database_url=database_url,
                          data_dir=tmp / "data", max_concurrent_runs=0, **overrides)


def make_bot(settings: Settings) -> Bot:
    try:
        return Bot(settings)
    except docker.errors.DockerException as exc:
        raise BenchError(f"the bot needs a reachable Docker engine at start-up ({exc}); "
                         "no container is started") from None


def draft(name: str, tmp: Path) -> RoutineDraft:
    # allow_local_repos is on in local settings; the repository is never cloned.
    return RoutineDraft(name=name, prompt="Benchmark routine: never executed.",
                        repo_url=f"file://{tmp / 'repo'}", channel_id=RESULTS_CHANNEL)


def create_api_routine(services: Services, tmp: Path) -> str:
    services.routines.create(draft(ROUTINE, tmp), ACTOR)
    return services.tokens.create(ROUTINE, TOKEN_NAME, ACTOR)


async def bench_bot_door(label: str, database_url: str, tmp: Path, requests: int,
                         concurrency: int) -> Batch:
    """The bot's API door on `database_url`, one routine, one token."""
    slack_api = SlackApiStandIn()
    bot: Bot | None = None
    try:
        await slack_api.start()
        bot = make_bot(bot_settings(tmp, slack_api.url, database_url,
                                    triggers_per_minute=10**9))
        await bot.start()
        token = await asyncio.to_thread(create_api_routine, bot.services, tmp)
        url = f"http://127.0.0.1:{bot.port}/api/v1/routines/{ROUTINE}/runs"
        return await measure(label, url, {"Authorization": f"Bearer {token}"}, requests,
                             concurrency)
    finally:
        if bot is not None:
            await bot.stop()
        await slack_api.stop()


def check_recorded(batch: Batch, database_url: str) -> None:
    """Count the runs through a fresh connection, after the bot has stopped."""
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            batch.recorded = int(conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM run WHERE trigger_ref LIKE :prefix"),
                {"prefix": f"{TIMED_PREFIX}%"}).scalar_one())
            batch.total_runs = int(conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM run")).scalar_one())
            batch.durability = durability(conn)
    finally:
        engine.dispose()


def durability(conn: Connection) -> str:
    """The settings that decide whether a commit has reached the disk."""
    def show(statement: str) -> str:
        return str(conn.exec_driver_sql(statement).scalar_one())

    if conn.dialect.name == "sqlite":
        levels = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
        sync = show("PRAGMA synchronous")
        return f"journal_mode={show('PRAGMA journal_mode')} synchronous={levels.get(sync, sync)}"
    return (f"synchronous_commit={show('SHOW synchronous_commit')} fsync={show('SHOW fsync')} "
            f"server {show('SHOW server_version')}")


def bot_batch(label: str, database_url: str, tmp: Path, args: argparse.Namespace) -> Batch:
    tmp.mkdir(parents=True, exist_ok=True)
    batch = asyncio.run(bench_bot_door(label, database_url, tmp, args.requests,
                                       args.concurrency))
    check_recorded(batch, database_url)
    return batch


def postgres_admin_url() -> str | None:
    """`DATABASE_URL` when it is a PostgreSQL URL; None (SQLite only) otherwise."""
    raw = os.environ.get("DATABASE_URL", "").strip()
    if not raw:
        return None
    try:
        backend = make_url(raw).get_backend_name()
    except ArgumentError:
        raise BenchError("DATABASE_URL is not a database URL") from None
    if backend != "postgresql":
        print(f"note: DATABASE_URL is a {backend} URL, not PostgreSQL: measuring SQLite only",
              file=sys.stderr)
        return None
    return raw


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """A fresh database on the server `admin_url` names, dropped afterwards."""
    name = f"routines_bench_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except SQLAlchemyError as exc:
            raise BenchError(f"cannot create a scratch database on "
                             f"{make_url(admin_url).render_as_string()}: {exc}") from None
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


# Report ----------------------------------------------------------------------------------


def report_throughput(batches: list[Batch], concurrency: int) -> None:
    bare, bots = batches[0], batches[1:]
    print(f"API trigger throughput: {bare.requests} timed requests per target "
          f"(after {min(WARMUP_REQUESTS, bare.requests)} warm-up), {concurrency} in flight, "
          "one aiohttp ClientSession")
    print("recorded = timed runs a fresh connection finds once the bot has stopped")
    print()
    print(f"{'target':<18} {'seconds':>8} {'req/s':>9} {'202':>6} {'other':>6}  recorded")
    for batch in batches:
        other = {code: n for code, n in batch.statuses.items() if code != 202}
        recorded = "-" if batch.recorded is None else f"{batch.recorded}/{batch.requests}"
        line = (f"{batch.label:<18} {batch.seconds:8.3f} {batch.rate:9.1f} "
                f"{batch.accepted:6d} {sum(other.values()):6d}  {recorded}")
        if other:
            line += f"   other answers: {other} (0 = no HTTP answer)"
        print(line)
    print()
    for batch in bots:
        print(f"{batch.label}: {batch.durability}; runs in the database: {batch.total_runs} "
              f"(timed + warm-up)")
    for batch in bots:
        print(f"ratio {batch.label} / bare:".ljust(32) + f"{batch.rate / bare.rate:.3f}  "
              f"({batch.rate:.1f} vs {bare.rate:.1f} req/s)")
    for batch in batches:
        if not batch.ok:
            print(f"NOT VERIFIED: {batch.label}: {batch.accepted} of {batch.requests} answered "
                  f"202, {batch.recorded} recorded")
    print(flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="API trigger requests/s durably recorded (SQLite, and PostgreSQL when "
                    "DATABASE_URL is one) beside a bare aiohttp handler.")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help=f"timed requests per target (default {DEFAULT_REQUESTS})")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"requests in flight (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def run_benchmarks(args: argparse.Namespace, tmp: Path) -> bool:
    with readable_report(args.json):
        ok, batches = measure_all(args, tmp)
    if args.json:
        bare, bots = batches[0], batches[1:]
        figures: dict[str, object] = {f"{b.label} req/s": round(b.rate, 1) for b in bots}
        print_json("trigger_throughput", figures, {"bare aiohttp req/s": round(bare.rate, 1)},
                   bots[0].rate / bare.rate, verified=ok,
                   ratios={b.label: round(b.rate / bare.rate, 4) for b in bots},
                   cores=os.cpu_count())
    return ok


def measure_all(args: argparse.Namespace, tmp: Path) -> tuple[bool, list[Batch]]:
    admin_url = postgres_admin_url()
    batches = [asyncio.run(bench_bare(args.requests, args.concurrency))]
    batches.append(bot_batch("bot, SQLite", f"sqlite:///{tmp / 'sqlite' / 'routines.db'}",
                             tmp / "sqlite", args))
    if admin_url is not None:
        with scratch_postgres(admin_url) as database_url:
            batches.append(bot_batch("bot, PostgreSQL", database_url, tmp / "postgres", args))
    report_throughput(batches, args.concurrency)
    return all(batch.ok for batch in batches), batches


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="routines-bench-") as tmp:
            ok = run_benchmarks(args, Path(tmp))
    except (BenchError, SQLAlchemyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
