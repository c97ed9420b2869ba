"""The bot as an operator runs it: `routines serve` in a process of its own, configured by
environment variables, which a test can SIGKILL and start again (tests/acceptance/
test_crash_at_any_stage.py). The in-process `start_bot` fixture cannot die this way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker.errors

from bot.settings import Settings
from runner.contract import LABEL_INSTANCE, LABEL_POOL, LOADED_FILE
from runner.host import pool, workspace
from tests.support.slack_requests import FakeSlack

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "from bot.doors.cli import main; raise SystemExit(main([{!r}]))"
READY = ("routines bot ready", "routines worker ready")
STOP_SECONDS = 30  # after SIGTERM, before SIGKILL


def environment(settings: Settings, port: int) -> dict[str, str]:
    """The variables `routines serve` reads, for the settings a test's bot has."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "ANTHROPIC_", "ROUTINES_", "DATABASE_URL"))}
    env.update(
        SLACK_BOT_TOKEN=settings.slack_bot_token, ANTHROPIC_API_KEY=settings.anthropic_api_key,
        SLACK_SIGNING_SECRET=settings.slack_signing_secret, SLACK_API_URL=settings.slack_api_url,
        ANTHROPIC_BASE_URL=settings.anthropic_base_url, DATABASE_URL=settings.database_url,
        ROUTINES_DATA_DIR=str(settings.data_dir), ROUTINES_HOST="127.0.0.1", PORT=str(port),
        ROUTINES_SANDBOX_IMAGE=settings.sandbox_image,
        ROUTINES_SANDBOX_RUNTIME=settings.sandbox_runtime,
        ROUTINES_ALLOW_LOCAL_REPOS="true" if settings.allow_local_repos else "false",
        ROUTINES_MAX_TURNS=str(settings.max_turns),
        ROUTINES_LIVE_PROGRESS="true" if settings.live_progress else "false",
        ROUTINES_ADMINS=",".join(settings.admins),
        ROUTINES_RUN_DISK_LIMIT=str(settings.run_disk_limit),
        ROUTINES_MAX_CONCURRENT_RUNS=str(settings.max_concurrent_runs),
        ROUTINES_WARM_POOL="" if settings.warm_pool is None else str(settings.warm_pool),
        GITHUB_WEBHOOK_SECRET=settings.github_webhook_secret, LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT))
    return env


class ServedBot:
    """One deployment (one database, one data directory) served by a process at a time.

    Scale-out tests start several on one database, each with a data directory of its own
    (as on hosts of their own), a `command` (`serve` or `worker`) and a worker name
    (`env`: ROUTINES_WORKER_NAME and any other variable)."""

    def __init__(self, settings: Settings, logs: Path, command: str = "serve",
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.port = free_port()
        self.logs = logs
        self.command = command
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.slack = FakeSlack(f"http://127.0.0.1:{self.port}", settings.slack_signing_secret)

    @property
    def label(self) -> str:
        return self.env.get("ROUTINES_WORKER_NAME", self.command)

    @property
    def log_file(self) -> Path:
        return self.logs / f"{self.label}-{self.starts}.log"

    async def start(self, crash_at: str = "") -> None:
        """Start `routines serve` (dying at `crash_at`, when given) and wait until ready."""
        assert self.proc is None or self.proc.poll() is not None, "already serving"
        self.starts += 1
        env = {**environment(self.settings, self.port), **self.env}
        if crash_at:
            env["ROUTINES_TEST_CRASH_AT"] = crash_at
        with self.log_file.open("wb") as err:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-c", COMMAND.format(self.command)], cwd=ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while not any(ready in self.log() for ready in READY):
            assert self.proc.poll() is None, f"routines {self.command} ended:\n{self.log()}"
            assert time.monotonic() < deadline, f"not ready in 60s:\n{self.log()}"
            await asyncio.sleep(0.1)
        if self.settings.warm_pool:
            await wait_for_warm_pool(self.workspace_root, self.settings.warm_pool)

    async def died(self, timeout: float = 90) -> int:
        """Wait for the process to end by itself; its return code (-9: SIGKILLed)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still alive after {timeout}s:\n{self.log()}"
            await asyncio.sleep(0.1)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    async def stop(self) -> None:
        """SIGTERM, as a service manager stops it; SIGKILL if it does not go. Awaited, not
        blocking: while it stops, the process may still call the Slack and Anthropic
        stand-ins, which answer from this test's own event loop (a blocking wait held
        them, and so the process, until the timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)

    def containers(self, docker_client: Any, warm: bool = False) -> list[Any]:
        """The deployment's run containers; `warm`: with the warm ones no run was given."""
        found = docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE}={self.settings.instance}"})
        return [c for c in found if warm or not is_waiting_warm(c)]

    @property
    def workspace_root(self) -> Path:
        """As `bot.app` places it: a named worker's workspaces are its own."""
        name = self.env.get("ROUTINES_WORKER_NAME", Settings.worker_name)
        suffix = "" if name == Settings.worker_name else f"-{name}"
        return self.settings.data_dir.resolve() / "workspaces" / (self.settings.instance + suffix)

    def remove_leftovers(self, docker_client: Any) -> None:
        """What a failed test left: its containers and mounted workspaces."""
        for container in self.containers(docker_client, warm=True):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        for run_id in workspace.leftover_runs(self.workspace_root):
            workspace.remove(self.workspace_root, run_id)
        remove_warm_slots(self.workspace_root)


def is_waiting_warm(container: Any) -> bool:
    """A warm container no run was given yet (`runner.host.pool`)."""
    return LABEL_POOL in container.labels and "-warm-" in container.name


def remove_warm_slots(root: Path) -> None:
    """The warm slots a killed process left (their filesystems are mounts)."""
    for path in root.glob("warm-*"):
        if path.is_dir():
            pool.remove_slot(path, None)


async def wait_for_warm_pool(root: Path, size: int) -> None:
    """Until `size` warm containers wait with their agent loaded (the file it leaves in its
    delivery directory): the runs a test starts are then given one."""
    def loaded() -> int:
        return len(list(root.glob(f"warm-*/delivery/{LOADED_FILE}")))

    deadline = time.monotonic() + 60
    while await asyncio.to_thread(loaded) < size:
        assert time.monotonic() < deadline, f"{size} warm containers not ready in 60s"
        await asyncio.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
