"""A run's disk limit, on real containers: a run that writes past it ends failed with the
limit named, the host's free space falls by no more than the limit, and nothing of the
run's filesystem outlives it (nor a workspace left behind by a bot that stopped).

"The host's disk" here is a tmpfs of the test's own holding the workspace root: its free
space moves only with what this test does, where the machine's disk is shared with
whatever else runs on it. The mechanism is the same on any filesystem."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.statuses import FailureKind, RunStatus
from bot.core.trigger import manual
from bot.core.verdict import decide_outcome
from runner.contract import Event
from runner.host import workspace
from runner.host.following import RunControl
from runner.host.log_lines import MAX_LINE_BYTES
from runner.host.sandbox import Sandbox
from tests.standins.anthropic_api import AnthropicStandIn, report, text, tool
from tests.standins.environment import LOCAL_REPOS
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, SANDBOX_IMAGE, BotFactory
from tests.support.run_specs import spec
from tests.support.sandbox_runs import make_sandbox
from tests.support.slack_flows import create_routine, run_and_wait

pytestmark = pytest.mark.docker

LIMIT = 64 * 1024**2
# Writes a gigabyte, sixteen times the limit, then says how it went and what df sees.
FILL = "head -c 1G /dev/zero > big.bin; echo exit=$?; df -k /workspace | tail -1"


@pytest.fixture
def host_disk(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "host-disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, other than `path` itself."""
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [p for p in points if p.startswith(f"{path}/")]


def loop_files_under(path: Path) -> list[str]:
    """Files under `path` that back a loop device."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with open(backing) as file:
            name = file.read().strip()
        if name.startswith(f"{path}/"):
            found.append(name)
    return found


def limited(sandbox: Sandbox, limit: int) -> Sandbox:
    return Sandbox(sandbox.client, dataclasses.replace(sandbox.config, disk_limit=limit))


async def test_a_run_writing_past_its_disk_limit_fails_and_the_host_keeps_its_space(
    docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str, host_disk: Path,
) -> None:
    marker = anthropic_api.script("fill", [tool("run_shell", command=FILL)],
                                  [report("success", "wrote a gigabyte")])
    root = host_disk / "workspaces"
    sandbox = limited(make_sandbox(docker_client, anthropic_api, root, SANDBOX_IMAGE), LIMIT)
    events: list[Event] = []
    free_while_blocked: list[int] = []

    def on_event(_seq: int, event: Event) -> None:
        events.append(event)
        if event.get("type") == "tool_output":
            # The writes are done and the run goes on: its filesystem is still there.
            free_while_blocked.append(free_bytes(host_disk))

    free_before = free_bytes(host_disk)
    result = await asyncio.to_thread(sandbox.execute, spec(41, f"Fill. {marker}", git_repo),
                                     on_event, lambda _id: None, RunControl())

    (output,) = [e["output"] for e in events if e.get("type") == "tool_output"]
    assert "No space left on device" in output and "exit=1" in output
    assert result.disk_limit_reached == LIMIT
    outcome = decide_outcome(result, timeout_seconds=60)
    assert (outcome.status, outcome.reason, outcome.failure, outcome.summary) == (
        RunStatus.FAILED, "disk limit of 64 MiB reached", FailureKind.DISK_LIMIT,
        "wrote a gigabyte")
    # The host's free space fell while the run held its data, by no more than the limit.
    fallen = free_before - free_while_blocked[0]
    assert LIMIT // 2 < fallen <= LIMIT
    # Afterwards nothing is left: no mount, no loop device, no file; the space is back.
    assert list(root.iterdir()) == []
    assert mounts_under(host_disk) == []
    assert loop_files_under(host_disk) == []
    assert free_bytes(host_disk) == free_before


async def test_a_run_within_its_limit_succeeds_and_its_work_is_read_back(
    docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str, host_disk: Path,
) -> None:
    marker = anthropic_api.script(
        "roomy", [tool("run_shell", command="head -c 8M /dev/zero > blob.bin; echo ok > ok.txt;"
                                            " df -k /workspace | tail -1")],
        [report("success", "fits")])
    root = host_disk / "workspaces"
    sandbox = limited(make_sandbox(docker_client, anthropic_api, root, SANDBOX_IMAGE), LIMIT)
    events: list[Event] = []
    log_configs: list[dict[str, Any]] = []

    def on_started(container_id: str) -> None:
        attrs = docker_client.api.inspect_container(container_id)
        log_configs.append(attrs["HostConfig"]["LogConfig"])

    result = await asyncio.to_thread(sandbox.execute, spec(42, f"Fit. {marker}", git_repo),
                                     lambda _seq, e: events.append(e), on_started,
                                     RunControl())

    assert result.disk_limit_reached is None
    assert decide_outcome(result, timeout_seconds=60).status is RunStatus.SUCCEEDED
    assert "+ok" in result.diff and "blob.bin" in result.diff
    # What the agent's df sees is the run's own filesystem: at most the limit in size.
    (output,) = [e["output"] for e in events if e.get("type") == "tool_output"]
    size_kib = int(output.splitlines()[-1].split()[1])  # df's line: device, size, ...
    assert 0 < size_kib * 1024 <= LIMIT
    assert list(root.iterdir()) == [] and mounts_under(host_disk) == []
    # Its log is bounded too: docker rotates it, two files of 32 MiB at most.
    assert log_configs == [{"Type": "json-file",
                            "Config": {"max-size": "32m", "max-file": "2"}}]


async def test_a_line_longer_than_the_cap_reaches_the_host_cut(
    docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str, tmp_path: Path,
) -> None:
    # The model answers 3 MiB of text, and reports in the same turn: the agent's
    # assistant_text event is one line of more than 3 MiB on its stdout.
    marker = anthropic_api.script(
        "long-line", [text("x" * 3 * 1024**2), report("success", "said a lot")])
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)
    events: list[Event] = []

    result = await asyncio.to_thread(sandbox.execute, spec(43, f"Print. {marker}", git_repo),
                                     lambda _seq, e: events.append(e), lambda _id: None,
                                     RunControl())

    (cut,) = [e for e in events if e.get("type") == "output"]
    assert cut["text"].startswith('{"type": "assistant_text"')
    assert " [... " in cut["text"], (len(cut["text"]), cut["text"][-200:])
    kept, marker = cut["text"].rsplit(" [... ", 1)
    assert len(kept.encode()) == MAX_LINE_BYTES
    dropped = re.fullmatch(r"(\d+) more bytes dropped\]", marker)
    assert dropped is not None and int(dropped.group(1)) > 2 * 1024**2
    assert not [e for e in events if e.get("type") == "assistant_text"]  # it was that line
    # The lines after it are whole: the run went on and its report counts.
    assert decide_outcome(result, timeout_seconds=60).status is RunStatus.SUCCEEDED


async def test_the_bot_fails_the_run_naming_the_limit(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, host_disk: Path,
) -> None:
    marker = anthropic_api.script("bot-fill", [tool("run_shell", command=FILL)],
                                  [report("success", "wrote a gigabyte")])
    bot, fake = await start_bot(run_disk_limit=LIMIT, data_dir=host_disk / "data")
    await create_routine(fake, slack_api, "filler", f"Fill the disk. {marker}", git_repo)

    message = await run_and_wait(fake, slack_api, "filler", "failed")

    assert "disk limit of 64 MiB reached" in json.dumps(message["blocks"])
    run = bot.services.runs.get(int(message["run_id"])).run
    assert (run.status, run.failure_kind, run.reason) == (
        RunStatus.FAILED, FailureKind.DISK_LIMIT, "disk limit of 64 MiB reached")
    assert list(bot.sandbox.config.workspace_root.iterdir()) == []
    assert mounts_under(host_disk) == [] and loop_files_under(host_disk) == []


async def test_a_workspace_left_by_a_stopped_bot_is_removed_on_start(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str, host_disk: Path,
) -> None:
    first, fake = await start_bot(run_disk_limit=LIMIT, data_dir=host_disk / "data")
    await create_routine(fake, slack_api, "orphan", "Anything.", git_repo)
    await first.stop()
    # A crash between preparing the run's workspace and starting its container.
    first.services.triggers.trigger("orphan", manual("U0ALICE01"))
    claimed = first.services.runs.claim_next()
    assert claimed is not None and claimed.run.id is not None
    root = first.sandbox.config.workspace_root
    workspace.prepare(root, claimed.run.id, git_repo, "main", None, policy=LOCAL_REPOS,
                      disk_limit=LIMIT)
    assert workspace.leftover_runs(root) == [claimed.run.id]
    assert len(mounts_under(host_disk)) == 1

    await start_bot(run_disk_limit=LIMIT, data_dir=host_disk / "data")

    await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                             contains=f"run #{claimed.run.id}: failed", timeout=10)
    assert list(root.iterdir()) == []
    assert mounts_under(host_disk) == [] and loop_files_under(host_disk) == []
