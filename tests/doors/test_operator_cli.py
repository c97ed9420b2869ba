"""The operator's CLI door: the same services and rules as Slack, as `ROUTINES_OPERATOR`,
audited; `--json` on what it shows; settings from a `.env` file under the environment."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft
from bot.core.statuses import RunStatus, StopKind, TriggerKind
from bot.core.trigger import manual
from bot.doors.cli import main
from bot.errors import SettingsError
from bot.services import ServicePolicy, Services
from bot.settings import Settings, environment, read_env_file
from bot.store import schema
from bot.store.database import Database

OWNER, ADMIN, STRANGER = "U0OWNER1", "U0ADMIN1", "U0OTHER1"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def services(database_url: str, monkeypatch: pytest.MonkeyPatch,
             tmp_path: Path) -> Services:
    """A database with one routine of OWNER's, and the CLI pointed at it."""
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    for name, value in (("DATABASE_URL", database_url), ("ROUTINES_ADMINS", ADMIN),
                        ("ROUTINES_ALLOW_LOCAL_REPOS", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ROUTINES_OPERATOR", raising=False)
    db = Database(database_url)
    schema.upgrade(db)
    settings = Settings.from_env(serving=False)
    found = Services(db, ServicePolicy.from_settings(settings), Redactor(()))
    found.routines.create(RoutineDraft(name="nightly", prompt="p", repo_url="file:///r",
                                       channel_id="C0123ABC"), OWNER)
    return found


def test_version_is_the_installed_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"routines {version('routines')}"


@pytest.mark.postgres
def test_routine_commands_act_as_the_operator_through_the_services(
        services: Services, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROUTINES_OPERATOR", OWNER)

    code, out, _ = run_cli(capsys, "routine", "list", "--json")
    assert code == 0
    assert [(r["name"], r["state"], r["last_run"]) for r in json.loads(out)] == [
        ("nightly", "active", None)]

    code, out, _ = run_cli(capsys, "routine", "run", "nightly", "--json")
    queued = json.loads(out)
    assert (code, queued["status"], queued["trigger"]) == (
        0, "queued", {"kind": str(TriggerKind.MANUAL), "actor": OWNER})
    stored = services.runs.get(queued["id"]).run
    assert (stored.status, stored.triggered_by) == (RunStatus.QUEUED, OWNER)

    code, out, _ = run_cli(capsys, "routine", "pause", "nightly")
    assert code == 0 and "state: paused" in out.splitlines()
    assert services.routines.get("nightly").paused_by == OWNER
    code, _, err = run_cli(capsys, "routine", "run", "nightly")
    assert code == 1 and err.startswith("routines: ") and "paused" in err
    assert len(services.routines.history("nightly")) == 1  # the refusal queued nothing

    code, out, _ = run_cli(capsys, "run", "show", str(queued["id"]), "--json")
    shown = json.loads(out)
    assert (code, shown["id"], shown["routine"], shown["details"]["status"]) == (
        0, queued["id"], "nightly", "queued")
    code, out, _ = run_cli(capsys, "run", "cancel", str(queued["id"]))
    assert code == 0 and "status: cancelled" in out.splitlines()
    assert services.runs.get(queued["id"]).run.status == RunStatus.CANCELLED

    code, out, _ = run_cli(capsys, "routine", "resume", "nightly", "--json")
    assert (code, json.loads(out)["state"]) == (0, "active")
    actions = [(e.action, e.actor) for e in services.audit.entries("nightly", limit=None)]
    assert {("pause", OWNER), ("resume", OWNER), ("cancel", OWNER)} <= set(actions)
    code, out, _ = run_cli(capsys, "routine", "delete", "nightly", "--json")
    assert (code, json.loads(out)) == (0, {"deleted": "nightly"})
    assert services.routines.overviews() == []


@pytest.mark.postgres
def test_the_same_roles_hold_as_in_slack(
        services: Services, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROUTINES_OPERATOR", STRANGER)
    code, _, err = run_cli(capsys, "routine", "delete", "nightly")
    assert code == 1 and err.startswith("routines: ") and len(err.splitlines()) == 1
    code, _, err = run_cli(capsys, "killswitch", "engage", "db", "on", "fire")
    assert code == 1
    assert services.routines.get("nightly") is not None
    assert not services.kill_switch.state().engaged

    monkeypatch.setenv("ROUTINES_OPERATOR", ADMIN)
    run = services.triggers.trigger("nightly", manual(OWNER)).view.run
    assert run.id is not None
    claimed = services.runs.claim_next()  # as a dispatcher starts it
    assert claimed is not None and claimed.run.status == RunStatus.RUNNING
    code, out, err = run_cli(capsys, "killswitch", "engage", "db", "on", "fire", "--json")
    assert code == 0, err
    engaged = json.loads(out)
    assert (code, engaged["engaged"], engaged["reason"], engaged["changed_by"],
            engaged["stopping"]) == (0, True, "db on fire", ADMIN, 1)
    assert services.runs.get(run.id).run.stop_kind == StopKind.KILL_SWITCH
    code, out, _ = run_cli(capsys, "killswitch", "status", "--json")
    assert json.loads(out)["engaged"] is True
    code, out, _ = run_cli(capsys, "killswitch", "disengage")
    assert code == 0 and "engaged: False" in out.splitlines()
    code, _, err = run_cli(capsys, "routine", "delete", "nightly")  # its run is running
    assert code == 1 and "nightly" in err


@pytest.mark.postgres
def test_acting_without_an_operator_or_on_an_old_database_says_what_to_do(
        services: Services, database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "routine", "list") == (
        2, "", "routines: set ROUTINES_OPERATOR to the Slack user id the CLI acts as "
               "(its roles apply, and the audit log names it)\n")
    monkeypatch.setenv("ROUTINES_OPERATOR", "alice")
    code, _, err = run_cli(capsys, "routine", "list")
    assert code == 2 and "must be a Slack user id" in err
    monkeypatch.setenv("ROUTINES_OPERATOR", OWNER)
    with Database(database_url).engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    code, _, err = run_cli(capsys, "routine", "list")
    assert code == 1
    assert err == (f"routines: the database is at 0001, this version's newest is "
                   f"{schema.head()}: run `routines db upgrade` first\n")


def test_env_file_lines(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# settings\n\nexport DATABASE_URL=sqlite:///x.db\n"
                        "SLACK_BOT_TOKEN='xoxb-1 2'\nPORT=3001 # the port\n"
                        'ROUTINES_ADMINS="U1,U2"\nEMPTY=\n')
    assert read_env_file(env_file) == {
        "DATABASE_URL": "sqlite:///x.db", "SLACK_BOT_TOKEN": "xoxb-1 2", "PORT": "3001",
        "ROUTINES_ADMINS": "U1,U2", "EMPTY": ""}
    assert environment({"PORT": "4000"}, env_file)["PORT"] == "4000"  # the environment wins
    assert environment({"PORT": "4000"}, tmp_path / "absent") == {"PORT": "4000"}
    env_file.write_text("PORT=1\nnot a setting\n")
    with pytest.raises(SettingsError) as refused:
        read_env_file(env_file)
    assert str(refused.value) == f"{env_file}:2: expected KEY=VALUE, got 'not a setting'"


@pytest.mark.postgres
def test_the_cli_reads_a_dot_env_in_its_working_directory(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / ".env").write_text(f"DATABASE_URL={database_url}\n")
    assert run_cli(capsys, "db", "upgrade")[0] == 0
    code, out, _ = run_cli(capsys, "db", "current")
    assert (code, out.strip()) == (0, f"{schema.head()} (head {schema.head()}, up to date)")
    assert schema.current(Database(database_url)) == schema.head()
