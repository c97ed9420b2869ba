"""`routines serve [--host H] [--port P]`: the bot, until SIGINT or SIGTERM.
`routines worker [--host H] [--port P]`: a process that only executes runs (docs/scale-out.md):
no Slack or HTTP doors, no scheduler; its port serves /healthz, /readyz and /metrics."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
from collections.abc import Mapping
from typing import Any

from bot.core.redaction import Redactor
from bot.core.worker import WorkerRole
from bot.logging_config import configure_logging
from bot.settings import Settings


def add_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="start the bot (Socket Mode if SLACK_APP_TOKEN is set)")
    serve.add_argument("--host", help="the HTTP address (default: ROUTINES_HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="the HTTP port (default: PORT or 3000)")
    serve.set_defaults(handler=run, role=WorkerRole.SERVE)
    worker = sub.add_parser("worker", help="execute runs only (several processes, PostgreSQL)")
    worker.add_argument("--host", help="the ops port's address (default: ROUTINES_HOST)")
    worker.add_argument("--port", type=int, help="the ops port (default: PORT or 3000)")
    worker.set_defaults(handler=run, role=WorkerRole.WORKER)


def run(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    settings = Settings.from_env(env)
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port))
                 if value is not None}
    settings = dataclasses.replace(settings, **overrides)
    configure_logging(settings.log_format, os.environ.get("LOG_LEVEL", "INFO"),
                      Redactor(settings.secrets))
    asyncio.run(serve(settings, args.role))


async def serve(settings: Settings, role: WorkerRole = WorkerRole.SERVE) -> None:
    from bot.app import Bot  # imported late: `routines --help` needs no docker client

    bot = Bot(settings, role)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await bot.start()
    try:
        await stop.wait()
    finally:
        await bot.stop()
