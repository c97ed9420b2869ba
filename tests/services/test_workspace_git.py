"""Host-side git never reads the agent's `.git`: whatever the sandbox plants there (an
fsmonitor, an external diff, hooks, a `.git` file pointing elsewhere) runs nothing on
the host, and the diff and the kept commit still hold exactly the agent's work.

The workspace is changed here as the sandbox would change it (by writing into the
mounted clone) before the host reads it back, with real git throughout. Planted from inside
the real sandbox: tests/acceptance/test_planted_git_config.py."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import git
import pytest

from runner.host import workspace
from tests.standins.environment import LOCAL_REPOS, make_git_repo

SANDBOX_UID = 10001 if os.geteuid() == 0 else None
Plant = Callable[[Path, Path], None]  # (the workspace, the marker a program would create)


def plant_fsmonitor(repo: Path, marker: Path) -> None:
    _agent_git(repo, "config", "core.fsmonitor", f"touch {marker}; false")


def plant_external_diff(repo: Path, marker: Path) -> None:
    _agent_git(repo, "config", "diff.external", str(_script(repo.parent, marker)))


def plant_hooks(repo: Path, marker: Path) -> None:
    hooks = repo / ".git" / "hooks"
    for name in ("post-index-change", "pre-commit", "post-commit", "reference-transaction"):
        _script(hooks, marker, name)
    _agent_git(repo, "config", "core.hooksPath", str(hooks))


def plant_filter(repo: Path, marker: Path) -> None:
    _agent_git(repo, "config", "filter.evil.clean", f"sh -c 'touch {marker}; cat'")
    _agent_git(repo, "config", "diff.evil.textconv", f"sh -c 'touch {marker}; cat'")
    (repo / ".gitattributes").write_text("* filter=evil diff=evil\n")


def plant_git_file(repo: Path, marker: Path) -> None:
    """`.git` swapped for a file pointing at a repository of the agent's own making."""
    decoy = repo / "decoy.git"
    git.Repo.init(decoy, bare=True).close()
    (decoy / "config").write_text(f"[core]\n\tfsmonitor = touch {marker}; false\n"
                                  f"[diff]\n\texternal = {_script(repo.parent, marker)}\n")
    shutil.rmtree(repo / ".git")
    (repo / ".git").write_text("gitdir: decoy.git\n")  # relative: valid in and out


def plant_nested_repository(repo: Path, marker: Path) -> None:
    nested = repo / "vendor" / "lib"
    nested.mkdir(parents=True)
    (nested / "lib.txt").write_text("vendored\n")
    _agent_git(nested, "init", "-q")
    _agent_git(nested, "config", "core.fsmonitor", f"touch {marker}; false")
    _script(nested / ".git" / "hooks", marker, "post-index-change")


PLANTS: dict[str, Plant] = {
    "fsmonitor": plant_fsmonitor, "external-diff": plant_external_diff,
    "hooks": plant_hooks, "filter": plant_filter, "git-file": plant_git_file,
    "nested-repository": plant_nested_repository,
}


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    url = make_git_repo(tmp_path / "upstream")
    return workspace.prepare(tmp_path / "ws", 7, url, "main", SANDBOX_UID, policy=LOCAL_REPOS)


def agent_work(repo: Path) -> None:
    (repo / "README.md").write_text("# demo\nchanged by the agent\n")
    (repo / "notes.txt").write_text("new file\n")


@pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())
def test_planted_git_programs_never_run_on_the_host_and_the_diff_is_right(
    tmp_path: Path, clone: Path, plant: Plant,
) -> None:
    marker = tmp_path / "HOST-RAN-AGENT-CODE"
    agent_work(clone)
    plant(clone, marker)
    root = tmp_path / "ws"

    text = workspace.diff(root, 7, limit=100_000)
    sha = workspace.commit(root, 7, "routine nightly run 7")

    assert not marker.exists()
    assert "+changed by the agent" in text and "+new file" in text
    assert " b/.git/" not in text and "[diff unavailable" not in text
    assert sha is not None
    host = workspace.host_git_dir(root, 7)
    assert read_git(host, "show", f"{sha}:notes.txt") == "new file\n"
    assert ".git" not in read_git(host, "ls-tree", "-r", "--name-only", sha).split("/")
    assert not marker.exists()


def test_the_host_git_directory_is_outside_the_mounted_clone(tmp_path: Path,
                                                              clone: Path) -> None:
    host = workspace.host_git_dir(tmp_path / "ws", 7)
    assert host.is_dir() and not host.is_relative_to(clone)
    assert host.stat().st_uid == os.geteuid()  # the agent's uid owns only the clone
    if SANDBOX_UID is not None:
        assert (clone / ".git" / "config").stat().st_uid == SANDBOX_UID


def test_a_nested_repository_is_kept_as_plain_files(tmp_path: Path, clone: Path) -> None:
    plant_nested_repository(clone, tmp_path / "marker")

    text = workspace.diff(tmp_path / "ws", 7, limit=100_000)

    assert "+vendored" in text and "Subproject commit" not in text
    assert not (clone / "vendor" / "lib" / ".git").exists()


def test_the_kept_commit_is_the_bots_on_top_of_the_cloned_commit(
    tmp_path: Path, clone: Path,
) -> None:
    root = tmp_path / "ws"
    base = (workspace.run_dir(root, 7) / workspace.BASE_COMMIT_FILE).read_text()
    assert workspace.commit(root, 7, "nothing yet") is None  # no change, no commit
    agent_work(clone)

    sha = workspace.commit(root, 7, "routine nightly run 7\n\nUpdated the readme.")

    assert sha is not None
    host = workspace.host_git_dir(root, 7)
    shown = read_git(host, "show", "-s", "--format=%P%n%an <%ae>%n%cn <%ce>%n%B", sha)
    assert shown.splitlines()[:5] == [base, "routines bot <routines@localhost>",
                                      "routines bot <routines@localhost>",
                                      "routine nightly run 7", ""]
    assert "Updated the readme." in shown
    assert read_git(host, "rev-parse", workspace.KEPT_REF).strip() == sha


@pytest.mark.parametrize("url", ["ext::sh -c touch% {marker}", "git://127.0.0.1:9/{marker}"])
def test_a_clone_through_a_transport_outside_the_allowed_ones_is_refused(
    tmp_path: Path, url: str,
) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(workspace.WorkspaceError, match="clone of"):
        workspace.prepare(tmp_path / "ws", 8, url.format(marker=marker), "main", None,
                          policy=LOCAL_REPOS)
    assert not marker.exists()


def read_git(git_dir: Path, *args: str) -> str:
    """git on a bare git directory, from the test's side."""
    return str(git.Git().execute(["git", f"--git-dir={git_dir}", *args],
                                 strip_newline_in_stdout=False))


def _agent_git(path: Path, *args: str) -> None:
    """git as the agent runs it inside the sandbox: in the workspace, its own config."""
    git.Git(str(path)).execute(["git", "-c", "safe.directory=*", *args])


def _script(directory: Path, marker: Path, name: str = "evil.sh") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\ntouch {marker}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
