"""The `routines` command: `serve` starts the bot; `logs RUN_ID` prints a run's log;
`audit` the audit log; `db upgrade|current|history` manages the database's schema.

This is the entry point, the only place that reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from bot.core.redaction import Redactor
from bot.errors import RoutinesError, SettingsError
from bot.logging_config import configure_logging
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.services import Services
    from bot.store.database import Database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the bot (Socket Mode if SLACK_APP_TOKEN is set)")
    logs = sub.add_parser("logs", help="print a run's event log as JSON lines")
    logs.add_argument("run_id", type=int)
    shown = logs.add_mutually_exclusive_group()
    shown.add_argument("--text", action="store_true", help="readable lines instead of JSON")
    shown.add_argument("--diff", action="store_true", help="the run's workspace diff")
    audit = sub.add_parser("audit", help="print the audit log (newest last)")
    audit.add_argument("--json", action="store_true",
                       help="JSON lines (the default is one readable line per entry)")
    audit.add_argument("--routine", help="only this routine's entries")
    database = sub.add_parser("db", help="the database's schema: upgrade, current, history")
    database.add_argument("action", choices=["upgrade", "current", "history"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            settings = Settings.from_env()
            configure_logging(settings.log_format, os.environ.get("LOG_LEVEL", "INFO"),
                              Redactor(settings.secrets))
            asyncio.run(serve(settings))
        elif args.command == "audit":
            print_audit(args.routine, args.json)
        elif args.command == "db":
            manage_schema(args.action)
        else:
            print_logs(args.run_id, text=args.text, diff=args.diff)
    except SettingsError as exc:
        print(f"routines: {exc}", file=sys.stderr)
        return 2
    except RoutinesError as exc:
        print(f"routines: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: Settings) -> None:
    from bot.app import Bot  # imported late: `routines --help` needs no docker client

    bot = Bot(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await bot.start()
    try:
        await stop.wait()
    finally:
        await bot.stop()


def offline_services() -> tuple[Services, Database]:
    """The services over the database alone, for commands that need no Slack or Docker
    (what they read was redacted when it was stored)."""
    from bot.services import ServicePolicy, Services
    from bot.store.database import Database

    settings = Settings(slack_bot_token="", anthropic_api_key="",
                        database_url=os.environ.get("DATABASE_URL", Settings.database_url),
                        extra_secrets=tuple(v for v in os.environ.get("ROUTINES_REDACT", "")
                                            .split(",") if v.strip()))
    db = Database(settings.database_url)
    redact = Redactor(settings.secrets)
    return Services(db, ServicePolicy.from_settings(settings), redact), db


def print_logs(run_id: int, text: bool = False, diff: bool = False) -> None:
    """Events were redacted when they were stored; token shapes and `ROUTINES_REDACT`
    values are masked again on the way out."""
    from bot.core.run_log import log_lines

    services, db = offline_services()
    try:
        if diff:
            print(services.redact(services.runs.get(run_id).run.diff), end="")
            return
        events = services.runs.events(run_id)
        lines = log_lines(events, limit=None) if text else [json.dumps(e) for e in events]
        for line in lines:
            print(services.redact(line))
    finally:
        db.close()


def print_audit(routine: str | None, as_json: bool) -> None:
    """Every entry, oldest first, read in pages so a long history streams."""
    services, db = offline_services()
    try:
        after = 0
        while page := services.audit.entries(routine, limit=None, after_id=after, page=500):
            for entry in page:
                record = {"id": entry.id, "at": entry.at.isoformat(), "actor": entry.actor,
                          "action": entry.action, "routine": entry.routine,
                          "details": entry.details}
                print(json.dumps(record) if as_json else
                      f"{record['at']}  {entry.action:<20} {entry.routine or '-':<20} "
                      f"{entry.actor}  {entry.details}")
            after = page[-1].id or after
    finally:
        db.close()


def manage_schema(action: str) -> None:
    """`routines serve` upgrades by itself; these let an operator upgrade first (before
    rolling out) and see where a database stands."""
    from bot.store import schema
    from bot.store.database import Database

    if action == "history":
        for revision in schema.history():
            print(f"{revision.revision}  {revision.description}")
        return
    db = Database(os.environ.get("DATABASE_URL", Settings.database_url))
    try:
        if action == "current":
            at = schema.current(db)
            head = schema.head()
            print(f"{at or 'none'} (head {head}{', up to date' if at == head else ''})")
        else:
            done = schema.upgrade(db)
            if done.before == done.after:
                print(f"already at {done.after}")
            else:
                print(f"upgraded from {done.before or 'an empty database'} to {done.after}")
    finally:
        db.close()
