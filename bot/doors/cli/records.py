"""What the database holds, for the operator: `logs RUN_ID`, `audit`, `db upgrade|current|history`.

Events were redacted when they were stored; token shapes and `ROUTINES_REDACT` values are
masked again on the way out."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from bot.core.run_log import log_lines
from bot.doors.cli import offline
from bot.settings import Settings
from bot.store import schema
from bot.store.database import Database


def add_parsers(sub: Any) -> None:
    logs = sub.add_parser("logs", help="print a run's event log as JSON lines")
    logs.add_argument("run_id", type=int)
    shown = logs.add_mutually_exclusive_group()
    shown.add_argument("--text", action="store_true", help="readable lines instead of JSON")
    shown.add_argument("--diff", action="store_true", help="the run's workspace diff")
    logs.set_defaults(handler=print_logs)
    audit = sub.add_parser("audit", help="print the audit log (newest last)")
    audit.add_argument("--json", action="store_true",
                       help="JSON lines (the default is one readable line per entry)")
    audit.add_argument("--routine", help="only this routine's entries")
    audit.set_defaults(handler=print_audit)
    database = sub.add_parser("db", help="the database's schema: upgrade, current, history")
    database.add_argument("action", choices=["upgrade", "current", "history"])
    database.set_defaults(handler=manage_schema)


def print_logs(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    with offline.services(env) as services:
        if args.diff:
            print(services.redact(services.runs.get(args.run_id).run.diff), end="")
            return
        events = services.runs.events(args.run_id)
        lines = log_lines(events, limit=None) if args.text else [json.dumps(e) for e in events]
        for line in lines:
            print(services.redact(line))


def print_audit(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Every entry, oldest first, read in pages so a long history streams."""
    with offline.services(env) as services:
        after = 0
        while page := services.audit.entries(args.routine, limit=None, after_id=after,
                                             page=500):
            for entry in page:
                record = {"id": entry.id, "at": entry.at.isoformat(), "actor": entry.actor,
                          "action": entry.action, "routine": entry.routine,
                          "details": entry.details}
                print(json.dumps(record) if args.json else
                      f"{record['at']}  {entry.action:<20} {entry.routine or '-':<20} "
                      f"{entry.actor}  {entry.details}")
            after = page[-1].id or after


def manage_schema(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """`routines serve` upgrades by itself; these let an operator upgrade first (before
    rolling out) and see where a database stands."""
    if args.action == "history":
        for revision in schema.history():
            print(f"{revision.revision}  {revision.description}")
        return
    db = Database(env.get("DATABASE_URL", Settings.database_url))
    try:
        if args.action == "current":
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
