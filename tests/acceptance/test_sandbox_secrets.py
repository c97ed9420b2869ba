"""The sandbox holds nothing worth stealing, tried as an attacker would from a run's shell:
the real key is nowhere it can read, the model gateway admits only the live run's token
on the Messages API paths, and no host port nor other container is reachable. Real
containers, the real agent, the Anthropic stand-in behind the host's gateway."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from runner.contract import GATEWAY_PORT, Event, Report
from runner.host import workspace
from runner.host.following import RunControl
from tests.standins.anthropic_api import AnthropicStandIn, report, tool, tool_results
from tests.standins.environment import API_KEY
from tests.support.bots import SANDBOX_IMAGE
from tests.support.run_specs import spec
from tests.support.sandbox_runs import (
    execute,
    gateway_client,
    gateway_socket,
    make_sandbox,
    run_token,
)
from tests.support.slack_flows import wait_until

pytestmark = pytest.mark.docker

# Searches every /proc/*/environ and cmdline, every readable file (but /proc, /sys, /dev)
# and its own environment for the key, and lists every ANTHROPIC_API_KEY value it finds
# in a process's environment. The key is spelt backwards in the script so that the
# search's own command line does not hold it.
SEARCH = """python3 - <<'EOF'
import json, os
key = %r[::-1].encode()
hits, read, denied, tokens = [], 0, [], set()
def check(name, data):
    global read
    read += 1
    if key in data:
        hits.append(name)
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    for part in ("environ", "cmdline"):
        path = f"/proc/{pid}/{part}"
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            denied.append(path)
            continue
        check(path, data)
        tokens.update(v.split(b"=", 1)[1].strip(b"\\0").decode() for v in data.split(b"\\0")
                      if v.startswith(b"ANTHROPIC_API_KEY="))
for root, dirs, files in os.walk("/"):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in files:
        path = os.path.join(root, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    check(path, f.read())
        except OSError:
            denied.append(path)
check("env", "\\n".join(f"{k}={v}" for k, v in os.environ.items()).encode())
print(json.dumps({"hits": hits, "read": read, "tokens": sorted(tokens)}))
EOF"""


async def test_the_real_key_is_nowhere_a_run_can_read_but_reaches_the_upstream(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = anthropic_api.script(
        "search", [tool("run_shell", command=SEARCH % API_KEY[::-1])],
        [report("success", "searched")])
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)
    tokens: list[str] = []

    result = await asyncio.to_thread(
        sandbox.execute, spec(41, f"Search. {marker}", git_repo), lambda _s, _e: None,
        lambda _id: tokens.append(run_token(docker_client, sandbox, 41)), RunControl())

    assert result.report == Report("success", "searched")
    sent = anthropic_api.requests_for("search")
    output = tool_results(sent[1].body)[0]["content"]
    found = json.loads(output.splitlines()[1])
    assert found["hits"] == []
    assert found["read"] > 1000  # it did read the image's files, not nothing
    # Nor can the tools read the run token from the agent (process 1): it is not
    # dumpable, and it blanked the token in its environment block.
    assert tokens[0].startswith("rt-") and tokens[0] not in found["tokens"]
    # Every call reached the upstream with the real key, which only the host holds.
    assert len(sent) == 2
    assert all(r.headers.get("x-api-key") == API_KEY for r in sent)


async def test_the_gateway_admits_only_the_live_runs_token_on_the_messages_paths(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    first = anthropic_api.script("first", [report("success", "done")])
    second = anthropic_api.script(
        "second", [tool("run_shell", command="while [ ! -e release ]; do sleep 0.2; done")],
        [report("success", "released")])
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)
    tokens: list[str] = []
    finished = await asyncio.to_thread(
        sandbox.execute, spec(31, f"One. {first}", git_repo), lambda _s, _e: None,
        lambda _id: tokens.append(run_token(docker_client, sandbox, 31)), RunControl())
    assert finished.report == Report("success", "done")
    assert not gateway_socket(sandbox, 31).exists()  # its door went with it

    events: list[Event] = []
    running = asyncio.create_task(asyncio.to_thread(
        sandbox.execute, spec(32, f"Two. {second}", git_repo),
        lambda _s, event: events.append(event), lambda _id: None, RunControl()))
    release = workspace.repo_dir(sandbox.config.workspace_root, 32) / "release"
    try:
        await wait_until(lambda: any(e.get("type") == "tool_call" for e in events))
        path = gateway_socket(sandbox, 32)
        hello: Any = [{"role": "user", "content": "hello"}]
        for token in (tokens[0], "rt-forged-token", API_KEY):
            client = gateway_client(path, token)
            with pytest.raises(anthropic.AuthenticationError):
                await client.messages.create(model="m", max_tokens=5, messages=hello)
            await client.close()
        client = gateway_client(path, run_token(docker_client, sandbox, 32))
        for method, other in [("get", "/v1/models"), ("post", "/v1/complete"),
                              ("post", "/v1/messages/batches"), ("post", "/v1/files")]:
            extra: dict[str, Any] = {"body": {"model": "m"}} if method == "post" else {}
            with pytest.raises(anthropic.NotFoundError):
                await getattr(client, method)(other, cast_to=object, **extra)
        reply = await client.messages.create(model="m", max_tokens=5, messages=hello)
        assert reply.content[0].type == "text"  # the live token, on the one path: admitted
    finally:
        release.touch()
    result = await running

    assert result.report == Report("success", "released")
    assert not path.exists()
    with pytest.raises(anthropic.APIConnectionError):  # its token died with the run
        await client.messages.create(model="m", max_tokens=5, messages=hello)
    await client.close()
    # What was refused never went upstream: the two runs' calls and the one admitted.
    assert len(anthropic_api.requests) == 1 + 2 + 1


class Listener:
    """A TCP listener on a host address, counting the connections it accepts."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.address = (host, self.sock.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def target_network(docker_client: Any) -> Iterator[tuple[Any, Any]]:
    """A docker network of the test's own with a container listening on it."""
    network = docker_client.networks.create(f"routines-test-target-{uuid.uuid4().hex[:8]}",
                                            driver="bridge", labels={"org.routines": "test"})
    container = docker_client.containers.run(
        SANDBOX_IMAGE, entrypoint=["python3", "-m", "http.server", "8080"],
        network=network.name, detach=True, labels={"org.routines": "test"})
    try:
        yield network, container
    finally:
        container.remove(force=True)
        network.remove()


PROBE = """python3 - <<'EOF'
import json, socket
found = {}
for host, port in %s:
    try:
        socket.create_connection((host, port), timeout=3).close()
        found[f"{host}:{port}"] = "connected"
    except OSError as exc:
        found[f"{host}:{port}"] = type(exc).__name__
print(json.dumps(found))
EOF"""


async def test_no_host_port_nor_other_container_is_reachable_from_a_run(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
    target_network: tuple[Any, Any],
) -> None:
    network, container = target_network
    network.reload()
    container.reload()
    host_ip = str(network.attrs["IPAM"]["Config"][0]["Gateway"])  # the host, on that bridge
    target_ip = str(container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"])
    on_bridge, on_loopback = Listener(host_ip), Listener("127.0.0.1")
    # From the host, both are there (so what fails below fails for the run alone).
    socket.create_connection(on_bridge.address, timeout=3).close()
    await wait_until(lambda: _connects((target_ip, 8080)))
    probes = [list(on_bridge.address), list(on_loopback.address), [target_ip, 8080],
              ["127.0.0.1", GATEWAY_PORT]]
    marker = anthropic_api.script(
        "probe", [tool("run_shell", command=PROBE % json.dumps(probes))],
        [report("success", "probed")])
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)

    seen = await execute(sandbox, spec(51, f"Probe. {marker}", git_repo))

    output = tool_results(anthropic_api.requests_for("probe")[1].body)[0]["content"]
    found = json.loads(output.splitlines()[1])
    assert seen.result.report == Report("success", "probed")
    unreachable = {f"{host}:{port}": found[f"{host}:{port}"] for host, port in probes[:3]}
    assert all(outcome != "connected" for outcome in unreachable.values()), found
    assert found[f"127.0.0.1:{GATEWAY_PORT}"] == "connected"  # the gateway's forwarder
    assert (on_bridge.accepted, on_loopback.accepted) == (1, 0)  # the host's own probe only
    on_bridge.sock.close()
    on_loopback.sock.close()


def _connects(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True
