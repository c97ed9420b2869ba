"""The host's egress proxy against test hosts of the test's own (containers on a docker
network this module creates), driven over the proxy's Unix socket as the in-container
forwarder would: an allowed host is reached over HTTP and through a CONNECT tunnel with
TLS verified end to end; a denied one gets the 403; `none` reaches nothing; loopback and
the metadata address are refused even under `full`, before any connection; every
attempt is reported. Names reach addresses only through the proxy's injected resolver:
no real DNS, and no address outside the test's network or loopback is ever contacted."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runner.egress_policy import EGRESS_EVENT, DenyReason, EgressPolicy, NetworkMode
from runner.host.egress_proxy import EgressAttempt, EgressProxy, Streams
from runner.repo_policy import AddressKind
from tests.support.bots import SANDBOX_IMAGE
from tests.support.echo_hosts import HTTP_PORT, HTTPS_PORT, EchoHosts, echo_hosts

ALLOWED, DENIED = "allowed.test", "denied.test"

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def hosts(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoHosts]:
    with echo_hosts(docker_client, tmp_path_factory.mktemp("certs"), [ALLOWED, DENIED]) as h:
        yield h


@dataclass
class Harness:
    """One run's proxy: its socket, what it reported, and every address it connected to."""

    proxy: EgressProxy
    socket_path: Path
    attempts: list[EgressAttempt] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)

    def wait_for_attempts(self, count: int, patience: float = 20) -> list[EgressAttempt]:
        """Attempts are reported when their connection is over, on the proxy's thread."""
        deadline = time.monotonic() + patience
        while len(self.attempts) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.attempts) == count, self.attempts
        return list(self.attempts)


@pytest.fixture
def open_proxy(hosts: EchoHosts, docker_client: Any) -> Iterator[Callable[..., Harness]]:
    names = {name: [host.address] for name, host in hosts.hosts.items()}
    names.update({"loop.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254"],
                  "mixed.test": [hosts.hosts[ALLOWED].address, "127.0.0.1"]})
    folder = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))
    opened: list[EgressProxy] = []

    def open_run(policy: EgressPolicy) -> Harness:
        harness: Harness

        async def recording_connect(address: str, port: int) -> Streams:
            harness.connects.append((address, port))
            return await asyncio.open_connection(address, port)

        def resolve(name: str) -> list[str]:
            return names.get(name, [])

        proxy = EgressProxy(resolve=resolve, connect=recording_connect)
        opened.append(proxy)
        harness = Harness(proxy, folder / "proxy.sock")
        proxy.open_run(7, policy, harness.socket_path, harness.attempts.append)
        return harness

    yield open_run
    for proxy in opened:
        proxy.close()
    shutil.rmtree(folder)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client speaking to the proxy over its Unix socket, as a client behind
    `HTTP_PROXY` does: the request line carries the absolute URL."""

    def __init__(self, path: Path) -> None:
        super().__init__("proxy", timeout=20)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(str(self.path))
        self.sock = sock


def http_get(harness: Harness, url: str, method: str = "GET", body: bytes | None = None,
             ) -> tuple[int, dict[str, str], bytes]:
    conn = UnixHTTPConnection(harness.socket_path)
    try:
        conn.request(method, url, body=body)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def connect_tunnel(harness: Harness, authority: str) -> tuple[socket.socket, int, bytes]:
    """CONNECT through the proxy: the socket, the answer's status and the whole head."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(harness.socket_path))
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        if not data:
            break
        head += data
    return sock, int(head.split(b" ", 2)[1]), head


def read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def https_get(harness: Harness, hosts: EchoHosts, name: str, path: str) -> bytes:
    sock, status, _ = connect_tunnel(harness, f"{name}:{HTTPS_PORT}")
    assert status == 200
    context = ssl.create_default_context(cafile=str(hosts.ca_file))  # verification on
    with context.wrap_socket(sock, server_hostname=name) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
                    .encode())
        return read_all(tls)


def test_an_allowed_host_is_reached_over_http_and_https_connect(
        open_proxy: Callable[..., Harness], hosts: EchoHosts) -> None:
    harness = open_proxy(EgressPolicy(NetworkMode.CUSTOM, (ALLOWED,)))
    allowed = hosts.hosts[ALLOWED]

    status, headers, body = http_get(harness, f"http://{ALLOWED}:{HTTP_PORT}/simple/?q=1")
    assert (status, body) == (200, f"{ALLOWED} GET /simple/?q=1 ".encode())
    assert headers["connection"] == "close"
    status, _, body = http_get(harness, f"http://{ALLOWED.upper()}.:{HTTP_PORT}/upload",
                               method="POST", body=b"a body, streamed")
    assert (status, body) == (200, f"{ALLOWED} POST /upload a body, streamed".encode())
    answer = https_get(harness, hosts, ALLOWED, "/over-tls")
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(
        f"{ALLOWED} GET /over-tls ".encode())

    attempts = harness.wait_for_attempts(3)
    assert [(a.method, a.host, a.port, a.allowed, a.reason, a.address, a.status)
            for a in attempts] == [
        ("GET", ALLOWED, HTTP_PORT, True, None, allowed.address, 200),
        ("POST", ALLOWED, HTTP_PORT, True, None, allowed.address, 200),
        ("CONNECT", ALLOWED, HTTPS_PORT, True, None, allowed.address, 200),
    ]
    assert all(a.bytes_sent > 0 and a.bytes_received > 0 for a in attempts)
    assert harness.connects == [(allowed.address, HTTP_PORT), (allowed.address, HTTP_PORT),
                                (allowed.address, HTTPS_PORT)]
    event = attempts[2].event()
    assert (event["type"], event["source"], event["host"], event["allowed"]) == (
        EGRESS_EVENT, "host", ALLOWED, True)


def test_a_denied_host_gets_403_naming_it_and_is_never_contacted(
        open_proxy: Callable[..., Harness], hosts: EchoHosts) -> None:
    harness = open_proxy(EgressPolicy(NetworkMode.CUSTOM, (ALLOWED,)))
    before = hosts.hosts[DENIED].requests_seen()

    status, headers, body = http_get(harness, f"http://{DENIED}:{HTTP_PORT}/")
    assert status == 403
    assert headers["x-deny-reason"] == "host_not_allowed"
    assert DENIED in body.decode() and "network=custom" in body.decode()
    sock, status, head = connect_tunnel(harness, f"{DENIED}:{HTTPS_PORT}")
    sock.close()
    assert status == 403 and b"x-deny-reason: host_not_allowed" in head

    attempts = harness.wait_for_attempts(2)
    assert [(a.method, a.host, a.allowed, a.reason, a.status) for a in attempts] == [
        ("GET", DENIED, False, DenyReason.HOST_NOT_ALLOWED, 403),
        ("CONNECT", DENIED, False, DenyReason.HOST_NOT_ALLOWED, 403),
    ]
    assert harness.connects == []
    assert hosts.hosts[DENIED].requests_seen() == before


def test_none_reaches_nothing(open_proxy: Callable[..., Harness], hosts: EchoHosts) -> None:
    harness = open_proxy(EgressPolicy(NetworkMode.NONE))
    status, headers, body = http_get(harness, f"http://{ALLOWED}:{HTTP_PORT}/")
    assert (status, headers["x-deny-reason"]) == (403, "host_not_allowed")
    assert f"{ALLOWED} is not allowed for this run (network=none)" in body.decode()
    sock, status, _ = connect_tunnel(harness, f"{ALLOWED}:{HTTPS_PORT}")
    sock.close()
    assert status == 403
    status, _, _ = http_get(harness, f"http://{hosts.hosts[ALLOWED].address}:{HTTP_PORT}/")
    assert status == 403

    attempts = harness.wait_for_attempts(3)
    assert all(not a.allowed and a.reason is DenyReason.HOST_NOT_ALLOWED for a in attempts)
    assert harness.connects == []


@pytest.fixture
def loopback_listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A listener of the test's own on 127.0.0.1: any connection it accepts is recorded."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_loopback_and_metadata_are_refused_even_under_full_before_any_connection(
        open_proxy: Callable[..., Harness], hosts: EchoHosts,
        loopback_listener: tuple[int, list[socket.socket]]) -> None:
    port, accepted = loopback_listener
    harness = open_proxy(EgressPolicy(NetworkMode.FULL))

    refused = [
        (f"http://127.0.0.1:{port}/", "127.0.0.1", AddressKind.LOOPBACK),
        (f"http://loop.test:{port}/", "127.0.0.1", AddressKind.LOOPBACK),
        (f"http://[::1]:{port}/", "::1", AddressKind.LOOPBACK),
        ("http://metadata.test/latest/meta-data/", "169.254.169.254", AddressKind.METADATA),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", AddressKind.METADATA),
        # one good address does not make a bad one acceptable
        (f"http://mixed.test:{HTTP_PORT}/", "127.0.0.1", AddressKind.LOOPBACK),
    ]
    for url, address, _ in refused:
        status, headers, body = http_get(harness, url)
        assert (status, headers["x-deny-reason"]) == (403, "address_not_allowed"), url
        assert address in body.decode()
    sock, status, head = connect_tunnel(harness, "metadata.test:443")
    sock.close()
    assert status == 403 and b"address_not_allowed" in head
    # `full` still reaches a test host at a private address: its name is allowed
    status, _, body = http_get(harness, f"http://{ALLOWED}:{HTTP_PORT}/full")
    assert (status, body) == (200, f"{ALLOWED} GET /full ".encode())

    attempts = harness.wait_for_attempts(len(refused) + 2)
    assert [(a.allowed, a.reason, a.address, a.address_kind) for a in attempts[:-2]] == [
        (False, DenyReason.ADDRESS_NOT_ALLOWED, address, kind) for _, address, kind in refused]
    assert attempts[-2].address_kind is AddressKind.METADATA and attempts[-1].allowed
    assert harness.connects == [(hosts.hosts[ALLOWED].address, HTTP_PORT)]
    assert accepted == []


def test_requests_it_cannot_read_are_refused_and_reported(
        open_proxy: Callable[..., Harness]) -> None:
    harness = open_proxy(EgressPolicy(NetworkMode.FULL))
    status, headers, _ = http_get(harness, "https://pypi.org/simple/")
    assert (status, headers["x-deny-reason"]) == (400, "bad_request")
    sock, status, _ = connect_tunnel(harness, "no-port.test")
    sock.close()
    assert status == 400
    attempts = harness.wait_for_attempts(2)
    assert [(a.allowed, a.reason) for a in attempts] == [(False, DenyReason.BAD_REQUEST)] * 2
    assert harness.connects == []


def test_closing_the_run_ends_its_tunnels_and_removes_the_socket(
        open_proxy: Callable[..., Harness]) -> None:
    harness = open_proxy(EgressPolicy(NetworkMode.CUSTOM, (ALLOWED,)))
    assert harness.socket_path.stat().st_mode & 0o777 == 0o666  # uid 10001 must connect
    sock, status, _ = connect_tunnel(harness, f"{ALLOWED}:{HTTP_PORT}")
    assert status == 200
    harness.proxy.close_run(7)
    assert read_all(sock) == b""  # the tunnel was ended by the proxy
    sock.close()
    [attempt] = harness.wait_for_attempts(1)
    assert (attempt.allowed, attempt.status, attempt.error) == (True, 200, "closed: the run ended")
    assert not harness.socket_path.exists()


_INSIDE = r"""
import json, socket
out = {}
try:
    socket.create_connection((ADDRESS, 8080), timeout=3).close()
    out["direct"] = "connected"
except OSError as exc:
    out["direct"] = type(exc).__name__
try:
    socket.getaddrinfo("allowed.test", 8080)
    out["dns"] = "resolved"
except OSError as exc:
    out["dns"] = type(exc).__name__
for name in ("allowed.test", "denied.test"):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/routines/proxy.sock")
    s.sendall(f"GET http://{name}:8080/inside HTTP/1.1\r\nHost: {name}:8080\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    out[name] = data.decode().split("\r\n")[0] + " | " + data.decode().rsplit("\r\n", 1)[-1]
print(json.dumps(out))
"""


def test_a_container_without_a_network_reaches_only_what_the_proxy_allows(
        open_proxy: Callable[..., Harness], hosts: EchoHosts, docker_client: Any) -> None:
    """The shape of a run: `--network none` (no route, no DNS), the proxy's socket mounted
    at /run/routines and used by the sandbox's uid 10001."""
    harness = open_proxy(EgressPolicy(NetworkMode.CUSTOM, (ALLOWED,)))
    harness.socket_path.parent.chmod(0o755)
    script = _INSIDE.replace("ADDRESS", repr(hosts.hosts[ALLOWED].address))
    container = docker_client.containers.run(
        SANDBOX_IMAGE, entrypoint=["/opt/agent/bin/python", "-c", script], detach=True,
        network_mode="none", user="10001:10001", cap_drop=["ALL"],
        volumes={str(harness.socket_path.parent): {"bind": "/run/routines", "mode": "rw"}},
        labels={"org.routines.test": "egress"})
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()
        seen = json.loads(container.logs(stderr=False).decode().strip().splitlines()[-1])
    finally:
        container.remove(force=True)
    assert seen["direct"] != "connected" and seen["dns"] != "resolved"
    assert seen[ALLOWED] == f"HTTP/1.0 200 OK | {ALLOWED} GET /inside "
    assert seen[DENIED].startswith("HTTP/1.1 403 Forbidden | routines egress policy: "
                                   f"{DENIED} is not allowed")
    attempts = harness.wait_for_attempts(2)
    assert [(a.host, a.allowed) for a in attempts] == [(ALLOWED, True), (DENIED, False)]


def test_reopening_a_run_replaces_its_server_and_a_stale_socket(
        open_proxy: Callable[..., Harness]) -> None:
    """After a restart the sandbox opens the proxy again at the same path, where the last
    process left its socket file; the policy in force is the new one."""
    harness = open_proxy(EgressPolicy(NetworkMode.CUSTOM, (ALLOWED,)))
    harness.proxy.open_run(7, EgressPolicy(NetworkMode.NONE), harness.socket_path,
                           harness.attempts.append)
    status, _, _ = http_get(harness, f"http://{ALLOWED}:{HTTP_PORT}/")
    assert status == 403
    [attempt] = harness.wait_for_attempts(1)
    assert attempt.reason is DenyReason.HOST_NOT_ALLOWED
