"""The publish gate's runner side: a publishing run keeps its work as a commit on the
host and pushes nothing; `push` sends it to a bot-owned branch only, never forced."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import git
import pytest

from runner.host import publish, workspace
from runner.host.publish import PublishError, PublishRefused, branch_ref, check_refspec
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.environment import API_KEY
from tests.support.bots import SANDBOX_IMAGE
from tests.support.run_specs import spec
from tests.support.sandbox_runs import bare_copy, execute, make_sandbox, refs

SHA = "0123456789abcdef0123456789abcdef01234567"
SANDBOX_UID = 10001 if os.geteuid() == 0 else None


@pytest.mark.parametrize(("refspec", "why"), [
    (f"+{SHA}:refs/heads/routines/nightly/1", "forced"),
    (":refs/heads/routines/nightly/1", "deleting"),
    (f"{SHA}:refs/tags/v1.0", "tags"),
    (f"{SHA}:refs/tags/routines/nightly/1", "tags"),
    (f"{SHA}:refs/heads/main", "only branches under"),
    (f"{SHA}:refs/heads/master", "only branches under"),
    (f"{SHA}:refs/heads/release", "only branches under"),
    (f"{SHA}:main", "only branches under"),
    (f"{SHA}:refs/heads/routines/", "only branches under"),
    (f"{SHA}:refs/remotes/origin/routines/x", "only branches under"),
    (f"{SHA}:refs/heads/routines/main", "default branch"),
    (f"{SHA}:refs/heads/routines/nightly/master", "default branch"),
    (f"{SHA}:refs/heads/routines/HEAD", "default branch"),
    (f"{SHA}:refs/heads/routines/../main", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/a..b", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/x.lock", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/.hidden/1", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/a b", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/x@{{1}}", "not a valid ref"),
    (f"{SHA}:refs/heads/routines//x", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/x/", "not a valid ref"),
    ("refs/heads/*:refs/heads/routines/*", "patterns"),
    ("refs/heads/routines/nightly/1", "SOURCE:DESTINATION"),
    (f"{SHA}:refs/heads/routines/x:refs/heads/main", "SOURCE:DESTINATION"),
])
def test_unsafe_refspecs_are_refused(refspec: str, why: str) -> None:
    with pytest.raises(PublishRefused, match=why):
        check_refspec(refspec)


def test_the_default_branch_is_refused_even_under_the_prefix() -> None:
    with pytest.raises(PublishRefused, match="default branch"):
        check_refspec(f"{SHA}:refs/heads/routines/trunk", default_branch="routines/trunk")


@pytest.mark.parametrize("refspec", [
    f"{SHA}:refs/heads/routines/nightly/1",
    f"{SHA}:refs/heads/routines/deps-check/42",
    "refs/routines/kept:refs/heads/routines/a/b/c",
])
def test_bot_owned_branches_are_allowed(refspec: str) -> None:
    assert check_refspec(refspec, default_branch="main") == refspec.split(":")[1]


def test_branch_ref_names_the_routine_and_the_run() -> None:
    assert branch_ref("deps-check", 42) == "refs/heads/routines/deps-check/42"
    assert check_refspec(f"{SHA}:{branch_ref('deps-check', 42)}")


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

    pushed = publish.push(root, 31, remote, branch_ref("nightly", 31))

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


@pytest.fixture
def kept(tmp_path: Path, git_repo: str) -> tuple[Path, str, str]:
    """Run 51 over a bare remote, its work kept as the sandbox leaves it (no container
    needed for what happens after): (workspace root, remote URL, kept commit)."""
    remote = bare_copy(git_repo, tmp_path / "remote.git")
    root = tmp_path / "ws"
    repo = workspace.prepare(root, 51, remote, "main", SANDBOX_UID)
    (repo / "fix.txt").write_text("fixed\n")
    workspace.diff(root, 51, limit=10_000)
    sha = publish.keep(root, 51, "routine nightly run 51")
    workspace.remove(root, 51)
    assert sha is not None
    return root, remote, sha


def test_changes_holding_a_secret_value_are_not_kept(tmp_path: Path, git_repo: str) -> None:
    root = tmp_path / "ws"
    repo = workspace.prepare(root, 52, git_repo, "main", SANDBOX_UID)
    (repo / "config.env").write_text(f"KEY={API_KEY}\n")
    (repo / "blob.bin").write_bytes(b"\0\1" + API_KEY.encode())

    with pytest.raises(PublishError, match="contain a secret value"):
        publish.keep(root, 52, "routine nightly run 52", secrets=("", API_KEY))

    assert publish.held_runs(root) == []
    (repo / "config.env").unlink()
    (repo / "blob.bin").unlink()
    (repo / "fine.txt").write_text("nothing secret\n")
    assert publish.keep(root, 52, "routine nightly run 52", secrets=(API_KEY,)) is not None


def test_refused_destinations_push_nothing_and_keep_the_commit(
    kept: tuple[Path, str, str],
) -> None:
    root, remote, sha = kept
    before = refs(remote)
    for ref in ("refs/heads/main", "refs/tags/v1", "+refs/heads/routines/nightly/51",
                "refs/heads/routines/master", "", "refs/heads/feature"):
        with pytest.raises(PublishRefused):
            publish.push(root, 51, remote, ref)
    assert refs(remote) == before and publish.held_runs(root) == [51]
    assert publish.push(root, 51, remote, branch_ref("nightly", 51)) == sha


def test_an_existing_branch_that_is_not_an_ancestor_is_never_overwritten(
    kept: tuple[Path, str, str], tmp_path: Path,
) -> None:
    root, remote, _ = kept
    other = git.Repo.clone_from(remote, tmp_path / "other")
    with other.config_writer() as config:
        config.set_value("user", "name", "Someone").set_value("user", "email", "s@e.test")
    (tmp_path / "other" / "theirs.txt").write_text("theirs\n")
    other.index.add(["theirs.txt"])
    other.index.commit("someone else's work")
    other.remote().push("HEAD:refs/heads/routines/nightly/51")
    theirs = other.head.commit.hexsha
    other.close()

    with pytest.raises(PublishError, match="rejected"):
        publish.push(root, 51, remote, branch_ref("nightly", 51))

    assert refs(remote)["refs/heads/routines/nightly/51"] == theirs
    assert publish.held_runs(root) == [51]  # kept: the push may be retried elsewhere


def test_discard_forgets_the_commit(kept: tuple[Path, str, str]) -> None:
    root, remote, _ = kept
    publish.discard(root, 51)
    publish.discard(root, 51)  # nothing kept is fine

    with pytest.raises(PublishError, match="no commit kept"):
        publish.push(root, 51, remote, branch_ref("nightly", 51))
    assert publish.held_runs(root) == []


def test_a_failed_push_says_why(kept: tuple[Path, str, str], tmp_path: Path) -> None:
    root, _, _ = kept
    with pytest.raises(PublishError, match="ls-remote exited"):
        publish.push(root, 51, f"file://{tmp_path / 'nowhere.git'}", branch_ref("n", 51))
    with pytest.raises(PublishError, match="not allowed"):
        publish.push(root, 51, "ext::sh -c true", branch_ref("n", 51))
    assert publish.held_runs(root) == [51]


def message_of(git_dir: Path, sha: str) -> str:
    return str(git.Git().execute(["git", f"--git-dir={git_dir}", "log", "-1", "--format=%B",
                                  sha], strip_newline_in_stdout=False)).rstrip("\n") + "\n"


def show(url: str, what: str) -> str:
    return str(git.Git().execute(["git", f"--git-dir={url.removeprefix('file://')}", "show",
                                  what], strip_newline_in_stdout=False))
