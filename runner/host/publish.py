"""What a publishing run leaves behind, and the only way it reaches the repository.

A run with `RunSpec.publish` that changed files ends with its work committed in the
host's git directory (`runner.host.workspace.commit`); `keep` moves that directory, alone,
to a holding place (`<workspace_root>/publish/run-N.git`). Nothing is pushed by the
sandbox or the run: the bot decides (an approval, say), then calls `push`, which
sends the kept commit to a bot-owned branch and nowhere else, or `discard`.

Branch safety is checked here whatever the caller asks (`check_refspec`): only new or
fast-forwarded branches under `refs/heads/routines/`, never a tag, a deletion, a
forced update, the default branch or a name like main/master.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from runner.errors import PublishError, PublishRefused, PushRefused
from runner.host import fetch_policy, workspace
from runner.host.fetch_policy import Fetch, FetchPolicy, Refusal, Resolver, system_resolve

__all__ = ["PublishError", "PublishRefused", "PushRefused", "branch_ref", "check_refspec",
           "discard", "held_runs", "holding_dir", "keep", "push"]

BRANCH_PREFIX = "refs/heads/routines/"
PROTECTED_NAMES = frozenset({"main", "master", "HEAD"})
PUSH_TIMEOUT = 600
# No hook, no fsmonitor, only the allowed transports, and nothing pushed beyond the
# one refspec (host config such as push.followTags or push.recurseSubmodules is
# overridden). The host's own config still applies otherwise: credentials live there.
PUSH_CONFIG = {**workspace.PROTOCOL_CONFIG, **workspace.NO_PROGRAMS_CONFIG,
               "push.followTags": "false", "push.recurseSubmodules": "no",
               "push.gpgSign": "false"}
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_HELD = re.compile(r"run-(\d+)\.git")


def branch_ref(routine: str, run_id: int) -> str:
    """The branch a run's commit is published to."""
    return f"{BRANCH_PREFIX}{routine}/{run_id}"


def holding_dir(workspace_root: Path, run_id: int) -> Path:
    return workspace_root / "publish" / f"run-{run_id}.git"


def held_runs(workspace_root: Path) -> list[int]:
    """The runs whose commit is waiting to be pushed or discarded."""
    found = (_HELD.fullmatch(p.name) for p in (workspace_root / "publish").glob("run-*.git"))
    return sorted(int(m.group(1)) for m in found if m)


def check_refspec(refspec: str, default_branch: str | None = None) -> str:
    """Return the destination of `refspec` (`SOURCE:DESTINATION`) if pushing it is safe;
    raise `PublishRefused` saying why not. Pure."""
    if refspec.startswith("+"):
        raise PublishRefused(f"refused {refspec!r}: forced updates are never pushed")
    if refspec.count(":") != 1:
        raise PublishRefused(f"refused {refspec!r}: give SOURCE:DESTINATION")
    source, destination = refspec.split(":")
    if not source:
        raise PublishRefused(f"refused {refspec!r}: deleting a branch is never allowed")
    if "*" in refspec:
        raise PublishRefused(f"refused {refspec!r}: patterns are not allowed")
    if destination.startswith("refs/tags/"):
        raise PublishRefused(f"refused {refspec!r}: tags are never pushed")
    if not destination.startswith(BRANCH_PREFIX) or destination == BRANCH_PREFIX:
        raise PublishRefused(f"refused {refspec!r}: only branches under {BRANCH_PREFIX}"
                             " are pushed")
    if not _valid_ref(destination):
        raise PublishRefused(f"refused {refspec!r}: {destination!r} is not a valid ref name")
    branch = destination.removeprefix("refs/heads/")
    if branch == default_branch or branch.rsplit("/", 1)[-1] in PROTECTED_NAMES:
        raise PublishRefused(f"refused {refspec!r}: never the default branch or one named "
                             "like it")
    return destination


def keep(workspace_root: Path, run_id: int, message: str,
         secrets: tuple[str, ...] = ()) -> str | None:
    """Commit the run's changes and keep only its host git directory, for `push`;
    return the commit, or None (and keep nothing) when the run changed nothing.

    Changes holding any of `secrets` are not kept (`PublishError`): whoever approves
    sees them redacted, and would otherwise publish them unknowingly.
    Call it before the workspace is removed, once the container has ended. Called again
    for the same run (adopted again after a crash), it returns the commit it kept."""
    held = holding_dir(workspace_root, run_id)
    if held.is_dir() and not workspace.host_git_dir(workspace_root, run_id).exists():
        return _git(held, "rev-parse", "--verify", f"{workspace.KEPT_REF}^{{commit}}").strip()
    try:
        sha = workspace.commit(workspace_root, run_id, message)
        leaked = sha is not None and workspace.contains_any(workspace_root, run_id,
                                                            list(secrets))
    except workspace.WorkspaceError as exc:
        raise PublishError(f"could not keep run {run_id}'s changes: {exc}") from exc
    if leaked:
        raise PublishError(f"run {run_id}'s changes contain a secret value: nothing kept")
    if sha is None:
        return None
    held.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(held, ignore_errors=True)
    # A move, not a rename: with a disk limit the run's directory is a filesystem of its
    # own (`runner.host.disk`), which is deleted with the workspace.
    shutil.move(workspace.host_git_dir(workspace_root, run_id), held)
    _git(held, "config", "core.bare", "true")  # no work tree goes with it
    (held / "index").unlink(missing_ok=True)
    return sha


def push(workspace_root: Path, run_id: int, repo_url: str, ref: str, *,
         policy: FetchPolicy, resolve: Resolver = system_resolve) -> str:
    """Push run `run_id`'s kept commit to `ref` in `repo_url`; return the commit.

    Never forced: an existing `ref` must be an ancestor of the commit, or the push fails.
    The holding directory is removed after success only (a failed push can be retried).
    `policy` is checked as for the clone (`PushRefused`, nothing contacted), and both
    git commands that reach the remote connect only to the addresses checked.
    """
    held = holding_dir(workspace_root, run_id)
    done = _pushed_note(workspace_root, run_id)
    if not held.is_dir() and done.is_file():  # pushed before a crash, not yet recorded
        return done.read_text().strip()
    if not held.is_dir():
        raise PublishError(f"run {run_id} has no commit kept for publishing")
    fetch = fetch_policy.checked(repo_url, policy, resolve)
    if isinstance(fetch, Refusal):
        raise PushRefused(repo_url, fetch)
    sha = _git(held, "rev-parse", "--verify", f"{workspace.KEPT_REF}^{{commit}}").strip()
    refspec = f"{sha}:{ref}"
    check_refspec(refspec, _default_branch(held, fetch))
    _git(held, "push", "--no-verify", "--porcelain", "--", fetch.url, refspec,
         pins=fetch.config)
    done.write_text(sha + "\n")  # `discard` forgets it, once the push is recorded
    shutil.rmtree(held, ignore_errors=True)
    return sha


def discard(workspace_root: Path, run_id: int) -> None:
    """Forget run `run_id`'s kept commit (rejected, expired) or that it was pushed (the
    push recorded); nothing kept is fine."""
    shutil.rmtree(holding_dir(workspace_root, run_id), ignore_errors=True)
    _pushed_note(workspace_root, run_id).unlink(missing_ok=True)


def _pushed_note(workspace_root: Path, run_id: int) -> Path:
    """The commit a push sent, kept until the push is recorded: pushing again after a
    crash in between answers it instead of failing for want of a kept commit."""
    return workspace_root / "publish" / f"run-{run_id}.pushed"


def _default_branch(held: Path, fetch: Fetch) -> str | None:
    """The remote's default branch (what its HEAD names), if it has one."""
    listing = _git(held, "ls-remote", "--symref", "--", fetch.url, "HEAD", pins=fetch.config)
    for line in listing.splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            return line.removeprefix("ref: refs/heads/").removesuffix("\tHEAD")
    return None


def _valid_ref(ref: str) -> bool:
    """A conservative subset of git's ref-name rules (`git check-ref-format`)."""
    parts = ref.split("/")
    return not (
        _BAD_REF_CHARS.search(ref) or ".." in ref or "@{" in ref or ref.endswith(".")
        or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)
    )


def _git(held: Path, *args: str, pins: tuple[tuple[str, str], ...] = ()) -> str:
    cmd = ["git", f"--git-dir={held}", *args]
    env = workspace.git_env([*PUSH_CONFIG.items(), *pins], GIT_TERMINAL_PROMPT="0")
    try:
        proc = subprocess.run(cmd, cwd=held, env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=PUSH_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PublishError(f"git {args[0]} failed: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).decode("utf-8", "replace")
        detail = " ".join(output.split())[:400]
        raise PublishError(f"git {args[0]} exited with {proc.returncode}: {detail}")
    return proc.stdout.decode("utf-8", "replace")
