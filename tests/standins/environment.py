"""The local pieces a run needs, shared by the tests and the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import git

from bot.settings import Settings
from runner.repo_policy import FetchPolicy

SIGNING_SECRET = "test-signing-secret-0123456789"
BOT_TOKEN = "xoxb-test-bot-token-000000"
API_KEY = "sk-ant-test-key-0123456789"
# CI runs the container tests a second time under gVisor: ROUTINES_SANDBOX_RUNTIME=runsc.
SANDBOX_RUNTIME = os.environ.get("ROUTINES_SANDBOX_RUNTIME", "")
# CI runs the run tests again with warm containers: ROUTINES_TEST_WARM_POOL=2 (README
# "Warm pool"); by default the tests' bots start every run cold.
WARM_POOL = int(os.environ.get("ROUTINES_TEST_WARM_POOL", "0") or "0")
# The host's fetch policy for tests that clone and push straight through the runner: the
# default hosts, and the local repositories `make_git_repo` makes.
LOCAL_REPOS = FetchPolicy(allow_local=True)


def local_settings(tmp: Path, slack_api_url: str, anthropic_base_url: str,
                   **overrides: Any) -> Settings:
    """Settings for a bot that talks only to stand-ins and keeps its state under `tmp`."""
    defaults: dict[str, Any] = dict(
        slack_bot_token=BOT_TOKEN, anthropic_api_key=API_KEY,
        slack_signing_secret=SIGNING_SECRET, slack_api_url=slack_api_url,
        anthropic_base_url=anthropic_base_url,
        database_url=f"sqlite:///{tmp / 'routines.db'}", host="127.0.0.1", port=0,
        data_dir=tmp / "data", min_timeout_seconds=1,
        sandbox_runtime=SANDBOX_RUNTIME, warm_pool=WARM_POOL,
        allow_local_repos=True, max_turns=8,
        # The suites written before live messages read each result as a postMessage;
        # tests/acceptance/test_live_progress.py turns it on (the product's default).
        live_progress=False,
    )
    return Settings(**{**defaults, **overrides})


def make_git_repo(path: Path) -> str:
    """A local repository with one commit on `main`, as a routine's repo; returns its URL."""
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test").set_value("user", "email", "t@example.test")
    (path / "README.md").write_text("# demo\n")
    repo.index.add(["README.md"])
    repo.index.commit("initial")
    repo.close()
    return f"file://{path}"
