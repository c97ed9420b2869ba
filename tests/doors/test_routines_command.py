"""The `routines` command, the CLI door: `serve` without settings stops with one clear line,
`serve` with them writes JSON log lines and stops on SIGTERM, `logs` prints a run's
redacted events."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.trigger import manual
from bot.doors.cli import main
from bot.services import ServicePolicy, Services
from bot.store import schema
from bot.store.database import Database
from tests.standins.environment import TEST_NETWORK

ROOT = Path(__file__).resolve().parents[2]
SERVE = "from bot.doors.cli import main; raise SystemExit(main(['serve']))"


def test_serve_without_settings_stops_with_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    proc = subprocess.run(
        [sys.executable, "-c", "from bot.doors.cli import main; raise SystemExit(main(['serve']))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("routines: missing required setting: SLACK_BOT_TOKEN, "
                           "ANTHROPIC_API_KEY, SLACK_SIGNING_SECRET\n")


@pytest.mark.postgres
def test_logs_prints_a_runs_redacted_events(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    url = database_url
    db = Database(url)
    schema.upgrade(db)
    services = Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5),
                             Redactor(["planted-secret-42"]))
    services.routines.create(RoutineDraft(name="demo", prompt="p", repo_url="file:///r",
                                        channel_id="C0123ABC"), "U1")
    run = services.triggers.trigger("demo", manual("U1")).view.run
    assert run.id is not None
    services.runs.record_event(run.id, 1, {"type": "tool_output", "output": "planted-secret-42"})
    monkeypatch.setenv("DATABASE_URL", url)

    assert main(["logs", str(run.id)]) == 0
    assert json.loads(capsys.readouterr().out) == {"type": "tool_output",
                                                    "output": "[REDACTED]"}
    assert main(["logs", "999"]) == 1
    assert capsys.readouterr().err == "routines: No run #999.\n"


@pytest.mark.docker
@pytest.mark.parametrize("where", ["environment", "flags"])
def test_serve_writes_json_lines(tmp_path: Path, docker_client: object, where: str) -> None:
    """The real entry point, started and stopped as a service manager would; its address
    from the environment, or from `--host`/`--port` (which win over it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    env.update(SLACK_BOT_TOKEN="xoxb-planted-bot-token-1", ANTHROPIC_API_KEY="sk-ant-planted",
               SLACK_SIGNING_SECRET="planted-signing-secret", SLACK_API_URL="http://127.0.0.1:9/",
               DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", ROUTINES_DATA_DIR=str(tmp_path),
               ROUTINES_HOST="127.0.0.1", PORT="0", ROUTINES_SANDBOX_NETWORK=TEST_NETWORK,
               ROUTINES_LOG_FORMAT="json", LOG_LEVEL="INFO")
    port = free_port()
    serve = SERVE
    if where == "flags":
        env.update(ROUTINES_HOST="127.0.0.2", PORT=str(free_port()))  # the flags must win
        serve = SERVE.replace("['serve']", f"['serve', '--host', '127.0.0.1', '--port', '{port}']")
    else:
        env.update(PORT=str(port))
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", serve], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "routines bot ready" not in stderr.read_text():
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]
    ready = [e for e in lines if e["message"].startswith("routines bot ready")]
    assert ready and ready[0]["logger"] == "bot.app" and ready[0]["level"] == "INFO"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
