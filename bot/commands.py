"""Parse the text of `/routine ...` into a command. Pure: the Slack listener only calls it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

DEFAULT_TOKEN_NAME = "api"  # noqa: S105 - a label, not a secret

# subcommand -> usage after the subcommand word ("" = takes nothing)
USAGE = {
    "create": "", "list": "", "help": "",
    "run": "NAME", "status": "NAME", "history": "NAME", "pause": "NAME", "resume": "NAME",
    "tokens": "NAME",
    "token": "NAME [TOKEN_NAME]",
    "revoke": "NAME TOKEN_NAME",
    "github": 'NAME "EVENT[.ACTION] [repo=ORG/REPO] [branch=GLOB] ..." | NAME off',
    "schedule": 'NAME "CRON or every 5m" [TIMEZONE] | NAME off',
    "retries": "NAME ATTEMPTS [BACKOFF_SECONDS] [agent-failures] | NAME off",
}
FREE_TEXT = {"github", "schedule", "retries"}  # the rest of the line is one argument


@dataclass(frozen=True)
class Command:
    action: str
    name: str = ""
    problem: str = ""
    arg: str = ""
    option: str = ""  # the time zone of `schedule`


def parse(text: str) -> Command:
    """An unknown or malformed command becomes `help` with a `problem` to show first."""
    try:
        words = shlex.split(text.strip())
    except ValueError:
        return Command("help", problem="I could not read that command (unbalanced quotes?).")
    if not words:
        return Command("help")
    action = words[0].lower()
    if action not in USAGE:
        return Command("help", problem=f"Unknown subcommand `{words[0]}`.")
    usage = Command("help", problem=f"Usage: `/routine {action} {USAGE[action]}`.".replace(
        " `.", "`."))
    rest = words[1:]
    if not USAGE[action]:
        return Command(action) if not rest else usage
    if not rest:
        return usage
    name, args = rest[0].lower(), rest[1:]
    if action == "schedule" and args:
        expression, zone = split_schedule(args)
        return Command(action, name=name, arg=expression, option=zone)
    if action in FREE_TEXT:
        return Command(action, name=name, arg=" ".join(args)) if args else usage
    if action == "token" and len(args) <= 1:
        return Command(action, name=name, arg=args[0].lower() if args else DEFAULT_TOKEN_NAME)
    if action == "revoke" and len(args) == 1:
        return Command(action, name=name, arg=args[0].lower())
    return Command(action, name=name) if not args and action not in {"revoke"} else usage


def split_schedule(args: list[str]) -> tuple[str, str]:
    """The expression and the optional time zone, quoted (`"0 9 * * 1" Europe/Paris`) or
    not (`0 9 * * 1 Europe/Paris`, `every 5m UTC`)."""
    if args[0].lower() in {"every", "@every"}:
        size = 2
    elif len(args) >= 5:
        size = 5
    else:
        size = 1
    return " ".join(args[:size]), " ".join(args[size:])
