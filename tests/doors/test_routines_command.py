"""The manifest installs as is, and the `routines` command fails clearly or prints logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.trigger import manual
from bot.doors.cli import main
from bot.errors import ValidationFailed
from bot.services import ServicePolicy, Services
from bot.store.database import Database

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_declares_what_the_bot_uses_and_no_more() -> None:
    manifest = json.loads((ROOT / "manifest.json").read_text())
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/routine"]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "commands", "chat:write", "chat:write.public"}


def test_serve_without_settings_stops_with_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    proc = subprocess.run(
        [sys.executable, "-c", "from bot.doors.cli import main; raise SystemExit(main(['serve']))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("routines: missing required setting: SLACK_BOT_TOKEN, "
                           "ANTHROPIC_API_KEY, SLACK_SIGNING_SECRET\n")


def test_logs_prints_a_runs_redacted_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db = Database(url)
    db.create_schema()
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


def test_two_creates_racing_for_one_name_give_one_routine_and_one_field_error(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    db.create_schema()
    services = Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5),
                             Redactor(()))
    draft = RoutineDraft(name="twin", prompt="p", repo_url="file:///r", channel_id="C0123ABC")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        try:
            services.routines.create(draft, "U1")
            outcomes.append("created")
        except ValidationFailed as exc:
            outcomes.append(exc.field_errors["name"])

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["A routine named `twin` already exists."] * 7 + ["created"]


def test_racing_calls_with_one_idempotency_key_give_one_run(database_url: str) -> None:
    db = Database(database_url)
    db.create_schema()
    services = Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5),
                             Redactor(()))
    services.routines.create(RoutineDraft(name="hook", prompt="p", repo_url="file:///r",
                                        channel_id="C0123ABC"), "U1")
    token = services.tokens.create("hook", "ci", "U1")
    results: list[tuple[int | None, str]] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        triggered = services.tokens.trigger("hook", token, {"n": 1}, "same-key")
        results.append((triggered.view.run.id, triggered.view.routine.name))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len({run_id for run_id, _ in results}) == 1
    assert {name for _, name in results} == {"hook"}
    assert len(services.routines.history("hook")) == 1
    db.close()
