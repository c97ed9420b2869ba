"""PostgreSQL stopped in the middle of a run, on a PostgreSQL container of this test's own
(never the shared one): the doors answer 503 `database_unavailable` while it is down, the
run keeps going in its container, and its events and verdict are recorded, and its result
announced once, when the database is back.

Marked `docker`, not `postgres`: it always runs on its own PostgreSQL, in every pass, and
fails (never skips) without the Docker engine or the routines-postgres:15 image."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bot.core.statuses import RunStatus
from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.http_doors import call
from tests.support.slack_flows import create_routine, wait_until

pytestmark = [pytest.mark.docker]
POSTGRES_IMAGE = "routines-postgres:15"


class OwnPostgres:
    """One PostgreSQL container, on a network of its own, published on a free loopback
    port that stays the same across its restarts."""

    def __init__(self, docker_client: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        try:
            docker_client.images.get(POSTGRES_IMAGE)
        except Exception as exc:
            pytest.fail(f"{POSTGRES_IMAGE} is missing ({exc}): run .ci/build-images.sh")
        name = f"pg-outages-{uuid.uuid4().hex[:8]}"
        self.network = docker_client.networks.create(name)
        self.container = docker_client.containers.create(
            POSTGRES_IMAGE, name=name, network=name,
            environment={"POSTGRES_USER": "routines", "POSTGRES_PASSWORD": "routines",
                         "POSTGRES_DB": "routines"},
            ports={"5432/tcp": ("127.0.0.1", self.port)})
        self.url = f"postgresql+psycopg://routines:routines@127.0.0.1:{self.port}/routines"

    def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(f"postgresql://routines:routines@127.0.0.1:{self.port}/"
                                     "routines", connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "own PostgreSQL not ready in time"
                time.sleep(0.3)

    def remove(self) -> None:
        self.container.remove(force=True, v=True)
        self.network.remove()

    def stop(self) -> None:
        self.container.stop(timeout=5)

    def start(self) -> None:
        self.container.start()
        self.ready()


@pytest.fixture
def own_postgres(docker_client: Any) -> Iterator[OwnPostgres]:
    database = OwnPostgres(docker_client)
    try:
        database.start()
        yield database
    finally:
        database.remove()


async def test_postgres_stopped_mid_run_then_the_run_is_recorded_once_it_is_back(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str, own_postgres: OwnPostgres,
) -> None:
    marker = anthropic_api.script(
        "through", [tool("run_shell", command="sleep 6 && echo slept-through-the-outage")],
        [report("success", "Slept through the outage.")])
    bot, fake = await start_bot(database_url=own_postgres.url)
    await create_routine(fake, slack_api, "through", f"Sleep. {marker}", git_repo)
    found = re.search(r"```(rt_[\w-]+)```",
                      json.dumps((await fake.slash("token through ci")).json()["blocks"]))
    assert found is not None
    body = (await fake.slash("run through")).json()
    assert "queued" in body["text"], body
    run_id = int(str(body["text"]).split("#")[1].split(" ")[0])
    await wait_until(lambda: len(anthropic_api.requests_for("through")) >= 1, timeout=90)

    own_postgres.stop()  # the container sleeps on; the database is gone
    try:
        api = await call(bot, "POST", "/api/v1/routines/through/runs", found.group(1), b"{}")
        slash = await fake.slash("run through")
        health, _, _ = await call(bot, "GET", "/healthz")
        # The run goes on: the agent's second turn (after the sleep) reaches the stand-in.
        await wait_until(lambda: len(anthropic_api.requests_for("through")) >= 2, timeout=60)
        await wait_until(lambda: bot.dispatcher.active_runs == [run_id], timeout=1)
    finally:
        own_postgres.start()

    assert api[0] == 503 and api[1]["error"] == "database_unavailable", api
    assert "cannot be reached" in api[1]["message"]
    assert slash.status == 503 and slash.json()["error"] == "database_unavailable"
    assert health == 503
    posted = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                      contains=f"run #{run_id}: ", timeout=60)
    assert posted.params["text"] == f"through run #{run_id}: succeeded"
    await wait_until(lambda: bot.services.runs.get(run_id).run.notified_at is not None,
                     timeout=10)  # marked: the next start posts nothing again
    assert bot.services.runs.get(run_id).run.status == RunStatus.SUCCEEDED
    # The events of the outage were held, then written: the shell's output is in the log.
    assert "slept-through-the-outage" in json.dumps(bot.services.runs.events(run_id))
    await wait_until(lambda: bot.dispatcher.active_runs == [], timeout=10)
    results = [m for m in slack_api.messages_in(RESULTS_CHANNEL)
               if f"run #{run_id}: " in str(m.get("text", ""))]
    assert len(results) == 1
    assert len(bot.services.routines.history("through")) == 1  # the refused ones queued nothing
