"""The run's workspace on the host: a fresh clone, the diff that keeps the work, and the
commit a publishing run leaves.

The clone is made on the host with gitpython (the sandbox never sees credentials or
the network path to the repository) and bind-mounted into the container, `.git` and
all, so the agent can use git. That `.git` then belongs to the agent: its config can
name programs (`core.fsmonitor`, `diff.external`, hooks, filters) that any git command
reading it would run, and it can be swapped for a `.git` file pointing anywhere. So
right after cloning, the host keeps its own copy of the git directory beside the
clone, never mounted (`run-N/host.git`), and every host-side git command names that
directory and the work tree explicitly: the workspace's `.git` is never read.

    run-N/repo          the clone, mounted at /workspace (agent-writable)
    run-N/host.git      the host's git directory for it (never mounted)
    run-N/base-commit   the commit the run started from
    run-N.img           with a disk limit: run-N's own filesystem (`runner.host.disk`),
                        mounted on run-N before the clone, so all of the above counts

Before anything is cloned, the URL must pass the host's fetch policy
(`runner.host.fetch_policy`): an allowed host whose every address is public, and git
pinned to those addresses.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import git

from runner.disk_limit import DISK_LIMIT_SETTING, describe_size
from runner.errors import CloneRefused, DiskLimitUnavailable, WorkspaceError
from runner.host import disk, fetch_policy
from runner.host.fetch_policy import Fetch, FetchPolicy, Refusal, Resolver, system_resolve

__all__ = ["CloneRefused", "DiskLimitUnavailable", "WorkspaceError", "clone_config", "commit",
           "contains_any", "diff", "disk_limit_reached", "host_git_dir", "leftover_runs",
           "prepare", "remove", "repo_dir", "run_dir"]

BASE_COMMIT_FILE = "base-commit"
HOST_GIT_DIR = "host.git"
KEPT_REF = "refs/routines/kept"  # where `commit` leaves the run's commit
BOT_IDENTITY = {"GIT_AUTHOR_NAME": "routines bot", "GIT_AUTHOR_EMAIL": "routines@localhost",
                "GIT_COMMITTER_NAME": "routines bot",
                "GIT_COMMITTER_EMAIL": "routines@localhost"}
# The transports a routine's repository may use (the bot accepts https, ssh and, when
# allowed, local paths); `ext::` and the rest would let a URL run a program.
PROTOCOL_CONFIG = {"protocol.allow": "never", "protocol.https.allow": "always",
                   "protocol.ssh.allow": "always", "protocol.file.allow": "always"}
# Host git never runs hooks or an fsmonitor, whatever a repository's config says.
# Config given this way also binds every git process git itself starts.
NO_PROGRAMS_CONFIG = {"core.hooksPath": os.devnull, "core.fsmonitor": "false"}
GIT_TIMEOUT = 600
_RUN_ENTRY = re.compile(r"run-(\d+)(?:\.img)?")


def run_dir(root: Path, run_id: int) -> Path:
    return root / f"run-{run_id}"


def repo_dir(root: Path, run_id: int) -> Path:
    return run_dir(root, run_id) / "repo"


def host_git_dir(root: Path, run_id: int) -> Path:
    return run_dir(root, run_id) / HOST_GIT_DIR


def git_env(config: Mapping[str, str] | Sequence[tuple[str, str]],
            **extra: str) -> dict[str, str]:
    """The environment of a host-side git command: ours without any `GIT_*` variable
    (which could point git at another repository), `config` as command-line config (a
    sequence of pairs, for a key given more than once)."""
    pairs = list(config.items()) if isinstance(config, Mapping) else list(config)
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env["GIT_CONFIG_COUNT"] = str(len(pairs))
    for index, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    env.update(extra)
    return env


def prepare(root: Path, run_id: int, url: str, branch: str, owner_uid: int | None, *,
            policy: FetchPolicy, resolve: Resolver = system_resolve,
            disk_limit: int = 0, into: Path | None = None) -> Path:
    """Clone `url` at `branch` into a fresh directory, keep the host's copy of its git
    directory, and return the repo path (the one to mount).

    `into`: a warm container's slot (`runner.host.pool`), made before the run with its
    filesystem (when limited) and an empty `repo` the container already mounts. The run's
    directory is then a link to it, so everything below reads and removes it as any other.

    `policy` is checked first, `resolve` answering for the host (`CloneRefused`, and
    nothing contacted, when it refuses); git then connects only to the addresses checked
    (`runner.host.fetch_policy`). With `disk_limit` (bytes; 0: none) the run's directory
    is first made a filesystem of that size (`runner.host.disk`; `DiskLimitUnavailable`
    when this host cannot). On any error nothing is left behind."""
    fetch = fetch_policy.checked(url, policy, resolve)
    if isinstance(fetch, Refusal):
        raise CloneRefused(url, fetch)
    target = repo_dir(root, run_id)
    remove(root, run_id)  # a leftover of an earlier process
    if into is not None:
        target.parent.symlink_to(into, target_is_directory=True)
    else:
        target.parent.mkdir(parents=True)
    try:
        if disk_limit and into is None:
            disk.mount_limited(target.parent, disk_limit)
        return _clone(fetch, url, branch, target, owner_uid, disk_limit)
    except BaseException:
        remove(root, run_id)
        raise


def _clone(fetch: Fetch, url: str, branch: str, target: Path, owner_uid: int | None,
           disk_limit: int) -> Path:
    try:
        # no_hardlinks: a local clone would otherwise share object files with the
        # source repository, and the chown below would hand those to the sandbox.
        repo = git.Repo.clone_from(fetch.url, target, branch=branch, depth=1,
                                   single_branch=True, no_hardlinks=True,
                                   env=git_env(clone_config(fetch)))
    except git.GitError as exc:  # a failed clone, or a URL gitpython deems unsafe
        stderr = str(getattr(exc, "stderr", "") or exc).strip().replace("\n", " ")
        _no_room(disk_limit, stderr, f"the clone of {url} at {branch}")
        stderr = stderr[:300]
        raise WorkspaceError(f"clone of {url} at {branch} failed: {stderr}") from exc
    try:
        (target.parent / BASE_COMMIT_FILE).write_text(repo.head.commit.hexsha)
        shutil.copytree(target / ".git", target.parent / HOST_GIT_DIR, symlinks=True)
        if owner_uid is not None:
            _chown_tree(target, owner_uid)
    except OSError as exc:
        _no_room(disk_limit, str(exc), f"the clone of {url} at {branch}")
        raise WorkspaceError(f"could not prepare the workspace: {exc}") from exc
    finally:
        repo.close()
    return target


def clone_config(fetch: Fetch) -> list[tuple[str, str]]:
    """The command-line config of the clone: the allowed transports, then the pins."""
    return [*PROTOCOL_CONFIG.items(), *fetch.config]


def diff(root: Path, run_id: int, limit: int) -> str:
    """Everything the run changed against the cloned commit, new files included.

    Call it only once the container has ended: it stages the work tree in the host's
    git directory, and removes any nested `.git` from the work tree first (see
    `_strip_nested_git`)."""
    if not _base_file(root, run_id).exists() or not repo_dir(root, run_id).exists():
        return ""
    try:
        _stage(root, run_id)
        text = _host_git(root, run_id, "diff", "--cached", "--no-ext-diff", "--no-textconv",
                         "--ignore-submodules=all", _base(root, run_id))
    except WorkspaceError as exc:
        return f"[diff unavailable: {exc}]"
    if len(text) > limit:
        return text[:limit] + f"\n[... diff truncated, {len(text) - limit} more characters]"
    return text


def commit(root: Path, run_id: int, message: str) -> str | None:
    """Commit the work tree's state on top of the cloned commit, in the host's git
    directory (at `KEPT_REF`), as the routines bot; None when nothing changed.

    Plumbing only (`write-tree`, `commit-tree`), so no hook, no signing and no commit
    config applies. Same precondition as `diff`."""
    base = _base(root, run_id)
    _stage(root, run_id)
    tree = _host_git(root, run_id, "write-tree").strip()
    if tree == _host_git(root, run_id, "rev-parse", f"{base}^{{tree}}").strip():
        return None
    sha = _host_git(root, run_id, "commit-tree", tree, "-p", base, "-m", message,
                    extra_env=BOT_IDENTITY).strip()
    _host_git(root, run_id, "update-ref", KEPT_REF, sha)
    return sha


def contains_any(root: Path, run_id: int, values: list[str]) -> bool:
    """Whether any of `values` occurs in the staged work tree (after `diff` or `commit`).

    The patterns go through a file of the host's, not the command line."""
    values = [v for v in values if v and "\n" not in v]
    if not values:
        return False
    patterns = run_dir(root, run_id) / "patterns"
    patterns.write_text("".join(f"{v}\n" for v in values))
    try:
        proc = _run_host_git(root, run_id, ("grep", "--cached", "-q", "-F", "-f", str(patterns)))
    finally:
        patterns.unlink(missing_ok=True)
    if proc.returncode > 1:
        raise WorkspaceError(f"git grep exited with {proc.returncode}")
    return proc.returncode == 0


def remove(root: Path, run_id: int) -> None:
    """Delete the run's workspace: its filesystem unmounted first, when it has one (a
    warm slot's, when the run's directory links to one)."""
    path = run_dir(root, run_id)
    if path.is_symlink():
        target = path.resolve()
        path.unlink()
        path = target
    disk.unmount(path)
    shutil.rmtree(path, ignore_errors=True)


def disk_limit_reached(root: Path, run_id: int) -> int | None:
    """The run's disk limit (bytes) if the run filled its filesystem; None otherwise.
    Read it before the host's own git work on the run (`diff`) takes any of the space."""
    return disk.limit_reached(run_dir(root, run_id).resolve())


def leftover_runs(root: Path) -> list[int]:
    """The runs that have a workspace under `root` (a directory, or a filesystem's file)."""
    found = (_RUN_ENTRY.fullmatch(path.name) for path in root.glob("run-*"))
    return sorted({int(match.group(1)) for match in found if match})


def _no_room(disk_limit: int, error: str, what: str) -> None:
    """Say so when `what` failed for want of space (git deletes a failed clone, so the
    filesystem is no longer full by now: its error says it)."""
    if disk_limit and os.strerror(errno.ENOSPC) in error:
        raise WorkspaceError(f"{what} does not fit in the run's disk limit of "
                             f"{describe_size(disk_limit)} ({DISK_LIMIT_SETTING})")


def _base_file(root: Path, run_id: int) -> Path:
    return run_dir(root, run_id) / BASE_COMMIT_FILE


def _base(root: Path, run_id: int) -> str:
    try:
        return _base_file(root, run_id).read_text().strip()
    except OSError as exc:
        raise WorkspaceError(f"run {run_id} has no workspace") from exc


def _stage(root: Path, run_id: int) -> None:
    try:
        _strip_nested_git(repo_dir(root, run_id))
    except OSError as exc:
        raise WorkspaceError(f"could not read the work tree back: {exc}") from exc
    _host_git(root, run_id, "add", "--all")


def _host_git(root: Path, run_id: int, *args: str,
              extra_env: dict[str, str] | None = None) -> str:
    """Run git on the run's work tree with the host's git directory; return its output."""
    proc = _run_host_git(root, run_id, args, extra_env)
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip().replace("\n", " ")[:300]
        raise WorkspaceError(f"git {args[0]} exited with {proc.returncode}: {stderr}")
    return proc.stdout.decode("utf-8", "replace")


def _run_host_git(root: Path, run_id: int, args: tuple[str, ...],
                  extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Neither system nor user config is read either: local work on a run needs none,
    and a filter or diff driver the host happens to configure must not meet the
    agent's `.gitattributes`."""
    cmd = ["git", f"--git-dir={host_git_dir(root, run_id)}",
           f"--work-tree={repo_dir(root, run_id)}", *args]
    env = git_env(NO_PROGRAMS_CONFIG, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                  GIT_TERMINAL_PROMPT="0", **(extra_env or {}))
    try:
        return subprocess.run(cmd, cwd=run_dir(root, run_id), env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkspaceError(f"git {args[0]}: {exc}") from exc


def _strip_nested_git(repo: Path) -> None:
    """Delete every `.git` below the top of the work tree.

    To git, a directory holding `.git` is a nested repository, and staging the work
    tree runs `git status` inside it, under that repository's own config: the agent's.
    The top-level `.git` stays (host git never reads it: it names its own). A nested
    repository the agent made is then staged as plain files; a submodule stays at the
    commit the run started from."""
    for dirpath, dirnames, filenames in os.walk(repo):
        nested = dirpath != str(repo)
        path = os.path.join(dirpath, ".git")
        if ".git" in dirnames:  # a directory, or a symbolic link to one
            dirnames.remove(".git")  # never walked into
            if nested:
                _delete(path)
        elif ".git" in filenames and nested:
            os.unlink(path)


def _delete(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


def _chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
