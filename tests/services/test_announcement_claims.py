"""Announcements claimed before posting, on a real database: of the processes racing to
post a run's result, one claims it and posts it once; a failed post is released and
posted later (by whichever process then claims it); a claim whose process died runs out
and another process posts the result."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col

from bot.core.routine import RoutineDraft
from bot.core.statuses import RunStatus
from bot.core.trigger import manual
from bot.core.verdict import RunOutcome
from bot.services import Services
from bot.store.tables import Run, utcnow
from tests.services.test_group_commit import services_on

pytestmark = pytest.mark.postgres
ADMIN = "U0ADMIN01"
CLAIM = 30.0


def finished_runs(services: Services, count: int) -> list[int]:
    services.routines.create(RoutineDraft(name="tidy", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), ADMIN)
    ids: list[int] = []
    for _ in range(count):
        services.triggers.trigger("tidy", manual(ADMIN))
        view = services.runs.claim_next()
        assert view is not None and view.run.id is not None
        services.runs.finish(view.run.id, RunOutcome(RunStatus.SUCCEEDED, "ok", None, None),
                             1, 1, "")
        ids.append(view.run.id)
    return ids


def announce_all(services: Services, worker: str, posted: list[tuple[str, int]],
                 lock: threading.Lock, fail: set[int] | None = None) -> None:
    """What a dispatcher does with the results owed: claim, post, mark (or release)."""
    for view in services.runs.to_announce(worker):
        run_id = view.run.id
        assert run_id is not None
        if not services.runs.claim_announcement(run_id, worker, CLAIM):
            continue
        if fail is not None and run_id in fail:  # Slack refused it: tried again later
            services.runs.release_announcement(run_id, worker)
            continue
        with lock:
            posted.append((worker, run_id))
        services.runs.mark_announced(run_id)


def test_two_processes_racing_post_each_result_once(database_url: str) -> None:
    one = services_on(database_url, triggers_per_minute=1000)
    ids = finished_runs(one, 30)
    other = services_on(database_url, triggers_per_minute=1000)
    posted: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def race(services: Services, worker: str) -> None:
        start.wait()
        announce_all(services, worker, posted, lock)

    threads = [threading.Thread(target=race, args=(s, w)) for s, w in
               [(one, "a/one"), (other, "b/other"), (one, "a/one-2"), (other, "b/other-2")]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(run_id for _, run_id in posted) == ids  # every result, each once
    assert one.runs.to_announce("c/late") == []  # nothing left to post, for anyone
    for run_id in ids:
        run = other.runs.get(run_id).run
        assert run.notified_at is not None and run.announce_claimed_by is None


def test_a_failed_post_is_released_and_posted_later_by_another(database_url: str) -> None:
    one = services_on(database_url, triggers_per_minute=1000)
    first, second = finished_runs(one, 2)
    other = services_on(database_url, triggers_per_minute=1000)
    posted: list[tuple[str, int]] = []
    lock = threading.Lock()

    announce_all(one, "a/one", posted, lock, fail={first})
    assert posted == [("a/one", second)]
    assert one.runs.get(first).run.announce_claimed_by is None  # released: anyone's again

    announce_all(other, "b/other", posted, lock)
    assert posted == [("a/one", second), ("b/other", first)]
    announce_all(one, "a/one", posted, lock)  # and nobody posts either again
    assert len(posted) == 2


def test_a_claim_held_for_a_while_after_an_outright_refusal(database_url: str) -> None:
    one = services_on(database_url, triggers_per_minute=1000)
    [run_id] = finished_runs(one, 1)
    assert one.runs.claim_announcement(run_id, "a/one", CLAIM)
    one.runs.release_announcement(run_id, "a/one", hold_seconds=600)
    assert not one.runs.claim_announcement(run_id, "b/other", CLAIM)  # held off
    assert [v.run.id for v in one.runs.to_announce("a/one")] == [run_id]  # its restart's


def test_a_claim_of_a_process_that_died_runs_out_and_another_posts(database_url: str) -> None:
    one = services_on(database_url, triggers_per_minute=1000)
    [run_id] = finished_runs(one, 1)
    other = services_on(database_url, triggers_per_minute=1000)

    assert one.runs.claim_announcement(run_id, "a/one", CLAIM)  # ...then "a/one" is killed
    assert not other.runs.claim_announcement(run_id, "b/other", CLAIM)  # still live
    assert other.runs.to_announce("b/other") == []
    with one.runs.db.session() as session:  # its lease_seconds go by
        session.execute(update(Run).where(col(Run.id) == run_id).values(
            announce_claim_until=utcnow() - timedelta(seconds=1)))

    swept = other.runs.to_announce("b/other")
    assert [v.run.id for v in swept] == [run_id]
    assert other.runs.claim_announcement(run_id, "b/other", CLAIM)
    other.runs.mark_announced(run_id)
    assert not one.runs.claim_announcement(run_id, "a/one", CLAIM)  # posted: never again


def test_a_sweep_leaves_a_fresh_result_to_the_process_that_ran_it(database_url: str) -> None:
    one = services_on(database_url, triggers_per_minute=1000)
    [run_id] = finished_runs(one, 1)
    assert one.runs.to_announce("b/other", settled_seconds=CLAIM) == []
    with one.runs.db.session() as session:
        session.execute(update(Run).where(col(Run.id) == run_id).values(
            finished_at=utcnow() - timedelta(seconds=CLAIM + 1)))
    assert [v.run.id for v in one.runs.to_announce("b/other", CLAIM)] == [run_id]


def test_a_sweep_leaves_a_held_result_alone_even_its_holders(database_url: str) -> None:
    one = services_on(database_url, triggers_per_minute=1000)
    [run_id] = finished_runs(one, 1)
    with one.runs.db.session() as session:  # finished a while ago
        session.execute(update(Run).where(col(Run.id) == run_id).values(
            finished_at=utcnow() - timedelta(seconds=CLAIM + 1)))
    assert one.runs.claim_announcement(run_id, "a/one", CLAIM)
    one.runs.release_announcement(run_id, "a/one", hold_seconds=600)  # refused outright
    assert one.runs.to_announce("a/one", CLAIM) == []  # not every sweep
    assert one.runs.to_announce("b/other", CLAIM) == []
    assert [v.run.id for v in one.runs.to_announce("a/one")] == [run_id]  # its next start


def test_a_backlog_of_results_is_taken_a_batch_at_a_time_oldest_first(
        database_url: str) -> None:
    """After a long Slack outage: each pass looks at the oldest few, not at every one."""
    services = services_on(database_url, triggers_per_minute=1000)
    ids = finished_runs(services, 5)
    posted: list[int] = []
    while batch := services.runs.to_announce("a/one", limit=2):
        assert len(batch) <= 2
        for view in batch:
            assert view.run.id is not None
            assert services.runs.claim_announcement(view.run.id, "a/one", CLAIM)
            services.runs.mark_announced(view.run.id)
            posted.append(view.run.id)
    assert posted == ids
