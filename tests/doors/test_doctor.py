"""`routines doctor` against a healthy setup (the Slack stand-in, the real engine and image,
a migrated database) and against each broken dependency: every line says ok, or what is
wrong and the fix; the exit status says whether anything failed."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from bot.doctor import Finding, diagnose
from bot.doors.cli import main
from bot.store import schema
from bot.store.database import Database
from runner.fingerprint import runner_fingerprint
from tests.services.test_group_commit import services_on
from tests.services.test_workers_shown import workers_of_three_kinds
from tests.standins.environment import BOT_TOKEN, SIGNING_SECRET
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import CLAUDE_CODE_IMAGE, SANDBOX_IMAGE

pytestmark = pytest.mark.docker



@pytest.fixture
def env(tmp_path: Path, slack_api: SlackApiStandIn, docker_client: Any) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'routines.db'}"
    db = Database(url)
    schema.upgrade(db)
    db.close()
    return {"ROUTINES_DATA_DIR": str(tmp_path / "data"), "SLACK_BOT_TOKEN": BOT_TOKEN,
            "ANTHROPIC_API_KEY": "sk-ant-doctor-0123456789",
            "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_API_URL": slack_api.url,
            "DATABASE_URL": url, "ROUTINES_SANDBOX_IMAGE": SANDBOX_IMAGE,
            "ROUTINES_CLAUDE_CODE_IMAGE": CLAUDE_CODE_IMAGE}


async def findings(env: dict[str, str]) -> dict[str, Finding]:
    """Run in a thread: the checks are blocking, the Slack stand-in serves on this loop."""
    return {f.check: f for f in await asyncio.to_thread(diagnose, env)}


def failed(found: dict[str, Finding]) -> set[str]:
    return {name for name, finding in found.items() if not finding.ok}


async def test_a_healthy_setup_passes_every_check(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    found = await findings(env)
    assert failed(found) == set()
    assert list(found) == ["settings", "settings agree", "slack token", "slack mode",
                           "docker engine", "sandbox image", "claude-code image",
                           "sandbox runtime", "database", "run disk limit",
                           "gateway and proxy", "workers"]
    assert found["workers"].detail == "none registered yet (no process has served it)"
    assert found["run disk limit"].detail == "2 GiB per run"
    assert found["slack token"].detail == "authenticated as routines in Team, scopes granted"
    assert found["sandbox image"].detail == f"{SANDBOX_IMAGE}, runner {runner_fingerprint()}"
    assert found["claude-code image"].detail == (
        f"{CLAUDE_CODE_IMAGE}, Claude Code 2.1.332, runner {runner_fingerprint()}")
    assert found["database"].detail == f"at migration {schema.head()} (the newest)"

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = await asyncio.to_thread(main, ["doctor"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 12 and all(line.startswith("ok    ") for line in lines)


async def test_a_refused_token_and_missing_scopes(
        env: dict[str, str], slack_api: SlackApiStandIn) -> None:
    slack_api.scopes = ["commands", "chat:write"]
    found = await findings(env)
    assert failed(found) == {"slack token"}
    assert found["slack token"].detail == (
        "the token lacks the scopes chat:write.public, usergroups:read")
    assert found["slack token"].fix == "reinstall the app from manifest.json"

    slack_api.refused_tokens.add(BOT_TOKEN)
    found = await findings(env)
    assert found["slack token"].detail == "Slack refused the bot token: invalid_auth"


async def test_no_docker_engine(env: dict[str, str], tmp_path: Path) -> None:
    found = await findings({**env, "DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}"})
    assert failed(found) == {"docker engine", "sandbox image", "claude-code image"}
    assert found["docker engine"].fix == "start dockerd, or set DOCKER_HOST"


async def test_a_missing_image_an_image_of_another_runner_and_an_unknown_runtime(
        env: dict[str, str]) -> None:
    found = await findings({**env, "ROUTINES_SANDBOX_IMAGE": "routines-sandbox:no-such-tag"})
    assert failed(found) == {"sandbox image"}
    assert found["sandbox image"].detail == "routines-sandbox:no-such-tag is not on the engine"

    found = await findings({**env, "ROUTINES_SANDBOX_IMAGE": "routines-base:bookworm"})
    assert failed(found) == {"sandbox image"}
    assert found["sandbox image"].detail == (
        f"routines-base:bookworm holds runner unknown, this version is runner "
        f"{runner_fingerprint()}")

    found = await findings({**env, "ROUTINES_CLAUDE_CODE_IMAGE": "routines-claude-code:none"})
    assert failed(found) == {"claude-code image"}
    assert found["claude-code image"].detail == "routines-claude-code:none is not on the engine"

    found = await findings({**env, "ROUTINES_SANDBOX_RUNTIME": "no-such-runtime"})
    assert failed(found) == {"sandbox runtime"}
    assert "no runtime 'no-such-runtime'" in found["sandbox runtime"].detail


async def test_a_line_per_worker_and_a_silent_one_holding_runs_fails(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_id = workers_of_three_kinds(services_on(env["DATABASE_URL"]))
    found = await findings(env)
    assert failed(found) == {"worker h2/w2"}
    assert "workers" not in found  # a line per worker instead
    assert found["worker h1/serve"].detail.startswith("serve, alive, last heartbeat ")
    assert found["worker h1/serve"].detail.endswith(" ago, no runs")
    assert found["worker h1/old"].detail.startswith("worker, stopped, ")
    silent = found["worker h2/w2"]
    assert re.match(r"worker, silent, last heartbeat \d+m ago", silent.detail)
    assert silent.detail.endswith(f", running #{run_id}") and "lease" in silent.fix

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["doctor"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("FAIL  worker h2/w2: worker, silent") for line in lines) == 1
    assert sum(line.startswith("ok    worker ") for line in lines) == 2


async def test_a_database_behind_or_not_answering(env: dict[str, str]) -> None:
    db = Database(env["DATABASE_URL"])
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    db.close()
    found = await findings(env)
    assert failed(found) == {"database"}
    assert "run `routines db upgrade` first" in found["database"].detail

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    found = await findings({**env, "DATABASE_URL":
                            f"postgresql+psycopg://u:p@127.0.0.1:{port}/none"})
    assert failed(found) == {"database"}
    assert found["database"].detail == "the database does not answer"


async def test_missing_and_contradicting_settings(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    found = await findings({k: v for k, v in env.items() if k != "SLACK_BOT_TOKEN"})
    assert list(found) == ["settings"]
    assert found["settings"].detail == "missing required setting: SLACK_BOT_TOKEN"

    found = await findings({**env, "ROUTINES_MAX_CONCURRENT_RUNS": "0",
                            "ROUTINES_ALLOW_LOCAL_REPOS": "1"})
    assert failed(found) == {"settings agree"}
    assert "no run would ever start" in found["settings agree"].detail
    assert "for tests only" in found["settings agree"].detail

    for name, value in {**env, "ROUTINES_MAX_CONCURRENT_RUNS": "0"}.items():
        monkeypatch.setenv(name, value)
    code = await asyncio.to_thread(main, ["doctor"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err == "routines: 1 check(s) failed: settings agree\n"
    assert [line for line in out.splitlines() if line.startswith("FAIL")] == [
        "FAIL  settings agree: ROUTINES_MAX_CONCURRENT_RUNS below 1: no run would ever start "
        "(fix: change the settings named)"]


async def test_a_data_directory_where_nothing_can_listen(
        env: dict[str, str], tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    found = await findings({**env, "ROUTINES_DATA_DIR": str(blocked)})
    assert failed(found) == {"gateway and proxy"}
