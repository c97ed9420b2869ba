"""Digest build time over a large run history, beside the bare SQL aggregate it needs.

What it measures:

* Setup (not timed): a fresh database gets `--routines R` routines (half of them on a
  schedule) and `--runs N` finished runs spread evenly over the last `--days D` days, with
  a mix of statuses like a busy deployment's (mostly successes; failures with reasons,
  runs without a self-report, timeouts, infrastructure errors, kills), durations and token
  counts, plus one missed scheduled fire per routine. Rows go in through SQLAlchemy Core in
  batches; the schema (tables and indexes) is the bot's own, from `bot.store.schema.upgrade`.
  Then the rollups (`RunRollup`, `RunDayRollup`) are built by `bot.store.rollups.backfill`,
  what migrations 0008 and 0011 run on a database of runs: the upserts that count each run
  as it finishes, over all of them. Before timing, the facts from the rollups are checked
  equal to the facts read from the runs alone.
* Digest build: `DigestService.compose` for a channel subscribed `D` days ago, so its
  period covers every stored run, then `templates/digest.json.j2` rendered to the Block
  Kit payload: everything the bot does before the Slack call (the SQL aggregates, the
  bounded lists, the pure builder, pricing, the template).
* Baseline, in the same process run, interleaved with the digest builds: the one GROUP BY
  a digest cannot do without (runs of the period by routine and status, with token sums),
  as raw SQL on a DB-API connection from the same engine, rows fetched.

Each is run `--repeat K` times after one untimed warm-up of each; the median, min and max
are printed, then the ratio of the medians (digest / bare aggregate). Also timed: the
facts read from the runs alone (the digest before rollups), and the rollup upsert one
finished run adds to its unit of work (rolled back).

Run from the repository root (SQLite in a temp dir by default; `DATABASE_URL` for another
database, whose tables are then filled: use a scratch database):

    python bench/digest.py                  # 1,000,000 runs
    python bench/digest.py --runs 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import event, func, insert, select  # noqa: E402
from sqlmodel import Session  # noqa: E402

from bench.report import print_json, readable_report  # noqa: E402
from bot.core.digest import DigestFacts, build_digest  # noqa: E402
from bot.core.pricing import PriceTable  # noqa: E402
from bot.core.statuses import FailureKind, RunStatus, TriggerKind  # noqa: E402
from bot.doors.slack.messages import Messages  # noqa: E402
from bot.services.digests import DigestService  # noqa: E402
from bot.store import rollups, schema  # noqa: E402
from bot.store.database import Database  # noqa: E402
from bot.store.tables import (  # noqa: E402
    DigestSubscription,
    MissedFire,
    Routine,
    Run,
    RunDayRollup,
    RunRollup,
)

CHANNEL = "C0BENCH001"
BATCH = 20_000
UPSERTS = 500  # single-run rollup upserts timed
# (status, share, reason, failure kind): the mix of a busy deployment
MIX: list[tuple[RunStatus, float, str | None, FailureKind | None]] = [
    (RunStatus.SUCCEEDED, 0.80, None, None),
    (RunStatus.FAILED, 0.08, "3 tests fail in test_api.py: the fixture server is down",
     FailureKind.REPORTED_FAILURE),
    (RunStatus.FAILED, 0.04, "no self-report (exit code 0)", FailureKind.NO_SELF_REPORT),
    (RunStatus.TIMED_OUT, 0.03, "timed out after 1800s", FailureKind.TIMED_OUT),
    (RunStatus.ERROR, 0.03, "the Anthropic API answered 529 overloaded",
     FailureKind.API_UNAVAILABLE),
    (RunStatus.KILLED, 0.01, "stopped by the kill switch", FailureKind.KILLED),
    (RunStatus.CANCELLED, 0.01, "cancelled", FailureKind.CANCELLED),
]
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
BARE_AGGREGATE = (
    "SELECT routine_id, status, count(*), sum(input_tokens), sum(output_tokens) "
    "FROM run WHERE finished_at >= ? AND finished_at < ? GROUP BY routine_id, status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--routines", type=int, default=50)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-digest-") as tmp:
        url = os.environ.get("DATABASE_URL") or f"sqlite:///{Path(tmp) / 'digest.db'}"
        db = Database(url)
        try:
            with readable_report(args.json):
                figures = bench(db, args.runs, args.routines, args.days, args.repeat)
        finally:
            db.close()
    if args.json:
        bare_ms = figures.pop("bare_group_by_ms")
        print_json("digest", figures, {"bare_group_by_ms": bare_ms},
                   figures["digest_build_ms"] / bare_ms, runs=args.runs,
                   backend=url.split(":", 1)[0], cpu_count=os.cpu_count())


def bench(db: Database, runs: int, routines: int, days: int, repeat: int) -> dict[str, float]:
    """The medians in milliseconds (the digest build's, the bare aggregate's, the facts read
    from the runs alone) and what one run's rollup upsert costs."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=days)
    schema.upgrade(db)
    began = time.perf_counter()
    fill(db, runs, routines, start, now)
    print(f"database: {db.engine.url.render_as_string(hide_password=True)}")
    print(f"stored {runs:,} runs of {routines} routines over {days} days "
          f"in {time.perf_counter() - began:.1f} s (setup, not timed)")

    service = DigestService(db, PriceTable.default())
    messages = Messages()
    end = now + timedelta(seconds=1)

    def build() -> Any:
        digest = service.compose(CHANNEL, end)
        return digest, messages.render("digest.json.j2", digest=digest)

    def bare() -> Any:
        connection = db.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(_paramstyle(db, BARE_AGGREGATE), _bounds(db, start, end))
            return cursor.fetchall()
        finally:
            connection.close()

    (digest, message), groups = build(), bare()  # warm-up, and a check of what is built
    assert digest.total_runs == runs, (digest.total_runs, runs)
    assert service.facts(CHANNEL, start, end) == service.facts(CHANNEL, start, end,
                                                              from_rollups=False)
    assert sum(row[2] for row in groups) == runs
    assert len(message["blocks"]) <= 50
    digest_times, bare_times, from_runs_times = [], [], []
    for _ in range(repeat):
        bare_times.append(timed(bare))
        digest_times.append(timed(build))
        from_runs_times.append(timed(lambda: service.facts(CHANNEL, start, end,
                                                           from_rollups=False)))
    report("bare GROUP BY aggregate", bare_times)
    report("digest build (SQL + builder + template)", digest_times)
    report("the facts read from the runs alone (no rollups: the digest before)",
           from_runs_times)
    ratio = statistics.median(digest_times) / statistics.median(bare_times)
    print(f"ratio (digest / bare aggregate, medians): {ratio:.2f}x")
    print(f"digest: {digest.total_runs:,} runs, {len(message['blocks'])} blocks, "
          f"{len(groups)} (routine, status) groups; text: {message['text']}")
    print("where one digest build spends its time:")
    facts: list[DigestFacts] = []
    print(f"  {timed(lambda: facts.append(service.facts(CHANNEL, start, end))) * 1000:7.0f} ms"
          "  the facts: SQL through the ORM, of which (each statement replayed alone):")
    for seconds, statement in sql_breakdown(db, lambda: service.facts(CHANNEL, start, end)):
        print(f"  {seconds * 1000:11.0f} ms  {statement}")
    shape = timed(lambda: messages.render("digest.json.j2", digest=build_digest(
        facts[0], service.prices, service.limits)))
    print(f"  {shape * 1000:7.0f} ms  the builder, pricing and the template")
    upsert_ms = upsert_cost(db, runs)
    print(f"what counting one finished run in its rollup adds to its unit of work: "
          f"{upsert_ms:.2f} ms (mean of {UPSERTS}, rolled back)")
    return {"digest_build_ms": round(statistics.median(digest_times) * 1000, 1),
            "bare_group_by_ms": round(statistics.median(bare_times) * 1000, 1),
            "facts_from_runs_ms": round(statistics.median(from_runs_times) * 1000, 1),
            "rollup_upsert_ms_per_run": round(upsert_ms, 3),
            "rollup_rows": rollup_rows(db, RunRollup),
            "day_rollup_rows": rollup_rows(db, RunDayRollup)}


def upsert_cost(db: Database, runs: int) -> float:
    """The mean time of `rollups.count_finished` for one run (what the services add to the
    unit of work that finishes a run), over runs spread through the history, in one
    transaction that is rolled back so the rollups stay exact."""
    rng = random.Random(11)
    ids = [rng.randrange(runs) + 1 for _ in range(UPSERTS)]
    with Session(db.engine) as session:
        began = time.perf_counter()
        for run_id in ids:
            rollups.count_finished(session, [run_id])
        spent = time.perf_counter() - began
        session.rollback()
    return spent / len(ids) * 1000


def rollup_rows(db: Database, table: type[RunRollup] | type[RunDayRollup]) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def sql_breakdown(db: Database, action: Callable[[], Any]) -> list[tuple[float, str]]:
    """The SQL statements of one more run of `action`, captured, then replayed one by one
    on a raw connection and timed (execute and fetch: SQLite does part of the work while
    rows are fetched), the slowest first."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        action()
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    spent: list[tuple[float, str]] = []
    connection = db.engine.raw_connection()
    try:
        for statement, parameters in captured:
            cursor = connection.cursor()

            def replay(cursor: Any = cursor, statement: str = statement,
                       parameters: Any = parameters) -> None:
                cursor.execute(statement, parameters)
                cursor.fetchall()

            spent.append((timed(replay), " ".join(statement.split())[:100]))
    finally:
        connection.close()
    spent.sort(reverse=True)
    return [*spent[:3],
            (sum(seconds for seconds, _ in spent[3:]), f"{len(spent[3:])} other statements")]


def fill(db: Database, runs: int, routines: int, start: datetime, end: datetime) -> None:
    rng = random.Random(7)
    with db.engine.begin() as conn:
        conn.execute(insert(Routine), [dict(
            id=i + 1, name=f"bench-{i:03}", prompt="p", repo_url="file:///repo",
            channel_id="C0RESULTS1", model=MODELS[i % len(MODELS)], timeout_seconds=1800,
            max_turns=40, schedule="0 * * * *" if i % 2 else None, created_by="UBENCH",
            created_at=start) for i in range(routines)])
        conn.execute(insert(MissedFire), [dict(
            routine_id=i + 1, scheduled_for=end - timedelta(hours=1), why="the bot was not "
            "running", recorded_at=end - timedelta(minutes=30)) for i in range(routines)])
        conn.execute(insert(DigestSubscription), [dict(
            channel_id=CHANNEL, schedule="0 9 * * *", schedule_tz="UTC", last_sent_at=start,
            created_by="UBENCH", created_at=start)])
    weights = [share for _, share, _, _ in MIX]
    step = (end - start) / runs
    for first in range(0, runs, BATCH):
        rows = []
        for i in range(first, min(first + BATCH, runs)):
            status, _, reason, failure = rng.choices(MIX, weights)[0]
            finished = start + step * i
            rows.append(dict(
                routine_id=rng.randrange(routines) + 1, status=status,
                trigger_kind=TriggerKind.SCHEDULE, triggered_by="schedule",
                prompt="p", queued_at=finished,
                started_at=finished - timedelta(seconds=rng.randrange(5, 1800)),
                finished_at=finished, reason=reason, failure_kind=failure,
                input_tokens=rng.randrange(1_000, 200_000),
                output_tokens=rng.randrange(100, 20_000)))
        with db.engine.begin() as conn:
            conn.execute(insert(Run), rows)
    with db.engine.begin() as conn:  # what migrations 0008 and 0011 do on a database of runs
        rollups.backfill(conn)


def timed(action: Callable[[], Any]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def report(label: str, times: list[float]) -> None:
    print(f"{label}: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={len(times)})")


def _paramstyle(db: Database, sql: str) -> str:
    return sql if db.engine.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


def _bounds(db: Database, start: datetime, end: datetime) -> tuple[Any, Any]:
    """The period as the database stores times: SQLite keeps UTC text without a zone."""
    if db.engine.dialect.name == "sqlite":
        return (start.strftime("%Y-%m-%d %H:%M:%S.%f"), end.strftime("%Y-%m-%d %H:%M:%S.%f"))
    return start, end


if __name__ == "__main__":
    main()
