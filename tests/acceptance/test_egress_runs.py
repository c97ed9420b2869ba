"""Egress by policy, from a real run's shell: an allowed test host is reached over HTTP and
HTTPS (CONNECT) through the run's proxy, a denied one gets the proxy's 403, `none` reaches
nothing, a raw TCP connect to a test host fails, and every attempt is in the run's log.
The test hosts are containers on a docker network the test creates; nothing else is ever
contacted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.egress_policy import EgressPolicy, NetworkMode
from tests.standins.anthropic_api import AnthropicStandIn, report, tool, tool_results
from tests.support.bots import SANDBOX_IMAGE
from tests.support.echo_hosts import HTTP_PORT, HTTPS_PORT, EchoHosts, echo_hosts
from tests.support.run_specs import spec
from tests.support.sandbox_runs import execute, make_sandbox

pytestmark = pytest.mark.docker

# Run by the agent's run_shell: each attempt prints one JSON line. urllib takes the proxy
# from HTTP(S)_PROXY as any program would; the CA is the test hosts' own certificate.
PROBE = """python3 - <<'EOF'
import json, socket, ssl, urllib.request, urllib.error
ca = %r
def fetch(url):
    context = ssl.create_default_context(cadata=ca)
    try:
        with urllib.request.urlopen(url, timeout=20, context=context) as answer:
            return {"url": url, "status": answer.status, "body": answer.read().decode()}
    except urllib.error.HTTPError as refused:
        return {"url": url, "status": refused.code, "reason": refused.headers.get("x-deny-reason"),
                "body": refused.read().decode()}
    except Exception as failed:
        return {"url": url, "error": type(failed).__name__}
for url in %r:
    print(json.dumps(fetch(url)))
try:
    socket.create_connection((%r, 8080), timeout=5).close()
    print(json.dumps({"raw": "connected"}))
except OSError as failed:
    print(json.dumps({"raw": type(failed).__name__}))
EOF"""


@pytest.fixture
def hosts(docker_client: Any, tmp_path: Path) -> Iterator[EchoHosts]:
    with echo_hosts(docker_client, tmp_path, ["allowed.test", "denied.test"]) as found:
        yield found


async def probe_run(docker_client: Any, anthropic_api: AnthropicStandIn, tmp_path: Path,
                    git_repo: str, hosts: EchoHosts, policy: EgressPolicy,
                    name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One run whose shell tries every URL; returns what it printed and the egress events."""
    urls = [f"http://allowed.test:{HTTP_PORT}/plain", f"https://allowed.test:{HTTPS_PORT}/tls",
            f"http://denied.test:{HTTP_PORT}/nope"]
    command = PROBE % (hosts.ca_file.read_text(), urls, hosts.hosts["allowed.test"].address)
    marker = anthropic_api.script(name, [tool("run_shell", command=command)],
                                  [report("success", "probed")])
    names = {host.name: host.address for host in hosts.hosts.values()}
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE, names)
    try:
        observed = await execute(sandbox, spec(31, f"Probe. {marker}", git_repo,
                                               egress=policy.to_spec()))
    finally:
        sandbox.close()
    assert observed.result.report is not None, observed.events
    output = tool_results(anthropic_api.requests_for(name)[-1].body)[0]["content"]
    printed = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return printed, observed.of_type("egress")


async def test_an_allowed_host_is_reached_a_denied_one_refused_and_every_attempt_logged(
    docker_client: Any, anthropic_api: AnthropicStandIn, tmp_path: Path, git_repo: str,
    hosts: EchoHosts,
) -> None:
    policy = EgressPolicy(NetworkMode.CUSTOM, ("allowed.test",))
    printed, egress = await probe_run(docker_client, anthropic_api, tmp_path, git_repo,
                                      hosts, policy, "egress-custom")

    plain, tls, denied, raw = printed
    assert (plain["status"], plain["body"]) == (200, "allowed.test GET /plain ")
    assert (tls["status"], tls["body"]) == (200, "allowed.test GET /tls ")  # TLS verified
    assert (denied["status"], denied["reason"]) == (403, "host_not_allowed")
    assert "denied.test" in denied["body"]
    assert raw["raw"] != "connected"  # no route: the host's own address is not reachable
    assert hosts.hosts["denied.test"].requests_seen() == []
    assert len(hosts.hosts["allowed.test"].requests_seen()) == 2
    # An attempt is logged when it ends (its byte counts are known then), so a tunnel
    # still closing can be logged after the refusal that followed it: compare as a set.
    attempts = sorted((e["method"], e["host"], e["port"], e["allowed"], e.get("reason") or "")
                      for e in egress)
    assert attempts == [("CONNECT", "allowed.test", HTTPS_PORT, True, ""),
                        ("GET", "allowed.test", HTTP_PORT, True, ""),
                        ("GET", "denied.test", HTTP_PORT, False, "host_not_allowed")]
    assert all(e["source"] == "host" for e in egress)


async def test_network_none_reaches_nothing_and_logs_each_refusal(
    docker_client: Any, anthropic_api: AnthropicStandIn, tmp_path: Path, git_repo: str,
    hosts: EchoHosts,
) -> None:
    printed, egress = await probe_run(docker_client, anthropic_api, tmp_path, git_repo,
                                      hosts, EgressPolicy(NetworkMode.NONE, ()), "egress-none")

    plain, tls, denied, raw = printed
    assert (plain["status"], plain["reason"]) == (403, "host_not_allowed")
    assert denied["status"] == 403
    assert tls.get("status") == 403 or "error" in tls  # a refused CONNECT fails the tunnel
    assert raw["raw"] != "connected"
    assert [h.requests_seen() for h in hosts.hosts.values()] == [[], []]
    assert [(e["host"], e["allowed"]) for e in egress] == [
        ("allowed.test", False), ("allowed.test", False), ("denied.test", False)]
