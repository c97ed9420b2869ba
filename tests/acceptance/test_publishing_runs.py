"""Publishing runs in the real sandbox: a publishing run keeps its work as a commit on the
host and pushes nothing; `push` sends it to its bot-owned branch only. A run without
publish, or without changes, keeps nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import git
import pytest

from runner.host import publish, workspace
from runner.host.publish import branch_ref
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.environment import LOCAL_REPOS
from tests.support.bots import SANDBOX_IMAGE
from tests.support.run_specs import spec
from tests.support.sandbox_runs import bare_copy, execute, make_sandbox, refs

pytestmark = pytest.mark.docker


async def test_a_publishing_run_keeps_a_commit_and_push_sends_it_to_its_branch_only(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    remote = bare_copy(git_repo, tmp_path / "remote.git")
    before = refs(remote)
    marker = anthropic_api.script(
        "publish",
        [tool("write_file", path="docs/changelog.md", content="# Changes\n- fresh\n")],
        [report("success", "Wrote the changelog.\nSecond line.")],
    )
    root = tmp_path / "ws"
    sandbox = make_sandbox(docker_client, anthropic_api, root, SANDBOX_IMAGE)

    seen = await execute(sandbox, spec(31, f"Changelog. {marker}", remote, publish=True))

    sha = seen.result.commit
    assert sha is not None and seen.result.publish_error is None
    assert "+- fresh" in seen.result.diff
    assert refs(remote) == before  # nothing pushed by the run
    assert publish.held_runs(root) == [31]
    assert not workspace.run_dir(root, 31).exists()  # only the git directory is kept
    held = publish.holding_dir(root, 31)
    assert message_of(held, sha) == "routine nightly run 31\n\nWrote the changelog.\n"

    pushed = publish.push(root, 31, remote, branch_ref("nightly", 31), policy=LOCAL_REPOS)

    assert pushed == sha
    assert refs(remote) == {**before, "refs/heads/routines/nightly/31": sha}
    assert show(remote, "refs/heads/routines/nightly/31:docs/changelog.md") == (
        "# Changes\n- fresh\n")
    assert not held.exists() and publish.held_runs(root) == []


async def test_a_run_keeps_nothing_without_publish_or_without_changes(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    writes = anthropic_api.script(
        "writes", [tool("run_shell", command="echo x > x.txt")], [report("success", "ok")])
    idle = anthropic_api.script("idle", [report("success", "nothing to do")])
    root = tmp_path / "ws"
    sandbox = make_sandbox(docker_client, anthropic_api, root, SANDBOX_IMAGE)

    unpublished = await execute(sandbox, spec(41, f"Write. {writes}", git_repo))
    unchanged = await execute(sandbox, spec(42, f"Idle. {idle}", git_repo, publish=True))

    assert "+x" in unpublished.result.diff and unpublished.result.commit is None
    assert unchanged.result.commit is None and unchanged.result.publish_error is None
    assert publish.held_runs(root) == [] and not (root / "run-41").exists()


def message_of(git_dir: Path, sha: str) -> str:
    return str(git.Git().execute(["git", f"--git-dir={git_dir}", "log", "-1", "--format=%B",
                                  sha], strip_newline_in_stdout=False)).rstrip("\n") + "\n"


def show(url: str, what: str) -> str:
    return str(git.Git().execute(["git", f"--git-dir={url.removeprefix('file://')}", "show",
                                  what], strip_newline_in_stdout=False))
