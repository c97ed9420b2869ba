"""Routines as code on the real database (SQLite, and PostgreSQL in CI): `routines apply` and
`routines export` round-trip a directory with every field; a bad file is refused naming its
file, line and key and nothing is applied; a dry run changes nothing; the same apply twice
is a no-op; a routine managed from files refuses edits elsewhere unless an admin forces."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from bot.core import retry
from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, parse_changes
from bot.doors.cli import main
from bot.errors import Forbidden, ManagedFromFiles
from bot.services import ServicePolicy, Services
from bot.settings import Settings
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import AuditEntry, GitHubSubscription, Routine

pytestmark = pytest.mark.postgres

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "routines"
OPERATOR, OWNER, ADMIN, STRANGER = "U0OPERATE1", "U0OWNER01", "U0ADMIN01", "U0OTHER01"


@pytest.fixture
def services(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Services:
    """The CLI pointed at a fresh database, acting as OPERATOR (an admin)."""
    monkeypatch.chdir(tmp_path)
    for name, value in (("DATABASE_URL", database_url), ("ROUTINES_ADMINS", f"{ADMIN},{OPERATOR}"),
                        ("ROUTINES_OPERATOR", OPERATOR)):
        monkeypatch.setenv(name, value)
    db = Database(database_url)
    schema.upgrade(db)
    return Services(db, ServicePolicy.from_settings(Settings.from_env(serving=False)),
                    Redactor(()))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def audit_entries(services: Services) -> list[tuple[str, str, str | None, str]]:
    with services.routines.db.session() as session:
        rows = session.exec(select(AuditEntry).order_by(AuditEntry.id)).all()  # type: ignore[arg-type]
        return [(r.actor, r.action, r.routine, r.details) for r in rows]


def routines_in(services: Services) -> dict[str, Routine]:
    return {o.routine.name: o.routine for o in services.routines.overviews()}


def examples(tmp_path: Path) -> Path:
    folder = tmp_path / "routines"
    shutil.copytree(EXAMPLES, folder)
    return folder


def test_a_directory_with_every_field_round_trips_byte_for_byte(
        services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = examples(tmp_path)

    code, out, _ = cli(capsys, "apply", "-f", str(folder))
    assert code == 0, out
    assert out.splitlines() == [f"nightly-tests: created ({folder}/nightly-tests.yaml)",
                                f"weekly-digest: created ({folder}/weekly-digest.yaml)",
                                "applied"]
    code, out, _ = cli(capsys, "export", "--dir", str(tmp_path / "out"))
    assert code == 0
    for example in sorted(EXAMPLES.glob("*.yaml")):
        assert (tmp_path / "out" / example.name).read_bytes() == example.read_bytes()
    code, single, _ = cli(capsys, "export", "weekly-digest")
    assert single == (EXAMPLES / "weekly-digest.yaml").read_text()

    nightly = routines_in(services)["nightly-tests"]
    assert (nightly.managed_by, nightly.created_by, nightly.max_turns) == (
        f"{folder}/nightly-tests.yaml", OPERATOR, services.routines.policy.max_turns)
    assert sorted(services.github.filters("nightly-tests")) == [
        "pull_request.opened repo=example/app", "push repo=example/app branch=main"]
    assert [(a, act, r) for a, act, r, _ in audit_entries(services)] == [
        (OPERATOR, "create", "nightly-tests"), (OPERATOR, "create", "weekly-digest")]


def test_the_same_apply_twice_is_a_no_op(
        services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = examples(tmp_path)
    assert cli(capsys, "apply", "-f", str(folder))[0] == 0
    before = audit_entries(services)
    with services.routines.db.session() as session:
        filters = sorted(r.id or 0 for r in session.exec(select(GitHubSubscription)).all())

    code, out, _ = cli(capsys, "apply", "-f", str(folder))

    assert code == 0
    assert out.splitlines() == [f"nightly-tests: unchanged ({folder}/nightly-tests.yaml)",
                                f"weekly-digest: unchanged ({folder}/weekly-digest.yaml)",
                                "nothing to change"]
    assert audit_entries(services) == before
    with services.routines.db.session() as session:
        assert sorted(r.id or 0 for r in session.exec(select(GitHubSubscription)).all()) == (
            filters)


def test_a_dry_run_shows_the_diff_and_changes_nothing(
        services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = examples(tmp_path)
    assert cli(capsys, "apply", "-f", str(folder))[0] == 0
    file = folder / "weekly-digest.yaml"
    file.write_text(file.read_text().replace("risk: low", "risk: high").replace(
        "attempts: 0", "attempts: 3"))
    (folder / "fresh.yaml").write_text(
        "name: fresh\nprompt: New.\nrepository: https://github.com/example/app\n"
        "channel: C0123ABCD\n")
    before, stored = audit_entries(services), routines_in(services)

    code, out, _ = cli(capsys, "apply", "-f", str(folder), "--dry-run")

    assert code == 0
    assert out.splitlines() == [
        f"fresh: created ({folder}/fresh.yaml)",
        f"nightly-tests: unchanged ({folder}/nightly-tests.yaml)",
        f"weekly-digest: changed ({file})", "  risk: low -> high", "  retries.attempts: 0 -> 3",
        "dry run: nothing was changed"]
    assert audit_entries(services) == before
    assert routines_in(services).keys() == stored.keys()
    assert routines_in(services)["weekly-digest"].risk == "low"

    code, out, _ = cli(capsys, "apply", "-f", str(folder))
    assert code == 0 and out.splitlines()[-1] == "applied"
    changed = routines_in(services)["weekly-digest"]
    assert (changed.risk, changed.retry_attempts) == ("high", 3)
    assert audit_entries(services)[len(before):] == [
        (OPERATOR, "create", "fresh", f"from {folder}/fresh.yaml"),
        (OPERATOR, "change", "weekly-digest", f"from {file}: risk, retries.attempts")]


def test_one_bad_file_in_a_directory_refuses_them_all_naming_file_line_and_key(
        services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = examples(tmp_path)
    bad = folder / "team" / "broken.yaml"
    bad.parent.mkdir()
    bad.write_text("name: broken\nprompt: x\nrepository: https://github.com/example/app\n"
                   "channel: C0123ABCD\nbudgets:\n  max_concurrent: 500\n")

    code, out, err = cli(capsys, "apply", "-f", str(folder))

    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "routines: nothing applied; fix these first:",
        f"{bad}:6: budgets.max_concurrent: use a whole number from 1 to 100, or off"]
    assert routines_in(services) == {} and audit_entries(services) == []


def test_routines_not_in_the_files_are_kept_unless_pruned(
        services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    services.routines.create(RoutineDraft(name="by-hand", prompt="p",
                                          repo_url="https://github.com/example/app",
                                          channel_id="C0123ABCD"), OWNER)
    folder = examples(tmp_path)

    code, out, _ = cli(capsys, "apply", "-f", str(folder))
    assert out.splitlines()[0] == "by-hand: not in the files, kept (--prune deletes it)"
    assert "by-hand" in routines_in(services)

    code, out, _ = cli(capsys, "apply", "-f", str(folder), "--prune")
    assert code == 0 and out.splitlines()[0] == "by-hand: deleted"
    assert set(routines_in(services)) == {"nightly-tests", "weekly-digest"}
    assert audit_entries(services)[-1] == (OPERATOR, "delete", "by-hand",
                                           "pruned: not in the files")


def test_changing_a_routine_its_owners_did_not_give_you_is_refused_whole(
        services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    services.routines.create(RoutineDraft(name="theirs", prompt="p",
                                          repo_url="https://github.com/example/app",
                                          channel_id="C0123ABCD"), OWNER)
    folder = examples(tmp_path)
    (folder / "theirs.yaml").write_text(
        "name: theirs\nprompt: mine now\nrepository: https://github.com/example/app\n"
        "channel: C0123ABCD\n")
    monkeypatch.setenv("ROUTINES_OPERATOR", STRANGER)

    code, _, err = cli(capsys, "apply", "-f", str(folder))

    assert code == 1 and "Only its owners" in err
    assert set(routines_in(services)) == {"theirs"}  # the examples were not created either
    assert routines_in(services)["theirs"].prompt == "p"


def test_a_managed_routine_refuses_edits_elsewhere_unless_an_admin_forces(
        services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = examples(tmp_path)
    assert cli(capsys, "apply", "-f", str(folder))[0] == 0
    name, source = "nightly-tests", f"{folder}/nightly-tests.yaml"
    attempts: list[Callable[[bool, str], object]] = [
        lambda force, who: services.routines.change(name, parse_changes(["risk=high"]), who,
                                                    force=force),
        lambda force, who: services.routines.set_retry_policy(
            name, retry.RetryPolicy(1), who, force=force),
        lambda force, who: services.schedules.set(name, "every 2h", "UTC", who, force=force),
        lambda force, who: services.schedules.clear(name, who, force=force),
        lambda force, who: services.github.subscribe(name, "issues.opened", who, force=force),
        lambda force, who: services.github.unsubscribe(name, who, force=force),
        lambda force, who: services.routines.delete(name, who, force=force),
    ]
    for attempt in attempts:
        with pytest.raises(ManagedFromFiles) as refused:
            attempt(False, ADMIN)
        assert (refused.value.name, refused.value.source) == (name, source)
        with pytest.raises(Forbidden):
            attempt(True, OWNER)  # an owner, not an admin
    with pytest.raises(Forbidden) as forbidden:
        attempts[0](True, OWNER)
    assert "Only admins may change a routine managed from files" in str(forbidden.value)
    assert routines_in(services)[name].risk == "medium"

    services.routines.change(name, parse_changes(["risk=high"]), ADMIN, force=True)

    assert routines_in(services)[name].risk == "high"
    assert audit_entries(services)[-2:] == [
        (ADMIN, "forced", name, f"edited although managed from {source}"),
        (ADMIN, "change", name, "risk=high")]
    code, out, _ = cli(capsys, "apply", "-f", str(folder))  # the file wins again
    assert code == 0
    assert f"{name}: changed ({source})" in out and "  risk: high -> medium" in out


def test_full_network_from_a_file_is_for_admins_only_and_audited(
        services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "open.yaml"
    file.write_text("name: open\nprompt: p\nrepository: https://github.com/example/app\n"
                    f"channel: C0123ABCD\nowners: [{OWNER}]\nnetwork: full\n")
    monkeypatch.setenv("ROUTINES_OPERATOR", OWNER)

    code, _, err = cli(capsys, "apply", "-f", str(file))

    assert code == 1 and "Only admins may give a routine full network access" in err
    assert routines_in(services) == {}
    monkeypatch.setenv("ROUTINES_OPERATOR", OPERATOR)  # an admin
    assert cli(capsys, "apply", "-f", str(file))[0] == 0
    assert routines_in(services)["open"].network == "full"
    assert [e[1] for e in audit_entries(services) if e[0] == OPERATOR] == [
        "create", "network_full"]
    monkeypatch.setenv("ROUTINES_OPERATOR", OWNER)  # an owner may change the rest
    file.write_text(file.read_text().replace("prompt: p", "prompt: q"))
    code, out, _ = cli(capsys, "apply", "-f", str(file))
    assert code == 0 and "  prompt: p -> q" in out
