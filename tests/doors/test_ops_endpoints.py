"""`/metrics` and `/readyz` over real HTTP: metrics counted from real runs in real
containers, parsed with prometheus_client's own parser; readiness against a real engine,
and against dependencies that refuse or hang."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import Bot
from bot.doors.http.ops import Readiness, add_ops_routes
from bot.services.metrics import DURATION_BUCKETS, build_registry
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import KillSwitch, utcnow
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_flows import create_routine, run_and_wait, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape(bot: Bot) -> Samples:
    status, content_type, text = await get(f"http://127.0.0.1:{bot.port}/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, text)
    return parse(text)


@pytest.mark.docker
@pytest.mark.postgres
async def test_metrics_count_real_runs(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, docker_client: Any,
) -> None:
    fine = anthropic_api.script("m-fine", [report("success", "fine")])
    broken = anthropic_api.script("m-broken", [report("failure", "broken")])
    slow = anthropic_api.script("m-slow", [tool("run_shell", command="sleep 300")])
    bot, fake = await start_bot(max_concurrent_runs=1)
    await create_routine(fake, slack_api, "fast", f"Go. {fine}", git_repo)
    await create_routine(fake, slack_api, "broken", f"Go. {broken}", git_repo)
    await create_routine(fake, slack_api, "slow", f"Wait. {slow}", git_repo, timeout="600")
    empty = await scrape(bot)
    assert value(empty, "routines_queue_depth") == 0
    assert value(empty, "routines_running_containers") == 0
    assert value(empty, "routines_docker_up") == 1
    assert value(empty, "routines_routines", state="active") == 3

    await run_and_wait(fake, slack_api, "fast", "succeeded")
    await run_and_wait(fake, slack_api, "broken", "failed")
    slow_id = (await fake.slash("run slow")).json()["text"].split("#")[1].split(" ")[0]
    await wait_until(lambda: len(anthropic_api.requests_for("m-slow")) >= 1)
    queued_id = (await fake.slash("run fast")).json()["text"].split("#")[1].split(" ")[0]

    # One container busy (the only slot), one run waiting for it.
    busy = await scrape(bot)
    assert value(busy, "routines_running_containers") == 1
    assert value(busy, "routines_queue_depth") == 1
    assert value(busy, "routines_runs_pending", routine="slow", status="running") == 1
    assert value(busy, "routines_runs_pending", routine="fast", status="queued") == 1
    assert value(busy, "routines_runs_total", routine="fast", status="succeeded") == 1
    assert value(busy, "routines_runs_total", routine="broken", status="failed") == 1

    # End the slow run from outside (its container killed), so the queued one runs.
    [container] = docker_client.containers.list(filters={"label": [
        f"org.routines.run_id={slow_id}", f"org.routines.instance={bot.settings.instance}"]})
    container.kill()
    for run_id in (slow_id, queued_id):
        await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                 contains=f"run #{run_id}: ", timeout=90)
    await wait_until(lambda: not bot.dispatcher.active_runs)

    done = await scrape(bot)
    slow_status = bot.services.runs.get(int(slow_id)).run.status
    assert value(done, "routines_runs_total", routine="fast", status="succeeded") == 2
    assert value(done, "routines_runs_total", routine="slow", status=slow_status) == 1
    assert value(done, "routines_runs_pending", routine="slow", status="running") is None
    assert value(done, "routines_queue_depth") == 0
    assert value(done, "routines_running_containers") == 0
    for routine, count in (("fast", 2), ("broken", 1), ("slow", 1)):
        views = bot.services.routines.history(routine)
        durations = [v.duration_seconds or 0.0 for v in views]
        assert value(done, "routines_run_duration_seconds_count", routine=routine) == count
        total = value(done, "routines_run_duration_seconds_sum", routine=routine)
        assert total == pytest.approx(sum(durations), abs=0.01 * count)
        for bound in DURATION_BUCKETS:  # each bucket holds what the database says
            got = value(done, "routines_run_duration_seconds_bucket", routine=routine,
                        le=str(bound))
            assert got == sum(1 for d in durations if d <= bound)
        assert value(done, "routines_run_duration_seconds_bucket", routine=routine,
                     le="+Inf") == count
        for kind in ("input", "output"):
            used = sum(getattr(v.run, f"{kind}_tokens") for v in views)
            assert value(done, "routines_tokens_total", routine=routine, type=kind) == used
    assert value(done, "routines_tokens_total", routine="fast", type="input") == 200
    assert value(done, "routines_kill_switch_engaged") == 0

    with bot.db.session() as session:  # engaged by another process: the database is the truth
        session.add(KillSwitch(id=1, engaged=True, reason="incident", changed_by="U1",
                               changed_at=utcnow()))
    await fake.slash("pause broken")
    later = await scrape(bot)
    assert value(later, "routines_kill_switch_engaged") == 1
    assert value(later, "routines_routines", state="paused") == 1


@pytest.mark.docker
@pytest.mark.postgres
async def test_readyz_says_ready_when_database_and_engine_answer(start_bot: BotFactory) -> None:
    bot, _ = await start_bot()

    status, _, text = await get(f"http://127.0.0.1:{bot.port}/readyz")

    assert status == 200
    assert json.loads(text) == {
        "ready": True, "checks": {"database": {"ok": True}, "docker": {"ok": True}}}


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_ops(db: Database, docker_client: Any, timeout: float = 5.0) -> AsyncIterator[str]:
    app = web.Application()
    add_ops_routes(app, Readiness(db, docker_client, timeout), build_registry(
        db, lambda: len(docker_client.containers.list(sparse=True))))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        docker_client.close()
        db.close()


async def test_readyz_and_metrics_say_what_is_down(tmp_path: Path, closed_port: int) -> None:
    db = Database(f"sqlite:///{tmp_path / 'missing-dir' / 'r.db'}")
    engine = docker.DockerClient(base_url=f"tcp://127.0.0.1:{closed_port}", version="1.41",
                                 timeout=5)
    async with serve_ops(db, engine) as url:
        status, _, text = await get(f"{url}/readyz")
        body = json.loads(text)
        assert status == 503 and body["ready"] is False
        assert body["checks"]["database"] == {
            "ok": False, "error": "the database did not answer SELECT 1"}
        assert body["checks"]["docker"]["ok"] is False
        assert "Connection refused" in body["checks"]["docker"]["error"]

        status, _, text = await get(f"{url}/metrics")
        assert status == 503 and "the database failed" in text


@pytest.mark.postgres
async def test_a_hanging_engine_is_not_ready(database_url: str, silent_port: int) -> None:
    db = Database(database_url)
    engine = docker.DockerClient(base_url=f"tcp://127.0.0.1:{silent_port}", version="1.41",
                                 timeout=2)
    async with serve_ops(db, engine, timeout=0.5) as url:
        status, _, text = await get(f"{url}/readyz")
        body = json.loads(text)
        assert status == 503
        assert body["checks"] == {"database": {"ok": True},
                                  "docker": {"ok": False, "error": "no answer within 0.5s"}}


@pytest.mark.postgres
def test_metrics_still_answer_when_the_engine_does_not(database_url: str,
                                                       closed_port: int) -> None:
    db = Database(database_url)
    schema.upgrade(db)
    engine = docker.DockerClient(base_url=f"tcp://127.0.0.1:{closed_port}", version="1.41",
                                 timeout=5)

    def count() -> int:
        return len(engine.containers.list(sparse=True))

    samples = parse(generate_latest(build_registry(db, count)).decode())

    assert value(samples, "routines_docker_up") == 0
    assert value(samples, "routines_running_containers") is None
    assert value(samples, "routines_queue_depth") == 0
    assert value(samples, "routines_kill_switch_engaged") == 0
    engine.close()
    db.close()
