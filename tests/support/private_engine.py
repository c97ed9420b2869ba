"""A Docker engine of the test's own, to restart mid-run without touching the shared one.

It is a second `dockerd` on this host with its own socket, data root, exec root and pid
file, no bridge and no iptables rules (runs have no network), and the same runtimes as
the shared engine (runsc registered under its usual name). The sandbox image is copied in
from the shared engine with `docker save | docker load`.
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


class PrivateEngine:
    """One `dockerd` that can be stopped and started again on the same state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self._log = root / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        assert dockerd is not None, "dockerd is not installed (.ci/docker-up.sh installs it)"
        command = [dockerd, "--host", self.url, "--data-root", str(self.root / "data"),
                   "--exec-root", str(self.root / "exec"), "--pidfile",
                   str(self.root / "docker.pid"), "--bridge=none", "--iptables=false",
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
    engine = PrivateEngine(root)
    try:
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
