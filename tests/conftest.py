"""Shared fixtures: the real Docker engine, stand-in servers, a local git repo, the bot.

The tiers (tests/unit, services, doors, acceptance) are told apart by what they need, and
two markers say it: `docker` for a test that reaches the engine (the docker_client fixture,
directly or through start_bot), `postgres` for one that takes
its database from database_url, the one place ROUTINES_TEST_POSTGRES is read, so that
`-m postgres` runs it again on PostgreSQL. `pytest_collection_modifyitems` below checks
the markers against the fixtures, so neither can drift. Nothing here reaches the engine or
the network unless a test asks for such a fixture: tests/unit runs without either."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import sqlalchemy

from bot.app import Bot
from bot.settings import Settings
from runner.host import workspace
from tests.standins.anthropic_api import AnthropicStandIn
from tests.standins.environment import (
    API_KEY,
    SIGNING_SECRET,
    local_settings,
    make_git_repo,
)
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import CLAUDE_CODE_IMAGE, SANDBOX_IMAGE, BotFactory
from tests.support.github_payloads import FIXTURES_ENV, github_fixtures_dir
from tests.support.sandbox_runs import close_pooled
from tests.support.served_bot import remove_warm_slots, wait_for_warm_pool
from tests.support.slack_requests import FakeSlack

UNIT = Path(__file__).resolve().parent / "unit"
ENGINE, DATABASE = "docker_client", "database_url"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test is marked `docker` if and only if it uses the engine, `postgres` only if it
    takes its database from database_url, and a unit test uses neither."""
    wrong: list[str] = []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        docker = item.get_closest_marker("docker") is not None
        postgres = item.get_closest_marker("postgres") is not None
        if (ENGINE in fixtures) != docker:
            wrong.append(f"{item.nodeid}: " + ("uses the Docker engine: mark it docker"
                                              if not docker else "marked docker, uses no engine"))
        if postgres and DATABASE not in fixtures:
            wrong.append(f"{item.nodeid}: marked postgres, but its database is not database_url")
        if UNIT in item.path.parents and fixtures & {ENGINE, DATABASE}:
            wrong.append(f"{item.nodeid}: a unit test needs no Docker and no database")
    if wrong:
        raise pytest.UsageError("test markers:\n  " + "\n  ".join(wrong))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The conformance tier reads GitHub's real payloads from outside the repository: without
    them it is skipped on a developer's machine, and fails in CI (CI=true), which must run it."""
    if item.get_closest_marker("conformance") is None:
        return
    folder = github_fixtures_dir()
    if folder.is_dir():
        return
    reason = (f"conformance: GitHub's webhook payloads not found at {folder} "
              f"(set {FIXTURES_ENV} to their folder)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the conformance tier must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _close_warm_sandboxes() -> Iterator[None]:
    """Sandboxes a test made with a warm pool take their warm containers with them."""
    yield
    close_pooled()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The real engine. Missing means failure, not a skip: CI must never pass without it."""
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(SANDBOX_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"sandbox image {SANDBOX_IMAGE} is missing: run `make images`")
    except docker.errors.DockerException as exc:
        pytest.fail(f"Docker engine not reachable ({exc}): run `make images`")
    yield client
    client.close()


@pytest.fixture
async def slack_api() -> AsyncIterator[SlackApiStandIn]:
    server = SlackApiStandIn()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def anthropic_api() -> AsyncIterator[AnthropicStandIn]:
    """On loopback, like the real API reached by the host: runs get to it only through
    the host's model gateway."""
    server = AnthropicStandIn(API_KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def git_repo(tmp_path: Path) -> str:
    return make_git_repo(tmp_path / "upstream")


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh database per test: SQLite by default; PostgreSQL when
    ROUTINES_TEST_POSTGRES holds an admin URL (CI runs the acceptance suites on both)."""
    admin = os.environ.get("ROUTINES_TEST_POSTGRES")
    if not admin:
        yield f"sqlite:///{tmp_path / 'routines.db'}"
        return
    name = f"routines_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield f"{admin.rsplit('/', 1)[0]}/{name}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
             database_url: str) -> Settings:
    return local_settings(tmp_path, slack_api.url, anthropic_api.url,
                          database_url=database_url, sandbox_image=SANDBOX_IMAGE,
                          claude_code_image=CLAUDE_CODE_IMAGE)


@pytest.fixture
async def start_bot(settings: Settings, docker_client: Any) -> AsyncIterator[BotFactory]:
    """Start bots in-process on an ephemeral port; every one is stopped at the end."""
    started: list[Bot] = []

    async def start(**overrides: Any) -> tuple[Bot, FakeSlack]:
        bot = Bot(replace(settings, **overrides))
        await bot.start()
        started.append(bot)
        # Its runs are given warm containers (an image missing or the kill switch engaged:
        # none is made).
        size = sum(p.size for p in bot.sandbox.pools
                   if p.fingerprint() is not None and not p.held())
        if size:
            await wait_for_warm_pool(bot.sandbox.config.workspace_root, size)
        return bot, FakeSlack(f"http://127.0.0.1:{bot.port}", SIGNING_SECRET)

    yield start
    for bot in started:
        if bot.port:
            await bot.stop()
    for bot in started:  # runs a test left running: their containers and mounted workspaces
        await asyncio.to_thread(remove_leftovers, docker_client, bot)


def remove_leftovers(docker_client: Any, bot: Bot) -> None:
    """A stopped bot leaves a running run's container and workspace for the next process to
    adopt; a test has no next process, so they go (the workspace is a mount)."""
    for container in docker_client.containers.list(
            all=True, filters={"label": f"org.routines.instance={bot.settings.instance}"}):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    root = bot.sandbox.config.workspace_root
    for run_id in workspace.leftover_runs(root):
        workspace.remove(root, run_id)
    remove_warm_slots(root)
