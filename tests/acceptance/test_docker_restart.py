"""The Docker engine restarted in the middle of a run, on a private dockerd of this test's
own (its own socket, data and exec roots, no bridge, no iptables; the shared engine is
never touched): the run ends `error` with the reason, is retried under its routine's
retry policy, and the bot keeps serving."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from bot.core.statuses import FailureKind, RunStatus
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, SANDBOX_IMAGE, BotFactory
from tests.support.http_doors import call
from tests.support.slack_flows import create_routine, wait_until

pytestmark = [pytest.mark.docker]


class PrivateEngine:
    """A dockerd started and stopped by the test (the shared one is left alone)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None
        (root / "data").mkdir(parents=True)
        (root / "exec").mkdir()

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            pytest.fail("dockerd not found: the Docker engine restart test needs it")
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                [dockerd, "--host", self.url, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"),
                 "--pidfile", str(self.root / "docker.pid"), "--bridge=none",
                 "--iptables=false", "--ip6tables=false", "--shutdown-timeout=1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(docker.errors.DockerException):
                client = docker.DockerClient(base_url=self.url, timeout=5)
                client.ping()
                client.close()
                return
            assert time.monotonic() < deadline, "private dockerd did not start"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.process = None

    def load(self, image: str) -> None:
        """The shared engine's image, copied in (`docker save | docker load`)."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.url, "load", "-q"], stdin=save.stdout,
                       check=True, stdout=subprocess.DEVNULL)
        assert save.wait() == 0


@pytest.fixture
def private_engine(docker_client: Any) -> Iterator[PrivateEngine]:
    engine = PrivateEngine(Path(f"/tmp/routines-pd-{uuid.uuid4().hex[:8]}"))
    try:
        engine.start()
        engine.load(SANDBOX_IMAGE)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            client = docker.DockerClient(base_url=engine.url, timeout=10)
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.close()
        engine.stop()
        subprocess.run(["umount", "-R", str(engine.root / "data")], check=False,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(engine.root, ignore_errors=True)


async def test_the_engine_restarted_mid_run_ends_it_error_and_it_is_retried(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, private_engine: PrivateEngine,
) -> None:
    marker = anthropic_api.script(
        "restarted", [tool("run_shell", command="sleep 30")],
        [report("success", "Slept.")])
    bot, fake = await start_bot(docker_host=private_engine.url, min_retry_backoff_seconds=1)
    await create_routine(fake, slack_api, "restarted", f"Sleep. {marker}", git_repo)
    reply = await fake.slash("retries restarted 1 1")
    assert "up to 1 more" in reply.text, reply.text
    body = (await fake.slash("run restarted")).json()
    assert "queued" in body["text"], body
    run_id = int(str(body["text"]).split("#")[1].split(" ")[0])
    await wait_until(lambda: len(anthropic_api.requests_for("restarted")) >= 1, timeout=90)

    private_engine.stop()
    private_engine.start()

    first = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                     contains=f"run #{run_id}: ", timeout=90)
    assert first.params["text"] == (
        f"restarted run #{run_id}: error — retrying in 1s (attempt 2 of 2)")
    view = bot.services.runs.get(run_id)
    assert view.run.status == RunStatus.ERROR
    assert view.run.failure_kind == FailureKind.INFRASTRUCTURE
    assert view.run.reason is not None and "Docker engine went away" in view.run.reason
    # The retry runs on the engine that came back, to its end (the stand-in's script
    # continues: its report this time), and the bot served all along.
    retry = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                     contains=f"run #{run_id + 1}: ", timeout=120)
    assert retry.params["text"].startswith(f"restarted run #{run_id + 1}: ")
    status, _, _ = await call(bot, "GET", "/healthz")
    assert status == 200
    assert bot.services.runs.get(run_id + 1).run.retry_of == run_id
