"""The `routines` command, the operator's door.

`serve` starts the bot; `doctor` checks what it needs; `routine`, `run` and `killswitch`
act through the same services and rules as Slack, as the operator identity
`ROUTINES_OPERATOR`; `apply` and `export` keep routines as YAML files; `logs`, `audit`
and `db` read and upgrade the database. A `.env` file in the working directory is read
first; the environment wins. This package is the only place that reads the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bot.doors.cli import as_code, checkup, operate, records, serving
from bot.errors import RoutinesError, SettingsError
from bot.settings import environment

ENV_FILE = Path(".env")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"routines {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serving.add_parser(sub)
    operate.add_parsers(sub)
    records.add_parsers(sub)
    as_code.add_parsers(sub)
    checkup.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        env = environment(os.environ, ENV_FILE)
        handler = args.handler
        handler(args, env)
    except SettingsError as exc:
        print(f"routines: {exc}", file=sys.stderr)
        return 2
    except RoutinesError as exc:
        print(f"routines: {exc}", file=sys.stderr)
        return 1
    return 0


def _version() -> str:
    try:
        return version("routines")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


__all__ = ["main"]
