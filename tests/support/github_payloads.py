"""GitHub webhook bodies for the tests: the project's own, and GitHub's real ones.

`own(name)` reads `tests/support/payloads/github/NAME.json`: small bodies this project writes,
shaped like GitHub's (same fields, same nesting), that every ordinary test uses.

`real(name)` reads GitHub's published example deliveries from the shared fixtures folder
(`github_fixtures_dir()`), which lives outside the repository. Only tests marked
`@pytest.mark.conformance` may read them; `tests/conftest.py` skips those when the folder is
absent, unless CI=true, where a missing folder fails them.
"""

from __future__ import annotations

import os
from pathlib import Path

OWN_DIR = Path(__file__).resolve().parent / "payloads" / "github"
FIXTURES_ENV = "ROUTINES_GITHUB_FIXTURES"
# GitHub's examples, one file per event (`EVENT.ACTION.json`, or `EVENT.json`).
REAL_NAMES = (
    "check_suite.completed", "issues.opened", "ping", "pull_request.closed",
    "pull_request.opened", "push", "release.published", "workflow_run.completed",
)


def github_fixtures_dir() -> Path:
    """`$ROUTINES_GITHUB_FIXTURES` if set (the github-webhooks folder or the fixtures folder
    above it), else `../shared/fixtures/github-webhooks` beside the repository, as CI lays
    it out."""
    override = os.environ.get(FIXTURES_ENV)
    if not override:
        repository = Path(__file__).resolve().parents[2]
        return repository.parent / "shared" / "fixtures" / "github-webhooks"
    root = Path(override)
    return root / "github-webhooks" if (root / "github-webhooks").is_dir() else root


def own(name: str) -> bytes:
    """A body of the project's own, as GitHub would send it."""
    return (OWN_DIR / f"{name}.json").read_bytes()


def real(name: str) -> bytes:
    """The exact request body GitHub sent (conformance tests only)."""
    return (github_fixtures_dir() / f"{name}.json").read_bytes()
