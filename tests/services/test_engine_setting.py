"""A routine's engine and repository-config setting through the services on a real
database: builtin and untrusted by default, claude-code from the form, changed with
`/routine set` (a bad value changes nothing), `repo-config=trusted` audited, and the run
spec carries both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits, parse_changes
from bot.core.trigger import manual
from bot.errors import ValidationFailed
from bot.services import ServicePolicy, Services
from bot.store import schema
from bot.store.database import Database
from runner.contract import Engine, RepoConfig, RunSpec

OWNER = "U0OWNER01"

pytestmark = pytest.mark.postgres


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    db = Database(database_url)
    schema.upgrade(db)
    policy = ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5, triggers_per_minute=1000)
    yield Services(db, policy, Redactor(()), lambda group: frozenset())
    db.close()


def draft(name: str, engine: str = "") -> RoutineDraft:
    return RoutineDraft(name=name, prompt="p", repo_url="file:///r", channel_id="C0123ABC",
                        engine=engine)


def spec_of(services: Services, name: str) -> RunSpec:
    return services.runs.spec(services.triggers.trigger(name, manual(OWNER)).view)


def audited(services: Services, action: str) -> list[str]:
    return [f"{e.routine} {e.details}" for e in services.audit.entries(limit=100)
            if e.action == action]


def test_builtin_and_untrusted_by_default(services: Services) -> None:
    routine = services.routines.create(draft("plain"), OWNER)
    assert (routine.engine, routine.repo_config) == (Engine.BUILTIN, RepoConfig.UNTRUSTED)
    run = spec_of(services, "plain")
    assert (run.engine, run.repo_config) == ("builtin", "untrusted")
    assert "engine" not in run.for_container().to_json()  # an older image still reads it


def test_claude_code_from_the_form_reaches_the_spec(services: Services) -> None:
    services.routines.create(draft("coder", " Claude-Code "), OWNER)
    assert services.routines.get("coder").engine is Engine.CLAUDE_CODE
    assert spec_of(services, "coder").for_container().engine == "claude-code"
    assert audited(services, "create") == ["coder repo file:///r, network trusted, "
                                           "engine claude-code"]


def test_an_unknown_engine_is_refused(services: Services) -> None:
    with pytest.raises(ValidationFailed) as refused:
        services.routines.create(draft("odd", "gpt"), OWNER)
    assert refused.value.field_errors == {"engine": "Use one of builtin, claude-code."}


def test_set_changes_the_engine_and_trusting_the_repo_config_is_audited(
        services: Services) -> None:
    services.routines.create(draft("coder"), OWNER)
    services.routines.change("coder", parse_changes(["engine=claude-code"]), OWNER)
    assert services.routines.get("coder").engine is Engine.CLAUDE_CODE
    assert audited(services, "repo_config_trusted") == []
    services.routines.change("coder", parse_changes(["repo-config=trusted"]), OWNER)
    assert services.routines.get("coder").repo_config is RepoConfig.TRUSTED
    assert spec_of(services, "coder").repo_config == "trusted"
    assert audited(services, "repo_config_trusted") == [
        "coder repo-config=trusted: the repository's hooks and MCP servers may run"]

    with pytest.raises(ValidationFailed) as refused:
        parse_changes(["engine=other", "repo-config=maybe"])
    assert refused.value.field_errors == {"engine": "use builtin or claude-code",
                                          "repo-config": "use untrusted or trusted"}
