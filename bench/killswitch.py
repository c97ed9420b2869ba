"""Kill switch: time from `/routine killswitch engage` to the last run container stopped.

What it measures, with N (default 20) routine runs whose agents are all running (each
is inside a long `run_shell`, so every container is busy, as in an incident):

* engage -> all stopped: from just before the signed `/routine killswitch engage` slash
  command is sent to the bot, until the Docker engine lists none of this bot's run
  containers as running. Covers the Slack request, the service recording the switch and
  holding the queue, the dispatcher killing every container, and the engine stopping
  them.
* bare `docker kill` of the same containers (the baseline): before that, in the same
  bot, N runs just as busy whose containers are killed by one `docker kill ID...`, timed
  the same way (until none is listed running): what the engine itself takes to stop these
  containers, locked down and followed by the bot as they are.
* bare `docker kill` of plain containers: N containers of the same image started with a
  plain `sleep` (no limits, no mounts, nobody following them), killed by one `docker kill
  ID...`, timed until it returns. The figure earlier versions of this bench compared with.

It prints the three and the ratios (the JSON's `ratio` is to the same containers).
Everything is local: the bot runs in-process on loopback, Slack and Anthropic are
stand-ins (on loopback: runs reach the Anthropic one through the host's model gateway),
the repository is a local git repo.

Run from the repository root, after `make images`:

    python bench/killswitch.py --containers 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import docker  # noqa: E402

from bench.report import print_json, readable_report  # noqa: E402
from bot.app import Bot  # noqa: E402
from runner.contract import LABEL_INSTANCE  # noqa: E402
from tests.standins.anthropic_api import AnthropicStandIn, tool  # noqa: E402
from tests.standins.environment import (  # noqa: E402
    API_KEY,
    SIGNING_SECRET,
    local_settings,
    make_git_repo,
)
from tests.standins.slack_api import SlackApiStandIn  # noqa: E402
from tests.support.slack_requests import FakeSlack, modal_values  # noqa: E402

DEFAULT_IMAGE = os.environ.get("ROUTINES_SANDBOX_IMAGE", "routines-sandbox:latest")
ADMIN = "U0ADMIN01"
CHANNEL = "C0RESULTS1"


def running(client: Any, instance: str) -> int:
    return len(client.containers.list(sparse=True, filters={
        "label": f"{LABEL_INSTANCE}={instance}", "status": "running"}))


async def wait_until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"killswitch bench: timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def start_runs(fake: FakeSlack, anthropic_api: AnthropicStandIn, client: Any,
                     instance: str, count: int, asked: int) -> list[str]:
    """`count` more runs until every agent is inside its `sleep`: their container ids."""
    for _ in range(count):
        await fake.slash("run bench-kill", user=ADMIN)
    await wait_until(lambda: len(anthropic_api.requests_for("bench-kill")) >= asked + count,
                     600, f"{count} agents to be running")
    await wait_until(lambda: running(client, instance) >= count, 60, "containers")
    return [c.id for c in client.containers.list(sparse=True, filters={
        "label": f"{LABEL_INSTANCE}={instance}", "status": "running"})]


async def bench_bot(count: int, image: str, tmp: Path, client: Any) -> tuple[float, float]:
    """Two rounds of `count` busy runs of one bot: first stopped by a bare `docker kill`
    of their very containers (the engine's own floor for them, their followers reacting
    as they would), then by `/routine killswitch engage`; each timed until the engine
    lists none of the bot's containers running."""
    slack_api = SlackApiStandIn()
    anthropic_api = AnthropicStandIn(API_KEY)
    await slack_api.start()
    await anthropic_api.start()
    marker = anthropic_api.script("bench-kill", [tool("run_shell", command="sleep 3600")])
    bot = Bot(local_settings(tmp, slack_api.url, anthropic_api.url, sandbox_image=image,
                             admins=(ADMIN,), max_concurrent_runs=count,
                             triggers_per_minute=count * 3))
    await bot.start()
    try:
        fake = FakeSlack(f"http://127.0.0.1:{bot.port}", SIGNING_SECRET)
        await fake.submit_view("routine_create", modal_values(
            name="bench-kill", prompt=f"Wait. {marker}", repo_url=make_git_repo(tmp / "repo"),
            branch="main", channel_id=CHANNEL, model="claude-test-1", timeout_seconds="3600"),
            user=ADMIN)
        instance = bot.settings.instance
        ids = await start_runs(fake, anthropic_api, client, instance, count, 0)
        started = time.monotonic()
        await asyncio.to_thread(subprocess.run, ["docker", "kill", *ids], check=True,
                                capture_output=True)
        await wait_until(lambda: running(client, instance) == 0, 120, "every container")
        same = time.monotonic() - started
        await wait_until(lambda: not bot.dispatcher.active_runs, 120, "every verdict")
        await start_runs(fake, anthropic_api, client, instance, count, count)
        started = time.monotonic()
        await fake.slash("killswitch engage benchmark", user=ADMIN)
        await wait_until(lambda: running(client, instance) == 0, 120, "every container")
        engage = time.monotonic() - started
        await wait_until(lambda: sum(": killed" in str(c.params.get("text"))
                                     for c in slack_api.calls_to("chat.postMessage")) >= count,
                         120, "every verdict")
        return same, engage
    finally:
        await bot.stop()
        await slack_api.stop()
        await anthropic_api.stop()


def bench_docker_kill(count: int, image: str, client: Any) -> float:
    containers = [client.containers.create(image, entrypoint=["sleep", "3600"],
                                           network_mode="none", labels={"org.routines": "bench"})
                  for _ in range(count)]
    try:
        for container in containers:
            container.start()
        started = time.monotonic()
        subprocess.run(["docker", "kill", *[c.id for c in containers]], check=True,
                       capture_output=True)
        return time.monotonic() - started
    finally:
        for container in containers:
            container.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    client = docker.from_env()
    with readable_report(args.json):
        with tempfile.TemporaryDirectory() as tmp:
            same, engage = asyncio.run(bench_bot(args.containers, args.image, Path(tmp),
                                                 client))
        plain = bench_docker_kill(args.containers, args.image, client)
        client.close()
        print(f"containers: {args.containers}")
        print(f"engage -> all stopped:                 {engage:.3f} s")
        print(f"bare docker kill of the bot's runs:    {same:.3f} s")
        print(f"bare docker kill of plain containers:  {plain:.3f} s")
        print(f"ratio to the same containers:          {engage / same:.2f}x")
        print(f"ratio to plain containers:             {engage / plain:.2f}x")
    if args.json:
        print_json("killswitch", {"engage_to_all_stopped_s": round(engage, 4)},
                   {"docker_kill_same_containers_s": round(same, 4),
                    "docker_kill_plain_containers_s": round(plain, 4)}, engage / same,
                   ratio_to_plain=round(engage / plain, 4), containers=args.containers,
                   cpu_count=os.cpu_count())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
