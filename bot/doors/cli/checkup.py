"""`routines doctor`: one line per check; exit status 1 when any failed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from bot.errors import ChecksFailed


def add_parser(sub: Any) -> None:
    doctor = sub.add_parser("doctor", help="check every dependency: Slack, Docker, images, "
                                           "runtime, database, settings")
    doctor.add_argument("--json", action="store_true", help="one JSON document")
    doctor.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    from bot.doctor import diagnose  # imported late: `routines --help` needs no docker client

    findings = diagnose(env)
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            print(finding.line())
    failed = [f.check for f in findings if not f.ok]
    if failed:
        raise ChecksFailed(failed)
