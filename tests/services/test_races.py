"""Races through the services on a real database: requests at the same moment, each in its
own thread, give one outcome (one routine of a name, one run for an idempotency key)."""

from __future__ import annotations

import threading

import pytest

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.errors import ValidationFailed
from bot.services import ServicePolicy, Services
from bot.services.trigger_batch import ApiCall
from bot.services.views import QueuedRun
from bot.store import schema
from bot.store.database import Database

pytestmark = pytest.mark.postgres


def test_two_creates_racing_for_one_name_give_one_routine_and_one_field_error(
    database_url: str,
) -> None:
    db = Database(database_url)
    schema.upgrade(db)
    services = Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5),
                             Redactor(()))
    draft = RoutineDraft(name="twin", prompt="p", repo_url="file:///r", channel_id="C0123ABC")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        try:
            services.routines.create(draft, "U1")
            outcomes.append("created")
        except ValidationFailed as exc:
            outcomes.append(exc.field_errors["name"])

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["A routine named `twin` already exists."] * 7 + ["created"]


def test_racing_calls_with_one_idempotency_key_give_one_run(database_url: str) -> None:
    db = Database(database_url)
    schema.upgrade(db)
    services = Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5),
                             Redactor(()))
    services.routines.create(RoutineDraft(name="hook", prompt="p", repo_url="file:///r",
                                        channel_id="C0123ABC"), "U1")
    token = services.tokens.create("hook", "ci", "U1")
    results: list[tuple[int, bool]] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        # Each thread is a batch of its own: the batches race on one key.
        [triggered] = services.trigger_batch.trigger_api_calls(
            [ApiCall("hook", token, {"n": 1}, "same-key")])
        assert isinstance(triggered, QueuedRun), triggered
        results.append((triggered.run_id, triggered.replayed))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len({run_id for run_id, _ in results}) == 1
    assert sorted(replayed for _, replayed in results) == [False] + [True] * 7
    assert len(services.routines.history("hook")) == 1
    db.close()
