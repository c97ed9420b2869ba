"""The operator's commands: `routine list|show|run|pause|resume|delete`, `run show|cancel|logs`,
`killswitch engage|status|disengage`.

They call the same service methods as `/routine` in Slack, so the same rules hold (roles,
pause, kill switch, budgets) and the same audit entries are written, by the operator
identity `ROUTINES_OPERATOR` (a Slack user id: the roles are Slack's). A run queued here is
started by the `routines serve` process that polls the same database; a stop asked here is
carried out by the process running the run. `--json` prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from bot.core import trigger
from bot.doors.cli import offline, records
from bot.errors import SettingsError
from bot.services import Services
from bot.services.views import KillSwitchReport, RoutineOverview, RunView

OPERATOR_ENV = "ROUTINES_OPERATOR"
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")
Action = Callable[[Services, argparse.Namespace, str], Any]


def add_parsers(sub: Any) -> None:
    routine = sub.add_parser("routine", help="list, show, run, pause, resume or delete routines")
    verbs = routine.add_subparsers(dest="verb", required=True)
    _verb(verbs, "list", _routine_list, "every routine, with its state and last run")
    for name, action, what in (
            ("show", _routine_show, "one routine's settings and last run"),
            ("run", _routine_run, "queue a run now (as /routine run)"),
            ("pause", _routine_pause, "pause its schedule and triggers"),
            ("resume", _routine_resume, "resume it"),
            ("delete", _routine_delete, "delete it (its runs and audit entries are kept)")):
        _verb(verbs, name, action, what).add_argument("name", type=str.lower)
    verbs.choices["delete"].add_argument(
        "--force", action="store_true", help="an admin deleting a routine managed from files")
    run = sub.add_parser("run", help="show, cancel or print the log of one run")
    run_verbs = run.add_subparsers(dest="verb", required=True)
    _verb(run_verbs, "show", _run_show, "the run's status, provenance and usage").add_argument(
        "run_id", type=int)
    _verb(run_verbs, "cancel", _run_cancel, "stop the run").add_argument("run_id", type=int)
    logs = run_verbs.add_parser("logs", help="the run's event log (as `routines logs`)")
    logs.add_argument("run_id", type=int)
    logs.add_argument("--text", action="store_true", help="readable lines instead of JSON")
    logs.set_defaults(handler=records.print_logs, diff=False)
    switch = sub.add_parser("killswitch", help="engage, disengage, or show the kill switch")
    switch_verbs = switch.add_subparsers(dest="verb", required=True)
    _verb(switch_verbs, "engage", _engage, "stop every run and hold new ones").add_argument(
        "reason", nargs="+", help="why (announced and kept in the audit log)")
    _verb(switch_verbs, "status", _switch_status, "whether it is engaged, by whom, why")
    _verb(switch_verbs, "disengage", _disengage, "let runs start again")


def _verb(verbs: Any, name: str, action: Action, what: str) -> Any:
    parser = verbs.add_parser(name, help=what)
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.set_defaults(handler=_handler(action))
    return parser


def _handler(action: Action) -> Callable[[argparse.Namespace, Mapping[str, str]], None]:
    def handle(args: argparse.Namespace, env: Mapping[str, str]) -> None:
        operator = operator_of(env)
        with offline.services(env) as services:
            shown = action(services, args, operator)
        print(json.dumps(shown, indent=2) if args.json else _text(shown))
    return handle


def operator_of(env: Mapping[str, str]) -> str:
    """The Slack user id the CLI acts as (`ROUTINES_OPERATOR`)."""
    value = env.get(OPERATOR_ENV, "").strip()
    if not value:
        raise SettingsError(f"set {OPERATOR_ENV} to the Slack user id the CLI acts as "
                            "(its roles apply, and the audit log names it)")
    if not _SLACK_USER.match(value):
        raise SettingsError(f"setting {OPERATOR_ENV} must be a Slack user id such as "
                            f"U0123ABCD, got {value!r}")
    return value


# --- the actions: each calls one service method and returns what to show -----------------

def _routine_list(services: Services, args: argparse.Namespace, operator: str) -> Any:
    return [_overview(o) for o in services.routines.overviews()]


def _routine_show(services: Services, args: argparse.Namespace, operator: str) -> Any:
    return _overview(services.routines.overview(args.name), full=True)


def _routine_run(services: Services, args: argparse.Namespace, operator: str) -> Any:
    triggered = services.triggers.trigger(args.name, trigger.manual(operator))
    return dict(_run(triggered.view), replayed=triggered.replayed)


def _routine_pause(services: Services, args: argparse.Namespace, operator: str) -> Any:
    services.routines.pause(args.name, operator)
    return _overview(services.routines.overview(args.name))


def _routine_resume(services: Services, args: argparse.Namespace, operator: str) -> Any:
    services.routines.resume(args.name, operator)
    return _overview(services.routines.overview(args.name))


def _routine_delete(services: Services, args: argparse.Namespace, operator: str) -> Any:
    services.routines.delete(args.name, operator, force=args.force)
    return {"deleted": args.name}


def _run_show(services: Services, args: argparse.Namespace, operator: str) -> Any:
    return _run(services.runs.get(args.run_id), full=True)


def _run_cancel(services: Services, args: argparse.Namespace, operator: str) -> Any:
    return _run(services.runs.cancel(args.run_id, operator))


def _engage(services: Services, args: argparse.Namespace, operator: str) -> Any:
    return _switch(services.kill_switch.engage(operator, " ".join(args.reason)))


def _switch_status(services: Services, args: argparse.Namespace, operator: str) -> Any:
    return _switch(services.kill_switch.report())


def _disengage(services: Services, args: argparse.Namespace, operator: str) -> Any:
    return _switch(services.kill_switch.disengage(operator))


# --- what is shown: plain data, the same for --json and for text --------------------------

def _overview(overview: RoutineOverview, full: bool = False) -> dict[str, Any]:
    routine = overview.routine
    shown: dict[str, Any] = {
        "name": routine.name, "state": "paused" if routine.paused else "active",
        "schedule": routine.schedule, "channel": routine.channel_id,
        "last_run": _run_summary(overview.last_run),
        "next_fires": [t.isoformat() for t in overview.next_fires],
    }
    if full:
        shown["details"] = routine.model_dump(mode="json", exclude={"id"})
    return shown


def _run_summary(run: Any) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"id": run.id, "status": str(run.status),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None}


def _run(view: RunView, full: bool = False) -> dict[str, Any]:
    run = view.run
    shown: dict[str, Any] = {
        "id": run.id, "routine": view.routine.name, "status": str(run.status),
        "trigger": {"kind": str(run.trigger_kind), "actor": run.triggered_by},
        "summary": run.summary, "reason": run.reason,
        "failure_kind": str(run.failure_kind) if run.failure_kind else None,
        "tokens": {"input": run.input_tokens, "output": run.output_tokens},
        "duration_seconds": view.duration_seconds,
    }
    if full:
        shown["details"] = run.model_dump(mode="json", exclude={"diff", "prompt"})
    return shown


def _switch(report: KillSwitchReport) -> dict[str, Any]:
    state = report.state
    return {"engaged": state.engaged, "reason": state.reason or None,
            "changed_by": state.changed_by or None,
            "changed_at": state.changed_at.isoformat() if state.changed_at else None,
            "stopping": report.stopping, "held": report.held.total}


def _text(shown: Any) -> str:
    """A terminal's reading of the same data: one line per item, `key: value` for one."""
    if isinstance(shown, list):
        return "\n".join(_line(item) for item in shown) or "(none)"
    return "\n".join(f"{key}: {_value(value)}" for key, value in shown.items()
                     if key != "details") + _details(shown)


def _line(item: dict[str, Any]) -> str:
    last = item["last_run"]
    ran = f"last run #{last['id']} {last['status']}" if last else "never ran"
    return f"{item['name']:<24} {item['state']:<7} {item['schedule'] or '-':<20} {ran}"


def _details(shown: dict[str, Any]) -> str:
    rows = shown.get("details") or {}
    return "".join(f"\n  {key}: {_value(value)}" for key, value in rows.items())


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
    return "-" if value is None or value == "" else str(value)
