"""Parse the text of `/routine ...` into a command. Pure: the Slack listener only calls it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

SUBCOMMANDS_WITH_NAME = {"run", "status", "history"}
SUBCOMMANDS = SUBCOMMANDS_WITH_NAME | {"create", "list", "help"}


@dataclass(frozen=True)
class Command:
    action: str
    name: str = ""
    problem: str = ""


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
    return Command(action)
