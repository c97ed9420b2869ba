"""The fetch policy where the host applies it, with real git and no container: a refused
clone or push contacts nothing, an accepted one is given the pin, and the pin and the
redirect rule really hold in git and libcurl.

Nothing here reaches beyond loopback. Resolvers are fakes; the one real connection is to
a plain-HTTP server on 127.0.0.2, reached as `localhost` (the one name that needs no DNS:
it is in /etc/hosts, and libcurl answers it itself), which unpinned means 127.0.0.1 and
::1, where that server does not listen."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import git
import pytest

from runner.host import publish, workspace
from runner.host.fetch_policy import pinned_config
from runner.host.publish import PushRefused, branch_ref
from runner.repo_policy import AddressKind, FetchPolicy, Location, Reason, Refusal
from tests.standins.environment import LOCAL_REPOS
from tests.support.sandbox_runs import bare_copy, refs

PUBLIC_V4 = "140.82.121.4"  # public, handed out by fake resolvers, never connected to
PIN = [("http.curloptResolve", ""), ("http.curloptResolve", f"github.com:443:{PUBLIC_V4}"),
       ("http.followRedirects", "false")]


def private(host: str) -> list[str]:
    return ["10.0.0.5"]


def public(host: str) -> list[str]:
    return [PUBLIC_V4]


def configured(env: dict[str, str]) -> list[tuple[str, str]]:
    """The command-line config a git environment carries, in order."""
    return [(env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"])
            for i in range(int(env["GIT_CONFIG_COUNT"]))]


def test_a_refused_clone_contacts_nothing_and_leaves_no_workspace(tmp_path: Path) -> None:
    asked: list[str] = []

    def resolve(host: str) -> list[str]:
        asked.append(host)
        return ["10.0.0.5"]

    with pytest.raises(workspace.CloneRefused) as refused:
        workspace.prepare(tmp_path / "ws", 9, "https://GitHub.com/org/repo.git", "main", None,
                          policy=FetchPolicy(), resolve=resolve)

    assert refused.value.refusal == Refusal(Reason.PRIVATE_ADDRESS, "github.com", "10.0.0.5",
                                            AddressKind.PRIVATE)
    assert isinstance(refused.value, workspace.WorkspaceError)  # so the run ends `error`
    assert str(refused.value) == ("clone of https://GitHub.com/org/repo.git refused: "
                                  "github.com resolves to 10.0.0.5, a private address")
    assert asked == ["github.com"]
    assert not (tmp_path / "ws").exists()


def test_local_repositories_are_cloned_only_when_allowed(tmp_path: Path, git_repo: str) -> None:
    with pytest.raises(workspace.CloneRefused, match=r"disabled on this bot \(ROUTINES_ALLOW"):
        workspace.prepare(tmp_path / "ws", 10, git_repo, "main", None, policy=FetchPolicy())
    assert (workspace.prepare(tmp_path / "ws", 10, git_repo, "main", None, policy=LOCAL_REPOS)
            / "README.md").exists()


def test_an_accepted_clone_is_pinned_to_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What gitpython is given, and then stopped before any connection."""
    seen: dict[str, Any] = {}

    def clone_from(url: str, to_path: Path, **kwargs: Any) -> git.Repo:
        seen.update(url=url, env=kwargs["env"])
        raise git.GitCommandError(["git", "clone"], 128, b"stopped before the network")

    monkeypatch.setattr(git.Repo, "clone_from", staticmethod(clone_from))

    with pytest.raises(workspace.WorkspaceError, match="stopped before the network"):
        workspace.prepare(tmp_path / "ws", 11, "https://GitHub.com./org/repo.git", "main",
                          None, policy=FetchPolicy(), resolve=public)

    assert seen["url"] == "https://github.com/org/repo.git"  # the name the pin is for
    config = configured(seen["env"])
    assert config == [*workspace.PROTOCOL_CONFIG.items(), *PIN]


def test_a_refused_push_contacts_nothing_and_keeps_the_commit(
    tmp_path: Path, git_repo: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = bare_copy(git_repo, tmp_path / "remote.git")
    root = tmp_path / "ws"
    repo = workspace.prepare(root, 61, remote, "main", None, policy=LOCAL_REPOS)
    (repo / "fix.txt").write_text("fixed\n")
    workspace.diff(root, 61, limit=10_000)
    assert publish.keep(root, 61, "routine nightly run 61") is not None
    before = refs(remote)

    with pytest.raises(PushRefused, match="local repositories are disabled") as local:
        publish.push(root, 61, remote, branch_ref("nightly", 61), policy=FetchPolicy())
    with pytest.raises(PushRefused, match=r"resolves to 10\.0\.0\.5") as resolved:
        publish.push(root, 61, "git@github.com:org/repo.git", branch_ref("nightly", 61),
                     policy=FetchPolicy(), resolve=private)

    assert isinstance(local.value, publish.PublishError)  # the publisher records it
    assert (local.value.refusal.reason, resolved.value.refusal.reason) == (
        Reason.LOCAL_DISABLED, Reason.PRIVATE_ADDRESS)
    assert refs(remote) == before and publish.held_runs(root) == [61]

    calls: list[tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = []

    def fake_git(held: Path, *args: str, pins: tuple[tuple[str, str], ...] = ()) -> str:
        calls.append((args, pins))
        return "0" * 40 + "\n" if args[0] == "rev-parse" else ""

    monkeypatch.setattr(publish, "_git", fake_git)
    publish.push(root, 61, "https://GITHUB.com/org/repo.git", branch_ref("nightly", 61),
                 policy=FetchPolicy(), resolve=public)
    remote_calls = [(args, pins) for args, pins in calls if args[0] != "rev-parse"]
    assert [args[:5] for args, _ in remote_calls] == [
        ("ls-remote", "--symref", "--", "https://github.com/org/repo.git", "HEAD"),
        ("push", "--no-verify", "--porcelain", "--", "https://github.com/org/repo.git")]
    assert all(list(pins) == PIN for _, pins in remote_calls)


class _Server(SimpleHTTPRequestHandler):
    """Serves a directory (git's "dumb" HTTP protocol needs nothing more); `/moved.git/`
    redirects to `/repo.git/`."""

    def do_GET(self) -> None:
        if self.path.startswith("/moved.git/"):
            self.send_response(301)
            self.send_header("Location", "/repo.git/" + self.path.removeprefix("/moved.git/"))
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def loopback_repo(tmp_path: Path, git_repo: str) -> Iterator[int]:
    """A repository served over plain HTTP on 127.0.0.2 only; yields the port."""
    served = tmp_path / "served"
    bare_copy(git_repo, served / "repo.git")
    git.Git().execute(["git", f"--git-dir={served / 'repo.git'}", "update-server-info"])
    server = ThreadingHTTPServer(("127.0.0.2", 0), partial(_Server, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def ls_remote(url: str, config: tuple[tuple[str, str], ...] | list[tuple[str, str]],
              ) -> subprocess.CompletedProcess[bytes]:
    """Host-side git as the clone runs it, but allowed plain HTTP (for loopback only)."""
    env = workspace.git_env([*workspace.PROTOCOL_CONFIG.items(), ("protocol.http.allow",
                                                                   "always"), *config],
                            GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                            GIT_TERMINAL_PROMPT="0", GIT_TRACE_CURL="1",
                            GIT_TRACE_CURL_NO_DATA="1")
    return subprocess.run(["git", "ls-remote", url], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)


def test_git_connects_to_the_pinned_address_only(loopback_repo: int) -> None:
    url = f"http://localhost:{loopback_repo}/repo.git"
    at = Location("https", url, "localhost", loopback_repo)

    unpinned = ls_remote(url, ())
    pinned = ls_remote(url, pinned_config(at, ("127.0.0.2",)))
    with_ipv6 = ls_remote(url, pinned_config(at, ("::1", "127.0.0.2")))

    assert unpinned.returncode != 0  # localhost: 127.0.0.1 and ::1, where nothing listens
    assert pinned.returncode == 0 and b"\trefs/heads/main" in pinned.stdout, pinned.stderr
    assert b"Connected to localhost (127.0.0.2)" in pinned.stderr
    # An IPv6 address is written in brackets, and curl reads it so: tried first, refused.
    assert with_ipv6.returncode == 0, with_ipv6.stderr
    assert re.search(rb"Trying \[?::1\]?", with_ipv6.stderr), with_ipv6.stderr


def test_redirects_are_refused(loopback_repo: int) -> None:
    moved = f"http://localhost:{loopback_repo}/moved.git"
    config = pinned_config(Location("https", moved, "localhost", loopback_repo), ("127.0.0.2",))

    refused = ls_remote(moved, config)
    followed = ls_remote(moved, [c for c in config if c[0] != "http.followRedirects"])

    assert refused.returncode != 0 and b"returned error: 301" in refused.stderr, refused.stderr
    assert followed.returncode == 0 and b"\trefs/heads/main" in followed.stdout, followed.stderr
