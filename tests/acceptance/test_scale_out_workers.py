"""Many processes, one database (docs/scale-out.md): real `routines serve` and `routines
worker` processes, each with a data directory of its own (as on hosts of their own), on
one PostgreSQL database and one Docker engine. Every run is executed once and announced
once, runs spread over the workers, a SIGKILLed worker's run fails when its lease lapses
(the worker named) while another worker's run goes on, and a routine's `max-concurrent`
holds across workers at every moment.

On SQLite several processes are refused by design (bot/store/one_process.py): the
multi-process tests skip there, saying so, and `test_a_worker_beside_serve_on_sqlite_is_
refused` checks that refusal instead."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func
from sqlmodel import col, select

from bot.core.statuses import FailureKind, RunStatus
from bot.settings import Settings
from bot.store.database import Database
from bot.store.tables import Routine, Run
from tests.standins.anthropic_api import AnthropicStandIn, Turn, report
from tests.standins.environment import make_git_repo
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL
from tests.support.served_bot import COMMAND, ROOT, ServedBot, environment, free_port
from tests.support.slack_flows import DAVE, wait_until
from tests.support.slack_requests import FakeSlack, modal_values

pytestmark = pytest.mark.docker

LEASE = 5  # seconds: ROUTINES_LEASE_SECONDS of every process here
Start = Callable[..., Awaitable[ServedBot]]


@pytest.fixture
async def cluster(settings: Settings, tmp_path: Path, docker_client: Any,
                  database_url: str) -> AsyncIterator[Start]:
    """Starts processes on the test's database, each its own data directory and worker
    name; every one is stopped, and what it left removed, at the end."""
    if database_url.startswith("sqlite"):
        pytest.skip("several processes share PostgreSQL only (set ROUTINES_TEST_POSTGRES); "
                    "on SQLite the second is refused, tested below")
    started: list[ServedBot] = []

    async def start(name: str, command: str = "worker", max_runs: int = 4,
                    **env: str) -> ServedBot:
        own = replace(settings, data_dir=tmp_path / name, admins=(DAVE,), warm_pool=0,
                      max_concurrent_runs=max_runs)
        bot = ServedBot(own, tmp_path, command, {
            "ROUTINES_WORKER_NAME": name, "ROUTINES_LEASE_SECONDS": str(LEASE),
            "ROUTINES_TRIGGERS_PER_MINUTE": "1000", **env})
        started.append(bot)
        await bot.start()
        return bot

    yield start
    await asyncio.gather(*(bot.stop() for bot in started))
    for bot in started:
        await asyncio.to_thread(bot.remove_leftovers, docker_client)


@pytest.mark.postgres
async def test_forty_runs_over_four_processes_run_and_are_announced_once_each(
        cluster: Start, anthropic_api: AnthropicStandIn, slack_api: SlackApiStandIn,
        database_url: str, tmp_path: Path) -> None:
    marker = anthropic_api.script("many", [report("success", "Done.")])
    serve_a = await cluster("a", "serve")
    serve_b = await cluster("b", "serve")
    await cluster("w1")
    await cluster("w2")
    token = await routine_with_token(serve_a.slack, "many", f"Count. {marker}",
                                     make_git_repo(tmp_path / "upstream"))

    for n in range(40):  # through both doors
        status, body = await trigger(serve_a if n % 2 else serve_b, "many", token, {"n": n})
        assert status == 202, body
    await wait_until(lambda: finished_count(database_url) == 40, timeout=240)
    await wait_until(lambda: announced_count(database_url) == 40, timeout=60)
    await asyncio.sleep(1.0)  # a second announcement would be here by now

    runs = stored_runs(database_url)
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 40, [r.reason for r in runs]
    first_turns = Counter(item_of(r.body) for r in anthropic_api.requests_for("many")
                          if not any(m["role"] == "assistant" for m in r.body["messages"]))
    assert first_turns == Counter(range(40))  # each run executed exactly once
    posted = Counter(run_of(str(c.params.get("text", "")), "many")
                     for c in slack_api.calls_to("chat.postMessage")
                     if c.params.get("channel") == RESULTS_CHANNEL)
    posted.pop(None, None)
    assert posted == Counter(r.id for r in runs)  # each announced exactly once
    workers = {r.worker_id for r in runs}
    assert len(workers) > 1, workers  # spread over the processes that execute
    assert all(w is not None and w.split("/")[-1] in {"a", "b", "w1", "w2"} for w in workers)


@pytest.mark.postgres
async def test_a_killed_workers_run_fails_at_its_lease_end_and_another_goes_on(
        cluster: Start, anthropic_api: AnthropicStandIn, database_url: str,
        tmp_path: Path) -> None:
    marker = anthropic_api.script("slow", Turn([report("success", "Slow.")], delay=12))
    serve = await cluster("doors", "serve", ROUTINES_EXECUTE="off")
    token = await routine_with_token(serve.slack, "slow", f"Wait. {marker}",
                                     make_git_repo(tmp_path / "upstream"))
    # w1 may hold one run in the whole database, w2 two: the second run is w2's.
    w1 = await cluster("w1", max_runs=1)
    await trigger(serve, "slow", token, {"n": 0})
    await wait_until(lambda: held_by(database_url, "w1") is not None, timeout=60)
    doomed = held_by(database_url, "w1")
    await cluster("w2", max_runs=2)
    await trigger(serve, "slow", token, {"n": 1})
    await wait_until(lambda: held_by(database_url, "w2") is not None, timeout=60)
    other = held_by(database_url, "w2")
    assert doomed is not None and other is not None

    assert w1.proc is not None
    w1.proc.send_signal(signal.SIGKILL)
    assert await w1.died() == -signal.SIGKILL
    await wait_until(lambda: stored_run(database_url, doomed).status.finished,
                     timeout=LEASE + 10)
    lost = stored_run(database_url, doomed)
    assert (lost.status, lost.failure_kind) == (RunStatus.FAILED, FailureKind.INTERRUPTED)
    assert lost.reason is not None
    assert re.fullmatch(r"interrupted: worker .+/w1 stopped renewing its lease "
                        r"\(last heartbeat \d\d:\d\d:\d\dZ\)", lost.reason), lost.reason
    going = stored_run(database_url, other)
    assert going.status == RunStatus.RUNNING and going.worker_id == lost_worker(lost, "w2")
    await wait_until(lambda: stored_run(database_url, other).status.finished, timeout=60)
    assert stored_run(database_url, other).status == RunStatus.SUCCEEDED
    assert "no longer held" not in w2_log(tmp_path)


@pytest.mark.postgres
async def test_a_frozen_worker_kills_the_run_it_lost_as_soon_as_it_wakes(
        cluster: Start, anthropic_api: AnthropicStandIn, slack_api: SlackApiStandIn,
        database_url: str, tmp_path: Path, docker_client: Any) -> None:
    """SIGSTOP past its lease: another process fails its run; once resumed, its first beat
    finds the run no longer its own and kills the container (the model's answer is still
    20 s away), and the run is announced once, by the process that failed it."""
    marker = anthropic_api.script("frozen", Turn([report("success", "Late.")], delay=20))
    serve = await cluster("doors", "serve", ROUTINES_EXECUTE="off")
    token = await routine_with_token(serve.slack, "frozen", f"Hang. {marker}",
                                     make_git_repo(tmp_path / "upstream"))
    w1 = await cluster("w1", max_runs=1)
    await trigger(serve, "frozen", token, {"n": 0})
    await wait_until(lambda: held_by(database_url, "w1") is not None, timeout=60)
    run_id = held_by(database_url, "w1")
    assert run_id is not None and w1.proc is not None
    await wait_until(lambda: bool(anthropic_api.requests_for("frozen")), timeout=30)

    w1.proc.send_signal(signal.SIGSTOP)
    try:
        await wait_until(lambda: stored_run(database_url, run_id).status.finished,
                         timeout=LEASE + 10)
    finally:
        w1.proc.send_signal(signal.SIGCONT)
    assert stored_run(database_url, run_id).failure_kind == FailureKind.INTERRUPTED
    await wait_until(lambda: not running_container(docker_client, w1, run_id), timeout=10)
    assert "is no longer held by this worker: killing its container" in w1.log()
    await wait_until(lambda: stored_run(database_url, run_id).notified_at is not None)
    await asyncio.sleep(1.0)  # a second announcement would be here by now
    posted = [c for c in slack_api.calls_to("chat.postMessage")
              if run_of(str(c.params.get("text", "")), "frozen") == run_id]
    assert len(posted) == 1, [c.params["text"] for c in posted]
    assert str(posted[0].params["text"]).startswith(f"frozen run #{run_id}: failed")
    assert len(anthropic_api.requests_for("frozen")) == 1  # executed by w1 only, once


@pytest.mark.postgres
async def test_max_concurrent_one_holds_across_two_workers(
        cluster: Start, anthropic_api: AnthropicStandIn, database_url: str,
        tmp_path: Path, settings: Settings) -> None:
    marker = anthropic_api.script("one", Turn([report("success", "One.")], delay=0.5))
    serve = await cluster("doors", "serve", ROUTINES_EXECUTE="off")
    token = await routine_with_token(serve.slack, "one", f"Alone. {marker}",
                                     make_git_repo(tmp_path / "upstream"), "max-concurrent=1")
    w1 = await cluster("w1", max_runs=3)
    await cluster("w2", max_runs=3)
    await refused_same_name(w1, settings, tmp_path)

    samples: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append(await asyncio.to_thread(running_count, database_url))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    try:
        for n in range(6):
            status, body = await trigger(serve, "one", token, {"n": n})
            assert status == 202, body
        await wait_until(lambda: finished_count(database_url) == 6, timeout=120)
    finally:
        stop.set()
        await sampler
    assert max(samples) == 1, samples  # it ran, one at a time, at every sample
    assert len(samples) > 20
    assert [r.status for r in stored_runs(database_url)] == [RunStatus.SUCCEEDED] * 6


@pytest.mark.postgres
async def test_every_process_killed_at_once_and_started_again_loses_nothing(
        cluster: Start, anthropic_api: AnthropicStandIn, slack_api: SlackApiStandIn,
        database_url: str, tmp_path: Path) -> None:
    """SIGKILL of serve and both workers together, two runs in their containers and four
    queued; started again under the same names within the lease (the default's 30 s: a
    worker not back by then has lost its runs, the test above), each worker adopts its
    own runs, the queued ones run, and every run ends once, succeeded, announced once."""
    marker = anthropic_api.script("restart", Turn([report("success", "Back.")], delay=6))
    lease = {"ROUTINES_LEASE_SECONDS": "30"}
    serve = await cluster("doors", "serve", ROUTINES_EXECUTE="off", **lease)
    token = await routine_with_token(serve.slack, "restart", f"Survive. {marker}",
                                     make_git_repo(tmp_path / "upstream"))
    # Two runs at once in the whole database (the limit is global), on either worker.
    workers = [await cluster("w1", max_runs=2, **lease),
               await cluster("w2", max_runs=2, **lease)]
    for n in range(6):
        status, body = await trigger(serve, "restart", token, {"n": n})
        assert status == 202, body
    # Both running runs are in their containers (their first call reached the model).
    await wait_until(lambda: len(anthropic_api.requests_for("restart")) >= 2, timeout=60)
    before = {r.id: r.worker_id for r in stored_runs(database_url)
              if r.status == RunStatus.RUNNING}
    assert len(before) == 2, before

    everyone = [serve, *workers]
    for bot in everyone:
        assert bot.proc is not None
        bot.proc.send_signal(signal.SIGKILL)
    for bot in everyone:
        assert await bot.died() == -signal.SIGKILL
    await asyncio.gather(*(bot.start() for bot in everyone))

    await wait_until(lambda: announced_count(database_url) == 6, timeout=180)
    await asyncio.sleep(1.0)  # a second announcement would be here by now
    runs = stored_runs(database_url)
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 6, [r.reason for r in runs]
    assert {r.id: r.worker_id for r in runs if r.id in before} == before  # adopted by its own
    first_turns = {item_of(r.body) for r in anthropic_api.requests_for("restart")
                   if not any(m["role"] == "assistant" for m in r.body["messages"])}
    assert first_turns == set(range(6))  # every run executed
    posted = Counter(run_of(str(c.params.get("text", "")), "restart")
                     for c in slack_api.calls_to("chat.postMessage")
                     if c.params.get("channel") == RESULTS_CHANNEL)
    posted.pop(None, None)
    assert posted == Counter(r.id for r in runs)  # each announced exactly once


async def test_a_worker_beside_serve_on_sqlite_is_refused(
        tmp_path: Path, settings: Settings, docker_client: Any) -> None:
    """Both commands take the SQLite one-process lock: a worker beside serve exits with
    one line and code 1."""
    database = tmp_path / "one.db"
    settings = replace(settings, database_url=f"sqlite:///{database}")
    bot = ServedBot(settings, tmp_path)
    try:
        await bot.start()
        assert bot.proc is not None
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", COMMAND.format("worker")], cwd=ROOT,
            env={**environment(settings, free_port()), "ROUTINES_WORKER_NAME": "w1"},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"routines: process {bot.proc.pid} already serves the SQLite database")
        assert "Traceback" not in second.stderr
        assert (await bot.slack.slash("list")).status == 200  # the first serves on
    finally:
        await bot.stop()
        await asyncio.to_thread(bot.remove_leftovers, docker_client)


async def refused_same_name(running: ServedBot, settings: Settings, tmp_path: Path) -> None:
    """A second live process under a worker's id exits with one line, code 1."""
    own = replace(running.settings, data_dir=tmp_path / "twin")
    twin = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", COMMAND.format("worker")], cwd=ROOT,
        env={**environment(own, free_port()), **running.env}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60)
    assert twin.returncode == 1, twin.stderr
    assert running.proc is not None
    last = twin.stderr.strip().splitlines()[-1]
    assert last.startswith("routines: worker id "), last
    assert last.endswith(f"is in use by process {running.proc.pid} on this host: give this "
                         "process a name of its own (ROUTINES_WORKER_NAME)"), last
    assert "Traceback" not in twin.stderr


async def routine_with_token(fake: FakeSlack, name: str, prompt: str, repo: str,
                             *changes: str) -> str:
    """A routine made through the modal (its prompt takes the payload's `n`), its settings
    changed with `/routine set`, and an API token made through `/routine token`."""
    reply = await fake.submit_view("routine_create", modal_values(
        name=name, prompt=prompt, repo_url=repo, branch="main", channel_id=RESULTS_CHANNEL,
        model="claude-test-1", timeout_seconds="60", payload_template="Item {{ payload.n }}."))
    assert reply.status == 200 and reply.text == "", reply.text
    if changes:
        answer = (await fake.slash(f"set {name} " + " ".join(changes))).json()
        assert answer["text"].startswith(f"Routine {name}"), answer
    shown = (await fake.slash(f"token {name} ci")).json()
    token = re.search(r"```(rt_[\w-]+)```", json.dumps(shown["blocks"]))
    assert token is not None, shown
    return token.group(1)


async def trigger(bot: ServedBot, name: str, token: str,
                  payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{bot.port}/api/v1/routines/{name}/runs",
            data=json.dumps(payload).encode(),
            headers={"Authorization": f"Bearer {token}",
                     "Content-Type": "application/json"}) as response:
        return response.status, await response.json()


def item_of(body: dict[str, Any]) -> int:
    """The payload's `n` in a request's first message (the run it is for)."""
    found = re.search(r"Item (\d+)\.", json.dumps(body["messages"][0]))
    assert found is not None, body["messages"][0]
    return int(found.group(1))


def run_of(text: str, name: str) -> int | None:
    found = re.match(rf"{re.escape(name)} run #(\d+)", text)
    return int(found.group(1)) if found else None


def running_container(docker_client: Any, bot: ServedBot, run_id: int) -> bool:
    name = f"routines-{bot.settings.instance}-run-{run_id}"
    found = docker_client.containers.list(filters={"name": name})
    return any(c.name == name for c in found)


def lost_worker(lost: Run, name: str) -> str:
    """The id of worker `name` on the host that ran the lost run (the same host here)."""
    assert lost.worker_id is not None
    return lost.worker_id.rsplit("/", 1)[0] + f"/{name}"


def w2_log(tmp_path: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in tmp_path.glob("w2-*.log"))


def _read(database_url: str, read: Callable[[Any], Any]) -> Any:
    db = Database(database_url)
    try:
        with db.session() as session:
            return read(session)
    finally:
        db.close()


def stored_runs(database_url: str) -> list[Run]:
    return list(_read(database_url, lambda s: s.exec(select(Run).order_by(col(Run.id))).all()))


def stored_run(database_url: str, run_id: int) -> Run:
    run = _read(database_url, lambda s: s.get(Run, run_id))
    assert run is not None
    return run  # type: ignore[no-any-return]


def held_by(database_url: str, name: str) -> int | None:
    """The running run worker `name` holds, if any."""
    return _read(database_url, lambda s: s.exec(select(Run.id).where(  # type: ignore[no-any-return]
        Run.status == RunStatus.RUNNING, col(Run.worker_id).like(f"%/{name}"))).first())


def finished_count(database_url: str) -> int:
    return int(_read(database_url, lambda s: s.exec(select(func.count()).select_from(Run).where(
        col(Run.finished_at).is_not(None))).one()))


def announced_count(database_url: str) -> int:
    return int(_read(database_url, lambda s: s.exec(select(func.count()).select_from(Run).where(
        col(Run.notified_at).is_not(None))).one()))


def running_count(database_url: str) -> int:
    """RUNNING runs of the routine `one`, in one query (a snapshot of that moment)."""
    return int(_read(database_url, lambda s: s.exec(
        select(func.count()).select_from(Run).join(Routine, col(Routine.id) == col(Run.routine_id))
        .where(Run.status == RunStatus.RUNNING, Routine.name == "one")).one()))

