"""Parse the text of `/routine ...` into a command. Pure: the Slack listener only calls it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

SUBCOMMANDS_WITH_NAME = {"run", "status", "history", "pause", "resume", "tokens"}
SUBCOMMANDS_WITH_NAME_AND_ARG = {"token": "TOKEN_NAME", "revoke": "TOKEN_NAME"}
SUBCOMMANDS = (SUBCOMMANDS_WITH_NAME | set(SUBCOMMANDS_WITH_NAME_AND_ARG)
               | {"create", "list", "help"})
DEFAULT_TOKEN_NAME = "api"  # noqa: S105 - a label, not a secret


@dataclass(frozen=True)
class Command:
    action: str
    name: str = ""
    problem: str = ""
    arg: str = ""


def parse(text: str) -> Command:
    """An unknown or malformed command becomes `help` with a `problem` to show first."""
    try:
        words = shlex.split(text.strip())
    except ValueError:
        return Command("help", problem="I could not read that command (unbalanced quotes?).")
    if not words:
        return Command("help")
    action = words[0].lower()
    if action not in SUBCOMMANDS:
        return Command("help", problem=f"Unknown subcommand `{words[0]}`.")
    if action in SUBCOMMANDS_WITH_NAME:
        if len(words) != 2:
            return Command("help", problem=f"Usage: `/routine {action} NAME`.")
        return Command(action, name=words[1].lower())
    if action in SUBCOMMANDS_WITH_NAME_AND_ARG:
        arg_name = SUBCOMMANDS_WITH_NAME_AND_ARG[action]
        optional = action == "token"
        if not 2 + (not optional) <= len(words) <= 3:
            shown = f"[{arg_name}]" if optional else arg_name
            return Command("help", problem=f"Usage: `/routine {action} NAME {shown}`.")
        arg = words[2].lower() if len(words) == 3 else DEFAULT_TOKEN_NAME
        return Command(action, name=words[1].lower(), arg=arg)
    return Command(action)
