"""A second `routines serve` on the SQLite database of a running one is refused at start,
with one clear line, and changes nothing; a SIGKILLed bot leaves no lock behind."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bot.settings import Settings
from bot.store.database import Database
from bot.store.tables import AuditEntry
from tests.support.served_bot import COMMAND, ROOT, ServedBot, environment, free_port

pytestmark = pytest.mark.docker


async def test_second_serve_on_one_sqlite_file_is_refused(
        tmp_path: Path, settings: Settings, docker_client: Any) -> None:
    database = tmp_path / "one.db"
    settings = replace(settings, database_url=f"sqlite:///{database}")
    bot = ServedBot(settings, tmp_path)
    try:
        await bot.start()
        assert bot.proc is not None
        audit_before = audit_count(settings)
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", COMMAND.format("serve")], cwd=ROOT,
            env=environment(settings, free_port()), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert lines[-1] == (
            f"routines: process {bot.proc.pid} already serves the SQLite database "
            f"{database}: a SQLite "
            "database takes one bot process; stop that one, or use PostgreSQL "
            "(DATABASE_URL) to run several")
        assert "Traceback" not in second.stderr
        assert (await bot.slack.slash("list")).status == 200  # the first serves on
        assert audit_count(settings) == audit_before
        bot.proc.send_signal(signal.SIGKILL)
        assert await bot.died() == -9
        await bot.start()  # the kernel dropped the dead process's lock
        assert (await bot.slack.slash("list")).status == 200
    finally:
        await bot.stop()
        await asyncio.to_thread(bot.remove_leftovers, docker_client)


def audit_count(settings: Settings) -> int:
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            return len(session.exec(select(AuditEntry)).all())
    finally:
        db.close()
