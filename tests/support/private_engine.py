"""A Docker engine of the test's own, to restart mid-run without touching the shared one.

It is a second `dockerd` on this host with its own socket, data root, exec root, pid file
and bridge, and no iptables rules (runs have no network), with the same runtimes as the
shared engine (runsc registered under its usual name). The sandbox image is copied in from
the shared engine with `docker save | docker load`.

Its own bridge, not `--bridge=none`: an engine started with no bridge deletes the host's
`docker0`, which the shared engine's containers and builds need.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import docker

START_PATIENCE = 60.0
# The private bridge's address: a private range of its own, no route beyond the host.
BRIDGE_ADDRESS = "10.213.77.1/24"


class PrivateEngine:
    """One `dockerd` that can be stopped and started again on the same state."""

    def __init__(self, root: Path, bridge: str) -> None:
        self.root, self.bridge = root, bridge
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self._log = root / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        assert dockerd is not None, "dockerd is not installed (.ci/docker-up.sh installs it)"
        command = [dockerd, "--host", self.url, "--data-root", str(self.root / "data"),
                   "--exec-root", str(self.root / "exec"), "--pidfile",
                   str(self.root / "docker.pid"), f"--bridge={self.bridge}", "--iptables=false",
                   "--ip-masq=false", "--shutdown-timeout=2"]
        runsc = shutil.which("runsc")
        if runsc is not None:
            command.append(f"--add-runtime=runsc={runsc}")
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(  # our own argv, no shell
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_PATIENCE
        while time.monotonic() < deadline:
            assert self._process.poll() is None, self.tail()
            with suppress(docker.errors.DockerException), self.client() as client:
                client.ping()
                return
            time.sleep(0.2)
        raise AssertionError(f"the private engine did not answer in time:\n{self.tail()}")

    def stop(self) -> None:
        """As `systemctl stop docker` does: SIGTERM, and the engine stops its containers."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextmanager
    def client(self) -> Iterator[docker.DockerClient]:
        client = docker.DockerClient(base_url=self.url, timeout=30)
        try:
            yield client
        finally:
            client.close()

    def load(self, image: str) -> None:
        """Copy `image` from the shared engine."""
        save = subprocess.Popen(["docker", "save", image],
                                stdout=subprocess.PIPE)
        loaded = subprocess.run(["docker", "-H", self.url, "load"],
                                stdin=save.stdout, capture_output=True, check=False)
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0 and loaded.returncode == 0, loaded.stderr.decode()

    def tail(self, lines: int = 30) -> str:
        text = self._log.read_text(errors="replace") if self._log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def private_engine(image: str) -> Iterator[PrivateEngine]:
    """A started private engine holding `image`; stopped, its state removed, at the end."""
    root = Path(tempfile.mkdtemp(prefix="routines-engine-"))
    bridge = f"rt{root.name[-8:]}"  # an interface name has 15 characters at most
    _ip("link", "add", bridge, "type", "bridge")
    engine = PrivateEngine(root, bridge)
    try:
        _ip("addr", "add", BRIDGE_ADDRESS, "dev", bridge)
        _ip("link", "set", bridge, "up")
        engine.start()
        engine.load(image)
        yield engine
    finally:
        with suppress(Exception), engine.client() as client:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        engine.stop()
        subprocess.run(["umount", "-R", str(root / "data")],
                       capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        _ip("link", "delete", bridge)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"
