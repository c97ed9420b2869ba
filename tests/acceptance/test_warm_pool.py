"""Warm containers (README "Warm pool", runner/host/pool.py): each is given exactly one run
and is gone after it; before that it holds nothing of any run; the pool empties at the
kill switch and refills after it; it is rebuilt when the image or the settings change; and
with no pool every run starts cold as before. Real engine, real agent, real stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from runner.contract import LABEL_POOL, LABEL_RUN_ID, Engine, Report
from runner.host.following import RunControl
from runner.host.pool import WarmPool, WarmSlot
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.environment import API_KEY
from tests.support.bots import CLAUDE_CODE_IMAGE, SANDBOX_IMAGE, BotFactory
from tests.support.run_specs import spec
from tests.support.sandbox_runs import make_sandbox
from tests.support.slack_flows import wait_until

pytestmark = pytest.mark.docker

ADMIN = "U0ADMIN01"
# What a warm container's own shell sees of its mounts before it has a run.
LIST_MOUNTS = ["find", "/workspace", "/run/routines", "/run/routines-run", "-mindepth", "1"]


def warm_containers(client: Any, instance: str) -> list[Any]:
    """The instance's warm containers not given a run."""
    return [c for c in client.containers.list(all=True, filters={"label": [
        f"org.routines.instance={instance}", LABEL_POOL]}) if "-warm-" in c.name]


def wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


async def test_a_warm_container_holds_no_token_workspace_or_secret_before_its_run(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn,
) -> None:
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE,
                           warm_pool=1)
    [container] = warm_containers(docker_client, sandbox.config.instance)
    container.reload()
    env = container.attrs["Config"]["Env"]
    assert not [v for v in env if v.startswith(("ANTHROPIC_API_KEY=", "ROUTINE_RUN_SPEC="))]
    assert not [v for v in env if API_KEY in v]
    assert LABEL_RUN_ID not in container.labels
    # Locked down as a cold run's container is.
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"]
    assert host["ReadonlyRootfs"] and "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] > 0 and host["PidsLimit"] > 0
    # Its mounts are empty, on the host and from inside (the agent's own marker aside).
    mounts = {m["Destination"]: Path(m["Source"]) for m in container.attrs["Mounts"]}
    assert set(mounts) == {"/workspace", "/run/routines", "/run/routines-run"}
    wait_for(lambda: (mounts["/run/routines-run"] / ".loaded").exists())
    assert list(mounts["/workspace"].iterdir()) == []
    assert list(mounts["/run/routines"].iterdir()) == []
    assert [p.name for p in mounts["/run/routines-run"].iterdir()] == [".loaded"]
    _, (listed, _) = container.exec_run(LIST_MOUNTS, demux=True)
    assert listed.decode().split() == ["/run/routines-run/.loaded"]


async def test_a_warm_container_takes_exactly_one_run_and_is_gone_after_it(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE,
                           warm_pool=1)
    assert sandbox.pool is not None
    given: list[str] = []
    for run_id in (61, 62):
        wait_for(lambda: sandbox.pool is not None and sandbox.pool.loaded() == 1)
        [warm] = warm_containers(docker_client, sandbox.config.instance)
        marker = anthropic_api.script(f"one-{run_id}", [report("success", "done")])
        started: list[str] = []
        result = await asyncio.to_thread(
            sandbox.execute, spec(run_id, f"Go. {marker}", git_repo), lambda _s, _e: None,
            started.append, RunControl())
        assert result.report == Report("success", "done")
        assert started == [warm.id]  # the run was given the warm container
        given.append(warm.id)
        with pytest.raises(docker.errors.NotFound):  # destroyed after its one run
            docker_client.containers.get(warm.id)
    assert len(set(given)) == 2
    assert not list(sandbox.config.workspace_root.glob("run-*"))


def test_two_takes_at_once_never_get_the_same_warm_container(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn,
) -> None:
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE,
                           warm_pool=2)
    pool = sandbox.pool
    assert pool is not None
    taken: list[WarmSlot | None] = []
    gate = threading.Barrier(3)

    def take() -> None:
        gate.wait()
        taken.append(pool.take("builtin"))

    threads = [threading.Thread(target=take) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots = [slot for slot in taken if slot is not None]
    try:
        assert len(slots) == 2 and taken.count(None) == 1  # two waited: two given, once
        assert slots[0].container.id != slots[1].container.id
        assert pool.take("claude-code") is None  # the pool is the default engine's
    finally:
        for slot in slots:
            pool.discard(slot)


async def test_the_kill_switch_drains_the_pool_and_disengaging_refills_it(
    start_bot: BotFactory, docker_client: Any,
) -> None:
    bot, _ = await start_bot(warm_pool=1, admins=(ADMIN,), claude_code_image="")
    instance = bot.settings.instance
    await wait_until(lambda: len(warm_containers(docker_client, instance)) == 1, timeout=60)

    await asyncio.to_thread(bot.services.kill_switch.engage, ADMIN, "incident")
    await wait_until(lambda: warm_containers(docker_client, instance) == [], timeout=30)
    assert bot.sandbox.pool is not None and bot.sandbox.pool.take("builtin") is None
    await asyncio.sleep(3)  # a refill round later: still empty while engaged
    assert warm_containers(docker_client, instance) == []

    await asyncio.to_thread(bot.services.kill_switch.disengage, ADMIN)
    await wait_until(lambda: len(warm_containers(docker_client, instance)) == 1, timeout=60)


@pytest.fixture
def own_image(docker_client: Any) -> Iterator[str]:
    """A tag of the test's own for the sandbox image, so that it can be replaced."""
    tag = f"routines-sandbox:warm-test-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(SANDBOX_IMAGE).tag(tag)
    original = docker_client.images.get(SANDBOX_IMAGE).id
    yield tag
    last = docker_client.images.get(tag).id
    docker_client.images.remove(tag)
    if last != original:  # the test's own build
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(last, force=True)


def test_a_replaced_image_rebuilds_the_pool(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, own_image: str,
) -> None:
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", own_image,
                           warm_pool=1)
    instance = sandbox.config.instance
    try:
        [old] = warm_containers(docker_client, instance)
        docker_client.images.build(fileobj=io.BytesIO(
            f"FROM {own_image}\nLABEL org.routines.test={uuid.uuid4().hex}\n".encode()),
            tag=own_image)

        def rebuilt() -> bool:
            found = warm_containers(docker_client, instance)
            return len(found) == 1 and found[0].id != old.id
        wait_for(rebuilt)
        [new] = warm_containers(docker_client, instance)
        assert new.labels[LABEL_POOL] != old.labels[LABEL_POOL]
        assert new.image.id == docker_client.images.get(own_image).id
    finally:
        sandbox.close()  # before the image goes


def test_changed_settings_remove_the_old_pool_at_start(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn,
) -> None:
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE,
                           warm_pool=1)
    assert sandbox.pool is not None
    sandbox.pool.stop_refilling()  # the process dies: its warm container stays
    [old] = warm_containers(docker_client, sandbox.config.instance)
    changed = WarmPool(docker_client, replace(sandbox.config, memory="512m"), 1)
    changed.start()
    try:
        def rebuilt() -> bool:
            found = warm_containers(docker_client, sandbox.config.instance)
            return len(found) == 1 and found[0].id != old.id
        wait_for(rebuilt)
        [new] = warm_containers(docker_client, sandbox.config.instance)
        assert new.attrs["HostConfig"]["Memory"] == 512 * 1024**2
        assert new.labels[LABEL_POOL] != old.labels[LABEL_POOL]
        assert not (sandbox.config.workspace_root / f"warm-{old.name.rsplit('-', 1)[1]}").exists()
    finally:
        changed.close()


async def test_no_pool_starts_every_run_cold_as_before(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE,
                           warm_pool=0)
    assert sandbox.pool is None
    marker = anthropic_api.script("cold", [report("success", "done")])
    labels: list[dict[str, str]] = []

    def on_started(container_id: str) -> None:
        labels.append(docker_client.containers.get(container_id).labels)

    result = await asyncio.to_thread(
        sandbox.execute, spec(71, f"Go. {marker}", git_repo), lambda _s, _e: None,
        on_started, RunControl())
    assert result.report == Report("success", "done")
    assert labels[0][LABEL_RUN_ID] == "71" and LABEL_POOL not in labels[0]
    assert warm_containers(docker_client, sandbox.config.instance) == []


async def test_a_claude_code_run_is_given_a_warm_claude_code_container(
    tmp_path: Path, docker_client: Any, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE,
                           claude_code_image=CLAUDE_CODE_IMAGE, warm_pool=1)
    [builtin, claude] = sandbox.pools
    assert (builtin.engine, claude.engine) == (Engine.BUILTIN, Engine.CLAUDE_CODE)
    [warm] = [c for c in warm_containers(docker_client, sandbox.config.instance)
              if "-warm-claude-code-" in c.name]
    assert warm.image.id == docker_client.images.get(CLAUDE_CODE_IMAGE).id
    marker = anthropic_api.script(
        "cc-warm", [tool("StructuredOutput", outcome="success", summary="warm and done")])
    started: list[str] = []
    result = await asyncio.to_thread(
        sandbox.execute, spec(81, f"Go. {marker}", git_repo, engine=Engine.CLAUDE_CODE.value,
                              timeout_seconds=120),
        lambda _s, _e: None, started.append, RunControl())
    assert result.report == Report("success", "warm and done")
    assert started == [warm.id]
    assert builtin.loaded() == 1  # the default engine's warm container was not used
