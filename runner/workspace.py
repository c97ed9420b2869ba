"""The run's workspace on the host: a fresh clone, and the diff that keeps the work.

The clone is made on the host with gitpython (the sandbox never sees credentials or
the network path to the repository) and bind-mounted into the container.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import git

BASE_COMMIT_FILE = "base-commit"
# The container writes the clone as the sandbox user; git must accept it when we diff.
_SAFE_DIRECTORY_ENV = {
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
}


class WorkspaceError(Exception):
    """The repository could not be cloned."""


def run_dir(root: Path, run_id: int) -> Path:
    return root / f"run-{run_id}"


def repo_dir(root: Path, run_id: int) -> Path:
    return run_dir(root, run_id) / "repo"


def prepare(root: Path, run_id: int, url: str, branch: str, owner_uid: int | None) -> Path:
    """Clone `url` at `branch` into a fresh directory; return the repo path."""
    target = repo_dir(root, run_id)
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    try:
        repo = git.Repo.clone_from(url, target, branch=branch, depth=1, single_branch=True)
    except git.GitCommandError as exc:
        stderr = (exc.stderr or "").strip().replace("\n", " ")[:300]
        raise WorkspaceError(f"clone of {url} at {branch} failed: {stderr}") from exc
    (target.parent / BASE_COMMIT_FILE).write_text(repo.head.commit.hexsha)
    repo.close()
    if owner_uid is not None:
        _chown_tree(target, owner_uid)
    return target


def diff(root: Path, run_id: int, limit: int) -> str:
    """Everything the run changed against the cloned commit, new files included."""
    base_file = run_dir(root, run_id) / BASE_COMMIT_FILE
    path = repo_dir(root, run_id)
    if not base_file.exists() or not path.exists():
        return ""
    cmd = git.Git(str(path))
    with cmd.custom_environment(**_SAFE_DIRECTORY_ENV):
        try:
            cmd.add("--all")
            text = str(cmd.diff("--cached", base_file.read_text().strip()))
        except git.GitCommandError as exc:
            return f"[diff unavailable: {exc.status}]"
    if len(text) > limit:
        return text[:limit] + f"\n[... diff truncated, {len(text) - limit} more characters]"
    return text


def remove(root: Path, run_id: int) -> None:
    shutil.rmtree(run_dir(root, run_id), ignore_errors=True)


def _chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
