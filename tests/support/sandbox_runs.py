"""Runs straight through `runner.Sandbox`, without the bot: the real engine and image, the
real agent talking to the Anthropic stand-in, a local repository. The specs they run come
from tests/support/run_specs.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import git
import httpx2

from runner.contract import GATEWAY_SOCKET, Event, RunResult, RunSpec
from runner.host.following import RunControl
from runner.host.sandbox import Sandbox, SandboxConfig
from tests.standins.anthropic_api import AnthropicStandIn
from tests.standins.environment import API_KEY, LOCAL_REPOS, SANDBOX_RUNTIME, WARM_POOL

# Sandboxes made with a warm pool (ROUTINES_TEST_WARM_POOL): closed after each test
# (`close_pooled`), so that their warm containers and slots go with it.
_POOLED: list[Sandbox] = []
# The run tokens the host gave warm containers, by run id: a warm container's token is in
# no environment the host can inspect (`run_token`), so the host's delivery is tapped.
_GIVEN: dict[int, str] = {}


def make_sandbox(client: Any, anthropic_api: AnthropicStandIn, root: Path,
                 image: str, egress_names: dict[str, str] | None = None,
                 claude_code_image: str = "", warm_pool: int = WARM_POOL) -> Sandbox:
    """`egress_names`: the proxy's resolver, a test host's name -> its address (a name it
    does not hold resolves to nothing). `warm_pool`: its pool is started, and waited for."""
    config = SandboxConfig(image=image, workspace_root=root, claude_code_image=claude_code_image,
                           instance=f"test-{uuid.uuid4().hex[:8]}",
                           anthropic_api_key=API_KEY, anthropic_base_url=anthropic_api.url,
                           fetch_policy=LOCAL_REPOS, runtime=SANDBOX_RUNTIME,
                           warm_pool=warm_pool)
    names = egress_names or {}
    sandbox = Sandbox(client, config,
                      egress_resolve=lambda host: [names[host]] if host in names else [])
    for pool in sandbox.pools:
        pool.deliver = _tapped(pool.deliver)  # type: ignore[method-assign]
        pool.start()
    if sandbox.pools:
        _POOLED.append(sandbox)
    deadline = time.monotonic() + 60
    for pool in sandbox.pools:
        while pool.fingerprint() is not None and pool.loaded() < warm_pool:
            assert time.monotonic() < deadline, "the warm pool did not fill in 60s"
            time.sleep(0.05)
    return sandbox


def _tapped(deliver: Any) -> Any:
    def tapped(slot: Any, spec: RunSpec, token: str, token_hash: str, name: str) -> Any:
        _GIVEN[spec.run_id] = token
        return deliver(slot, spec, token, token_hash, name)
    return tapped


def close_pooled() -> None:
    while _POOLED:
        _POOLED.pop().close()
    _GIVEN.clear()


@dataclass
class Observed:
    result: RunResult
    events: list[Event] = field(default_factory=list)

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.get("type") == kind]


async def execute(sandbox: Sandbox, run: RunSpec) -> Observed:
    """Run `run` to its end in a worker thread (the stand-in serves on this loop)."""
    events: list[Event] = []
    result = await asyncio.to_thread(sandbox.execute, run, lambda _seq, e: events.append(e),
                                     lambda _id: None, RunControl())
    return Observed(result, events)


def run_token(client: Any, sandbox: Sandbox, run_id: int) -> str:
    """The token a running run's container was given, read as the host can (inspect; for
    a warm container, the host's delivery)."""
    env = client.containers.get(sandbox.container_name(run_id)).attrs["Config"]["Env"]
    found = [str(v).split("=", 1)[1] for v in env if str(v).startswith("ANTHROPIC_API_KEY=")]
    return found[0] if found else _GIVEN[run_id]


def gateway_socket(sandbox: Sandbox, run_id: int) -> Path:
    return sandbox.socket_dir(run_id) / GATEWAY_SOCKET


def gateway_client(socket_path: Path, token: str) -> anthropic.AsyncAnthropic:
    """The real SDK, talking to a run's gateway over its Unix socket from the host."""
    transport = httpx2.AsyncHTTPTransport(uds=str(socket_path))
    return anthropic.AsyncAnthropic(api_key=token, base_url="http://gateway", max_retries=0,
                                    http_client=httpx2.AsyncClient(transport=transport))


def bare_copy(url: str, path: Path) -> str:
    """A bare repository with `url`'s history, as a routine's remote; returns its URL."""
    git.Repo.clone_from(url, path, bare=True).close()
    return f"file://{path}"


def refs(bare_url: str) -> dict[str, str]:
    """Every ref of a local repository, name -> commit."""
    repo = git.Repo(bare_url.removeprefix("file://"))
    try:
        return {ref.path: ref.commit.hexsha for ref in repo.references}
    finally:
        repo.close()
