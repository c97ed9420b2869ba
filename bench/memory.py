"""Memory: the bot's RSS with 10,000 routines and 1,000,000 runs, beside an empty bot.

What it does:

* Fills a SQLite database (a temp dir) with `--routines` routines (every other one on an
  hourly schedule, so the scheduler holds their jobs) and `--runs` finished runs over a week,
  the same fill as `bench/digest.py`.
* Starts `routines serve` on it as a process of its own (the Slack and Anthropic stand-ins
  on loopback), waits until it is ready and its first schedule resync is done, then reads
  its RSS from /proc: `rss_idle_mib`. Then it makes the bot read everything a user can ask
  for at that size: `/routine list`, `/routine history` and `/routine status` of a routine,
  the App Home of an admin, each `--repeat` times, and reads the RSS again:
  `rss_used_mib` (the larger of the two is what an operator must provision).
* The baseline, in the same run: the same bot on an empty database (schema only), with the
  same requests. The ratio is the full bot's RSS over the empty one's; `per_routine_kib`
  spreads the difference over the routines (an upper bound: the runs share it).

Run from the repository root:

    python bench/memory.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.digest import fill  # noqa: E402
from bench.report import print_json, readable_report  # noqa: E402
from bench.soak import rss_mib  # noqa: E402
from bot.store import schema  # noqa: E402
from bot.store.database import Database  # noqa: E402
from bot.store.tables import Run  # noqa: E402
from tests.standins.anthropic_api import AnthropicStandIn  # noqa: E402
from tests.standins.environment import API_KEY, local_settings  # noqa: E402
from tests.standins.slack_api import SlackApiStandIn  # noqa: E402
from tests.support.served_bot import ServedBot  # noqa: E402

ADMIN = "U0ADMIN001"
SETTLE_SECONDS = 3.0  # after ready: the first resync and the digest jobs are set


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routines", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="times each read is asked for before the second sample")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def filled_database(url: str, routines: int, runs: int) -> float:
    """Schema, then the routines and runs (none when `routines` is 0); seconds it took."""
    began = time.perf_counter()
    db = Database(url)
    try:
        schema.upgrade(db)
        if routines:
            now = datetime.now(UTC).replace(microsecond=0)
            fill(db, runs, routines, now - timedelta(days=7), now)
            with db.engine.begin() as conn:  # their results were posted long ago
                conn.execute(update(Run).values(notified_at=Run.finished_at))
    finally:
        db.close()
    return time.perf_counter() - began


async def measure(tmp: Path, routines: int, runs: int, repeat: int) -> dict[str, Any]:
    """One bot process over a database of this size: its RSS idle and after the reads."""
    slack_api, anthropic_api = SlackApiStandIn(), AnthropicStandIn(API_KEY)
    await slack_api.start()
    await anthropic_api.start()
    settings = local_settings(tmp, slack_api.url, anthropic_api.url, admins=[ADMIN])
    fill_seconds = await asyncio.to_thread(filled_database, settings.database_url,
                                           routines, runs)
    bot = ServedBot(settings, tmp)
    try:
        began = time.perf_counter()
        await bot.start()
        ready_seconds = time.perf_counter() - began
        await asyncio.sleep(SETTLE_SECONDS)
        assert bot.proc is not None
        idle = rss_mib(bot.proc.pid)
        name = "bench-001" if routines else ""
        for _ in range(repeat):
            for text in ("list", f"history {name}".strip(), f"status {name}".strip()):
                reply = await bot.slack.slash(text, user=ADMIN)
                if reply.status != 200:
                    raise SystemExit(f"/routine {text} answered {reply.status}")
            home = await bot.slack.open_home(user=ADMIN)
            if home.status != 200:
                raise SystemExit(f"App Home answered {home.status}")
        await asyncio.sleep(1.0)  # the views are published after the acks
        used = rss_mib(bot.proc.pid)
    finally:
        await bot.stop()
        await anthropic_api.stop()
        await slack_api.stop()
    errors = [line for line in bot.log().splitlines() if " ERROR " in line]
    if errors:
        raise SystemExit("the bot logged errors:\n" + "\n".join(errors[:5]))
    return {"routines": routines, "runs": runs, "fill_s": round(fill_seconds, 1),
            "start_to_ready_s": round(ready_seconds, 2), "rss_idle_mib": round(idle, 1),
            "rss_used_mib": round(used, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with readable_report(args.json), tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        for part in ("empty", "full"):
            (Path(tmp) / part).mkdir()
        empty = asyncio.run(measure(Path(tmp) / "empty", 0, 0, args.repeat))
        print(f"empty bot: {empty}")
        full = asyncio.run(measure(Path(tmp) / "full", args.routines, args.runs, args.repeat))
        print(f"{args.routines:,} routines, {args.runs:,} runs: {full}")
        peak, base = (max(f["rss_idle_mib"], f["rss_used_mib"]) for f in (full, empty))
        per_routine = (peak - base) * 1024 / max(args.routines, 1)
        print(f"RSS {peak:.1f} MiB against {base:.1f} MiB empty: {peak / base:.2f}x, "
              f"at most {per_routine:.1f} KiB per routine")
    if args.json:
        print_json("memory", dict(full, per_routine_kib=round(per_routine, 2)), empty,
                   peak / base, cpu_count=os.cpu_count())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
