"""The trigger rate limit kept in the database: a restart does not forgive a burst, and
two bots on one database together allow the configured rate, not twice it (on
PostgreSQL under real concurrency: the routine's advisory lock makes the count exact)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy

from bot.core.ratelimit import WINDOW
from bot.core.trigger import manual
from bot.errors import RateLimited
from bot.services import Services
from bot.services.trigger_batch import ApiCall, Outcome
from bot.services.views import QueuedRun
from bot.store import trigger_hits
from bot.store.tables import utcnow
from tests.services.test_group_commit import fresh_count, routine_with_token, services_on

pytestmark = pytest.mark.postgres
ADMIN = "U0ADMIN01"


def accepted(outcomes: list[Outcome]) -> int:
    return sum(isinstance(o, QueuedRun) and not o.replayed for o in outcomes)


def test_a_restart_does_not_forgive_a_burst(database_url: str) -> None:
    before = services_on(database_url, triggers_per_minute=3)
    token = routine_with_token(before, "hook")
    first = before.trigger_batch.trigger_api_calls(
        [ApiCall("hook", token, {}, f"k{i}") for i in range(3)])
    assert accepted(first) == 3
    before.triggers.db.close()

    after = services_on(database_url, triggers_per_minute=3)  # the bot restarted
    [limited] = after.trigger_batch.trigger_api_calls([ApiCall("hook", token, {}, "k3")])
    assert isinstance(limited, RateLimited) and 1 <= limited.retry_after <= 60
    with pytest.raises(RateLimited):  # every door shares the one count
        after.triggers.trigger("hook", manual(ADMIN))
    assert fresh_count(database_url, "SELECT count(*) FROM run") == 3


def test_every_door_counts_in_the_same_window(database_url: str) -> None:
    services = services_on(database_url, triggers_per_minute=3)
    token = routine_with_token(services, "hook")
    services.triggers.trigger("hook", manual(ADMIN))  # Slack: 1 of 3
    outcomes = services.trigger_batch.trigger_api_calls(
        [ApiCall("hook", token, {}, f"k{i}") for i in range(3)])  # the API: 2, 3, refused
    assert accepted(outcomes) == 2 and isinstance(outcomes[2], RateLimited)
    assert fresh_count(database_url, "SELECT count(*) FROM triggerhit") == 3


def test_hits_leave_the_window_and_are_pruned(database_url: str) -> None:
    services = services_on(database_url, triggers_per_minute=2)
    token = routine_with_token(services, "hook")
    routine_id = fresh_count(database_url, "SELECT id FROM routine WHERE name = 'hook'")
    long_ago = utcnow() - WINDOW - timedelta(seconds=5)
    with services.triggers.db.session() as session:  # two hits of a minute ago: spent, and old
        trigger_hits.record(session, [(routine_id, long_ago), (routine_id, long_ago)])
    outcomes = services.trigger_batch.trigger_api_calls(
        [ApiCall("hook", token, {}, f"k{i}") for i in range(3)])
    assert accepted(outcomes) == 2 and isinstance(outcomes[2], RateLimited)
    old = "SELECT count(*) FROM triggerhit WHERE at < :cut"
    assert fresh_count(database_url, old, cut=utcnow() - WINDOW) == 0
    assert fresh_count(database_url, "SELECT count(*) FROM triggerhit") == 2


def test_two_bots_on_one_database_together_allow_the_rate_not_twice_it(
    database_url: str,
) -> None:
    limit = 25
    one = services_on(database_url, triggers_per_minute=limit)
    token = routine_with_token(one, "hook")
    other = services_on(database_url, triggers_per_minute=limit)  # another process's view
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def burst(services: Services, worker: int) -> None:
        start.wait()
        for batch in range(5):  # 4 threads x 5 batches x 4 calls = 80 calls for 25 places
            calls = [ApiCall("hook", token, {}, f"w{worker}-b{batch}-c{i}") for i in range(4)]
            got = services.trigger_batch.trigger_api_calls(calls)
            with lock:
                outcomes.extend(got)

    threads = [threading.Thread(target=burst, args=(s, n))
               for n, s in enumerate([one, other, one, other])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == 80
    assert accepted(outcomes) == limit
    assert sum(isinstance(o, RateLimited) for o in outcomes) == 80 - limit
    assert fresh_count(database_url, "SELECT count(*) FROM run") == limit
    assert fresh_count(database_url, "SELECT count(*) FROM triggerhit") == limit


def test_the_lock_is_an_advisory_lock_on_postgresql_only(database_url: str) -> None:
    """What makes the count exact across processes: on PostgreSQL the window is read under
    the routine's advisory lock, held by the transaction (seen in pg_locks meanwhile)."""
    services = services_on(database_url, triggers_per_minute=5)
    routine_with_token(services, "hook")
    routine_id = fresh_count(database_url, "SELECT id FROM routine WHERE name = 'hook'")
    with services.triggers.db.session() as session:
        windows = services.triggers.rate_windows(session, [routine_id], utcnow())
        assert windows[routine_id].count == 0 and windows[routine_id].retry_after() is None
        if session.get_bind().dialect.name == "postgresql":
            held = session.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :c "
                "AND objid = :r AND pid = pg_backend_pid()"),
                {"c": trigger_hits.LOCK_CLASS, "r": routine_id}).scalar_one()
            assert held == 1
