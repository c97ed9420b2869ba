"""Parse the text of `/routine ...` into a command. Pure: the Slack listener only calls it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

from bot.core.digest import SUGAR, is_sugar_word

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
    "set": "NAME key=value ... (risk, owners, approvers, max-runs-per-day, max-concurrent, "
           "when-busy, max-tokens, network, engine, repo-config)",
    "delete": "NAME",
    "cancel": "RUN_ID",
    "killswitch": "engage REASON | status | disengage | release | drop",
    "audit": "[NAME]",
    "budget": "[cap AMOUNT]",
    "retries": "NAME ATTEMPTS [BACKOFF_SECONDS] [agent-failures] | NAME off",
    "digest": 'here daily 09:00|hourly|weekly|"CRON" [TIMEZONE] | here off | here | now',
}
FREE_TEXT = {"github", "schedule", "set", "retries"}  # the rest of the line is one argument
KILLSWITCH_ACTIONS = {"engage", "status", "disengage", "release", "drop"}
FORCE = "--force"
FORCEABLE = {"set", "schedule", "retries", "github", "delete"}  # edits of a routine's settings


@dataclass(frozen=True)
class Command:
    action: str
    name: str = ""
    problem: str = ""
    arg: str = ""
    option: str = ""  # the time zone of `schedule` and `digest`
    force: bool = False  # a trailing `--force`: an admin editing a routine managed from files


def parse(text: str) -> Command:
    """An unknown or malformed command becomes `help` with a `problem` to show first."""
    try:
        words = shlex.split(text.strip())
    except ValueError:
        return Command("help", problem="I could not read that command (unbalanced quotes?).")
    force = len(words) > 1 and words[-1].lower() == FORCE
    if force:
        words = words[:-1]
    if not words:
        return Command("help")
    action = words[0].lower()
    if action not in USAGE:
        return Command("help", problem=f"Unknown subcommand `{words[0]}`.")
    usage = Command("help", problem=f"Usage: `/routine {action} {USAGE[action]}`.".replace(
        " `.", "`."))
    rest = words[1:]
    special = _parse_special(action, rest, text)
    if special is not None:
        return special if special.action != "usage" else usage
    parsed = _parse_named(action, rest, usage)
    return replace(parsed, force=True) if force and parsed.action in FORCEABLE else parsed


def _parse_named(action: str, rest: list[str], usage: Command) -> Command:
    """Subcommands about one routine: `ACTION NAME [ARGS]`."""
    if not USAGE[action]:
        return Command(action) if not rest else usage
    if not rest:
        return usage
    name, args = rest[0].lower(), rest[1:]
    if action in _PARSERS:
        return _PARSERS[action](name, args) or usage
    if action in FREE_TEXT:
        return Command(action, name=name, arg=" ".join(args)) if args else usage
    if action == "token" and len(args) <= 1:
        return Command(action, name=name, arg=args[0].lower() if args else DEFAULT_TOKEN_NAME)
    if action == "revoke" and len(args) == 1:
        return Command(action, name=name, arg=args[0].lower())
    return Command(action, name=name) if not args and action not in {"revoke"} else usage


def _parse_special(action: str, rest: list[str], text: str) -> Command | None:
    """Subcommands whose first word is not a routine name; "usage" means malformed."""
    if action == "audit":
        return Command("audit", name=rest[0].lower()) if len(rest) <= 1 and rest else (
            Command("audit") if not rest else Command("usage"))
    if action == "cancel":
        run_id = rest[0].lstrip("#") if len(rest) == 1 else ""
        return Command("cancel", arg=run_id) if run_id.isdigit() else Command("usage")
    if action == "budget":
        if not rest:
            return Command("budget")
        return Command("budget", arg=rest[1]) if len(rest) == 2 and rest[0].lower() == "cap" \
            else Command("usage")
    if action == "killswitch":
        verb = rest[0].lower() if rest else "status"
        if verb not in KILLSWITCH_ACTIONS or (verb != "engage" and len(rest) > 1):
            return Command("usage")
        # the reason keeps the user's own spacing and quotes
        reason = text.strip().split(None, 2)[2] if verb == "engage" and len(rest) > 1 else ""
        if verb == "engage" and not reason:
            return Command("help", problem="Say why: `/routine killswitch engage REASON`.")
        return Command("killswitch", arg=verb, option=reason)
    return None


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


def _schedule(name: str, args: list[str]) -> Command | None:
    if not args:
        return None
    expression, zone = split_schedule(args)
    return Command("schedule", name=name, arg=expression, option=zone)


def _digest(where: str, args: list[str]) -> Command | None:
    """`digest now`, `digest here` (what this channel gets), `digest here off`, or
    `digest here SCHEDULE [TIMEZONE]`; `here` is the channel the command was typed in."""
    if where == "now" and not args:
        return Command("digest", name="now")
    if where != "here":
        return None
    if not args or [a.lower() for a in args] == ["off"]:
        return Command("digest", name="here", arg=" ".join(args).lower())
    expression, zone = split_digest_schedule(args)
    return Command("digest", name="here", arg=expression, option=zone)


def split_digest_schedule(args: list[str]) -> tuple[str, str]:
    """Sugar (`daily 09:00`, `weekly fri 16:00`, `hourly :30`) or what `schedule` takes,
    then the optional time zone."""
    if args[0].lower() not in SUGAR:
        return split_schedule(args)
    size = 1
    while size < len(args) and is_sugar_word(args[size]):
        size += 1
    return " ".join(args[:size]), " ".join(args[size:])


_PARSERS = {"schedule": _schedule, "digest": _digest}  # the rest of the line is theirs
