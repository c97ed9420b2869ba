"""The publish gate's runner side on real git, no container: a run's work kept as a commit
on the host (never one holding a secret value); `push` sends it to a bot-owned branch
only, never forced, never over a branch it does not extend; `discard` forgets it. The
refspec rules alone are in tests/unit/test_branch_refspecs.py; publishing runs in the
sandbox in tests/acceptance/test_publishing_runs.py."""

from __future__ import annotations

import os
from pathlib import Path

import git
import pytest

from runner.host import publish, workspace
from runner.host.publish import PublishError, PublishRefused, branch_ref
from tests.standins.environment import API_KEY, LOCAL_REPOS
from tests.support.sandbox_runs import bare_copy, refs

SANDBOX_UID = 10001 if os.geteuid() == 0 else None


@pytest.fixture
def kept(tmp_path: Path, git_repo: str) -> tuple[Path, str, str]:
    """Run 51 over a bare remote, its work kept as the sandbox leaves it (no container
    needed for what happens after): (workspace root, remote URL, kept commit)."""
    remote = bare_copy(git_repo, tmp_path / "remote.git")
    root = tmp_path / "ws"
    repo = workspace.prepare(root, 51, remote, "main", SANDBOX_UID, policy=LOCAL_REPOS)
    (repo / "fix.txt").write_text("fixed\n")
    workspace.diff(root, 51, limit=10_000)
    sha = publish.keep(root, 51, "routine nightly run 51")
    workspace.remove(root, 51)
    assert sha is not None
    return root, remote, sha


def test_changes_holding_a_secret_value_are_not_kept(tmp_path: Path, git_repo: str) -> None:
    root = tmp_path / "ws"
    repo = workspace.prepare(root, 52, git_repo, "main", SANDBOX_UID, policy=LOCAL_REPOS)
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
            publish.push(root, 51, remote, ref, policy=LOCAL_REPOS)
    assert refs(remote) == before and publish.held_runs(root) == [51]
    assert publish.push(root, 51, remote, branch_ref("nightly", 51), policy=LOCAL_REPOS) == sha


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
        publish.push(root, 51, remote, branch_ref("nightly", 51), policy=LOCAL_REPOS)

    assert refs(remote)["refs/heads/routines/nightly/51"] == theirs
    assert publish.held_runs(root) == [51]  # kept: the push may be retried elsewhere


def test_discard_forgets_the_commit(kept: tuple[Path, str, str]) -> None:
    root, remote, _ = kept
    publish.discard(root, 51)
    publish.discard(root, 51)  # nothing kept is fine

    with pytest.raises(PublishError, match="no commit kept"):
        publish.push(root, 51, remote, branch_ref("nightly", 51), policy=LOCAL_REPOS)
    assert publish.held_runs(root) == []


def test_a_failed_push_says_why(kept: tuple[Path, str, str], tmp_path: Path) -> None:
    root, _, _ = kept
    with pytest.raises(PublishError, match="ls-remote exited"):
        publish.push(root, 51, f"file://{tmp_path / 'nowhere.git'}", branch_ref("n", 51),
                     policy=LOCAL_REPOS)
    with pytest.raises(PublishError, match="not allowed"):
        publish.push(root, 51, "ext::sh -c true", branch_ref("n", 51), policy=LOCAL_REPOS)
    assert publish.held_runs(root) == [51]


def test_keeping_again_after_a_crash_returns_the_kept_commit(
        kept: tuple[Path, str, str]) -> None:
    """A run adopted again (the bot died before its verdict was stored) reads its work back
    a second time: the commit already kept is the answer, and still the one pushed."""
    root, remote, sha = kept

    assert publish.keep(root, 51, "routine nightly run 51") == sha
    assert publish.held_runs(root) == [51]
    assert publish.push(root, 51, remote, branch_ref("nightly", 51), policy=LOCAL_REPOS) == sha
    assert refs(remote)["refs/heads/routines/nightly/51"] == sha
