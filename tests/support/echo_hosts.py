"""Test hosts of the tests' own: containers on a docker network the test creates, each
serving plain HTTP (8080) and HTTPS (8443, a self-signed certificate made here with the
`openssl` CLI) and answering every request with its own name, the method, the path and
the body it received. Nothing outside the test's network is ever contacted."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.bots import SANDBOX_IMAGE

HTTP_PORT, HTTPS_PORT = 8080, 8443

_SERVER = r"""
import http.server, os, ssl, threading
NAME = os.environ["HOST_NAME"]
open("/tmp/cert.pem", "w").write(os.environ["CERT"])
open("/tmp/key.pem", "w").write(os.environ["KEY"])

class Echo(http.server.BaseHTTPRequestHandler):
    def answer(self):
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size) if size else b""
        text = f"{NAME} {self.command} {self.path} {body.decode()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
    do_GET = do_POST = answer
    def log_message(self, fmt, *args):
        print("REQUEST", fmt % args, flush=True)

plain = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Echo)
tls = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Echo)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain("/tmp/cert.pem", "/tmp/key.pem")
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=tls.serve_forever, daemon=True).start()
print("READY", flush=True)
plain.serve_forever()
"""


@dataclass(frozen=True)
class EchoHost:
    name: str  # the name the proxy's resolver maps to `address`
    address: str
    container: Any

    def requests_seen(self) -> list[str]:
        """What the server logged: one `REQUEST` line per request it answered."""
        logs = self.container.logs().decode()
        return [line for line in logs.splitlines() if line.startswith("REQUEST")]


@dataclass(frozen=True)
class EchoHosts:
    hosts: dict[str, EchoHost]
    ca_file: Path  # the self-signed certificate, valid for every test host's name


def make_certificate(folder: Path, names: list[str]) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={names[0]}",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    return cert, key


@contextmanager
def echo_hosts(client: Any, folder: Path, names: list[str]) -> Iterator[EchoHosts]:
    """Start one container per name on a fresh network; remove them all afterwards."""
    cert, key = make_certificate(folder, names)
    tag = uuid.uuid4().hex[:8]
    network = client.networks.create(f"routines-egress-test-{tag}", driver="bridge",
                                      labels={"org.routines.test": "egress"})
    started: list[Any] = []
    try:
        hosts: dict[str, EchoHost] = {}
        for name in names:
            container = client.containers.run(
                SANDBOX_IMAGE, entrypoint=["/opt/agent/bin/python", "-c", _SERVER],
                name=f"routines-egress-{name.split('.')[0]}-{tag}", detach=True,
                network=network.name, read_only=False, working_dir="/tmp",
                environment={"HOST_NAME": name, "CERT": cert.read_text(),
                             "KEY": key.read_text()},
                labels={"org.routines.test": "egress"})
            started.append(container)
            container.reload()
            address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
            hosts[name] = EchoHost(name, address, container)
        for host in hosts.values():
            _wait_until_serving(host)
        yield EchoHosts(hosts, cert)
    finally:
        for container in started:
            container.remove(force=True)
        network.remove()


def _wait_until_serving(host: EchoHost, patience: float = 60) -> None:
    """Until both ports accept connections (the host reaches the bridge directly)."""
    deadline = time.monotonic() + patience
    for port in (HTTP_PORT, HTTPS_PORT):
        while True:
            try:
                socket.create_connection((host.address, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"test host {host.name} never served on {port}: "
                                       f"{host.container.logs().decode()[-500:]}") from None
                time.sleep(0.1)
