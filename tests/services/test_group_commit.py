"""Group commit of API triggers on a real database: the calls of one batch share one
transaction, and each still passes every rule and gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import sqlalchemy

from bot.core.payload import PayloadRejected
from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.statuses import RiskLevel, RunStatus
from bot.core.trigger import manual
from bot.errors import (
    BudgetExceeded,
    DatabaseProblem,
    DatabaseUnavailable,
    InvalidToken,
    KillSwitchEngaged,
    RateLimited,
    RoutinePaused,
)
from bot.execution.group_commit import GroupCommit
from bot.services import ServicePolicy, Services
from bot.services.trigger_batch import ApiCall, Outcome
from bot.services.views import QueuedRun
from bot.store import schema
from bot.store.database import Database

pytestmark = pytest.mark.postgres
ADMIN = "U0ADMIN01"


def services_on(database_url: str, triggers_per_minute: int = 30) -> Services:
    db = Database(database_url)
    schema.upgrade(db)
    return Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5,
                                      triggers_per_minute=triggers_per_minute,
                                      admins=(ADMIN,)), Redactor(()))


def routine_with_token(services: Services, name: str, template: str = "") -> str:
    services.routines.create(RoutineDraft(name=name, prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC", payload_template=template),
                             ADMIN)
    return services.tokens.create(name, "ci", ADMIN)


def fresh_count(database_url: str, sql: str, **params: object) -> int:
    """Counted through a connection of its own: what is on disk, not in a session."""
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(sql), params).scalar_one())
    finally:
        engine.dispose()


def runs_of(database_url: str, routine: str) -> int:
    return fresh_count(database_url, "SELECT count(*) FROM run JOIN routine ON "
                       "routine.id = run.routine_id WHERE routine.name = :name", name=routine)


def test_one_refused_call_leaves_the_others_recorded_each_with_its_own_answer(
    database_url: str,
) -> None:
    services = services_on(database_url, triggers_per_minute=3)
    hook = routine_with_token(services, "hook", template="{{ payload.title }}")
    quiet = routine_with_token(services, "quiet")
    services.routines.pause("quiet", ADMIN)

    outcomes = services.trigger_batch.trigger_api_calls([
        ApiCall("hook", hook, {"title": "first"}, "key-a"),  # rate limit: 1 of 3
        ApiCall("quiet", quiet, {"title": "x"}, "key-q"),  # paused
        ApiCall("hook", hook, {"title": "again"}, "key-a"),  # the same key: a replay
        ApiCall("hook", hook, {"no_title": 1}, "key-bad"),  # 2 of 3, then the template fails
        ApiCall("hook", hook, {"title": "second"}, "key-b"),  # 3 of 3
        ApiCall("hook", hook, {"title": "third"}, "key-c"),  # over the limit
        ApiCall("hook", quiet, {"title": "x"}, "key-d"),  # another routine's token
        ApiCall("hook", "rt_not-a-token", {"title": "x"}, "key-e"),
    ])

    first, paused, replay, bad, second, limited, other, unknown = outcomes
    assert isinstance(first, QueuedRun) and not first.replayed
    assert first.status == RunStatus.QUEUED
    assert isinstance(paused, RoutinePaused)
    assert replay == QueuedRun(first.run_id, RunStatus.QUEUED, replayed=True)
    assert isinstance(bad, PayloadRejected) and "title" in str(bad)
    assert isinstance(second, QueuedRun) and not second.replayed
    assert second.run_id not in (first.run_id, None)
    assert isinstance(limited, RateLimited) and limited.retry_after >= 1
    assert isinstance(other, InvalidToken) and isinstance(unknown, InvalidToken)

    assert runs_of(database_url, "hook") == 2 and runs_of(database_url, "quiet") == 0
    assert fresh_count(database_url, "SELECT count(*) FROM auditentry WHERE action = 'run' "
                       "AND routine = 'hook'") == 2
    prompt = services.runs.get(first.run_id).run.prompt
    assert "first" in prompt and "again" not in prompt  # the replay did not overwrite it
    # A later batch replays from the database.
    again = services.trigger_batch.trigger_api_calls([ApiCall("hook", hook, {}, "key-b")])
    assert again == [QueuedRun(second.run_id, RunStatus.QUEUED, replayed=True)]


def test_each_answer_names_the_run_written_for_its_own_call(database_url: str) -> None:
    """The ids a batch answers with are those of its own rows, in order: on SQLite the
    batch numbers them itself (`_insert_runs`), on PostgreSQL RETURNING does."""
    services = services_on(database_url, triggers_per_minute=100)
    tokens = {name: routine_with_token(services, name, template="{{ payload.n }}")
              for name in ("north", "south")}
    services.triggers.trigger("north", manual(ADMIN))  # an id taken before the batch
    calls = [ApiCall(name, tokens[name], {"n": f"call-{i}"}, f"key-{i}")
             for i, name in enumerate(["north", "south", "north", "north", "south"])]

    outcomes = services.trigger_batch.trigger_api_calls(calls)

    assert all(isinstance(o, QueuedRun) and not o.replayed for o in outcomes)
    ids = [o.run_id for o in outcomes if isinstance(o, QueuedRun)]
    assert len(set(ids)) == len(calls)
    for i, (call, run_id) in enumerate(zip(calls, ids, strict=True)):
        view = services.runs.get(run_id)
        assert (view.routine.name, view.run.trigger_ref) == (call.name, call.key)
        assert f"call-{i}" in view.run.prompt
    assert services.trigger_batch.trigger_api_calls(calls[:1]) == [
        QueuedRun(ids[0], RunStatus.QUEUED, replayed=True)]


def test_budgets_count_the_runs_of_the_same_batch(database_url: str) -> None:
    services = services_on(database_url)
    token = routine_with_token(services, "capped")
    services.routines.change("capped", {"max_runs_per_day": 2}, ADMIN)
    outcomes = services.trigger_batch.trigger_api_calls(
        [ApiCall("capped", token, {}, f"k{n}") for n in range(3)])
    assert [type(o) for o in outcomes] == [QueuedRun, QueuedRun, BudgetExceeded]
    assert runs_of(database_url, "capped") == 2
    assert fresh_count(database_url, "SELECT count(*) FROM auditentry "
                       "WHERE action = 'budget_hit' AND routine = 'capped'") == 1


def test_the_kill_switch_holds_every_call_of_a_batch(database_url: str) -> None:
    services = services_on(database_url)
    token = routine_with_token(services, "hook")
    services.kill_switch.engage(ADMIN, "incident")
    held = services.trigger_batch.trigger_api_calls(
        [ApiCall("hook", token, {}, "k1"), ApiCall("hook", token, {}, "k2")])
    assert all(isinstance(o, KillSwitchEngaged) for o in held)
    assert runs_of(database_url, "hook") == 0


def test_a_high_risk_routine_in_a_batch_asks_its_approval(database_url: str) -> None:
    services = services_on(database_url)
    low = routine_with_token(services, "low")
    high = routine_with_token(services, "high")
    services.routines.change("high", {"risk": RiskLevel.HIGH}, ADMIN)
    low_run, high_run = services.trigger_batch.trigger_api_calls([
        ApiCall("low", low, {}, "k"), ApiCall("high", high, {}, "k")])
    assert isinstance(low_run, QueuedRun) and low_run.status == RunStatus.QUEUED
    assert isinstance(high_run, QueuedRun)
    assert high_run.status == RunStatus.AWAITING_APPROVAL
    assert fresh_count(database_url, "SELECT count(*) FROM approval WHERE run_id = :id",
                       id=high_run.run_id) == 1


def refuse_audit_entries(database_url: str, refuse: bool) -> None:
    """A real database error after a trigger's run is written: its audit entry is refused
    by a trigger of the database itself."""
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.begin() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if not refuse:
                conn.exec_driver_sql("DROP TRIGGER refuse_audit" + ("" if sqlite
                                                                    else " ON auditentry"))
            elif sqlite:
                conn.exec_driver_sql("CREATE TRIGGER refuse_audit BEFORE INSERT ON "
                                     "auditentry BEGIN SELECT RAISE(ABORT, 'refused'); END")
            else:
                conn.exec_driver_sql("CREATE OR REPLACE FUNCTION refuse() RETURNS trigger "
                                     "AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ "
                                     "LANGUAGE plpgsql")
                conn.exec_driver_sql("CREATE TRIGGER refuse_audit BEFORE INSERT ON "
                                     "auditentry FOR EACH ROW EXECUTE FUNCTION refuse()")
    finally:
        engine.dispose()


def test_a_database_error_mid_batch_fails_every_call_and_keeps_nothing(
    database_url: str,
) -> None:
    services = services_on(database_url)
    token = routine_with_token(services, "hook")
    before = fresh_count(database_url, "SELECT count(*) FROM auditentry")
    refuse_audit_entries(database_url, True)  # the audit entries are written after the runs
    calls = [ApiCall("hook", token, {"n": n}, f"key-{n}") for n in range(5)]
    with pytest.raises(DatabaseUnavailable) as failed:
        services.trigger_batch.trigger_api_calls(calls)
    assert failed.value.problem is DatabaseProblem.FAILED
    assert runs_of(database_url, "hook") == 0
    assert fresh_count(database_url, "SELECT count(*) FROM auditentry") == before

    refuse_audit_entries(database_url, False)
    retried = services.trigger_batch.trigger_api_calls(calls)  # the same keys: safe
    assert all(isinstance(o, QueuedRun) and not o.replayed for o in retried)
    assert runs_of(database_url, "hook") == 5


def test_the_single_path_keeps_nothing_either_when_its_audit_entry_fails(
    database_url: str,
) -> None:
    """The savepoint around a run's insert is inside the unit of work, never its commit."""
    services = services_on(database_url)
    routine_with_token(services, "hook")
    refuse_audit_entries(database_url, True)
    with pytest.raises(sqlalchemy.exc.IntegrityError if "sqlite" in database_url
                       else sqlalchemy.exc.SQLAlchemyError):
        services.triggers.trigger("hook", manual(ADMIN))
    assert runs_of(database_url, "hook") == 0


def test_a_token_revoked_elsewhere_is_refused_at_the_next_batch(database_url: str) -> None:
    services = services_on(database_url)
    token = routine_with_token(services, "hook")
    services.tokens.authenticate("hook", token)
    assert services.tokens.seen_live("hook", token)  # the door's pre-check is cached...
    elsewhere = services_on(database_url)  # another process: this cache is not told
    elsewhere.tokens.revoke("hook", "ci", ADMIN)
    outcome = services.trigger_batch.trigger_api_calls([ApiCall("hook", token, {}, None)])
    assert isinstance(outcome[0], InvalidToken)  # ...but the transaction checks again
    assert runs_of(database_url, "hook") == 0
    # Revoked in the same process, it leaves the cache at once.
    token2 = services.tokens.create("hook", "ci2", ADMIN)
    services.tokens.authenticate("hook", token2)
    services.tokens.revoke("hook", "ci2", ADMIN)
    assert not services.tokens.seen_live("hook", token2)


async def test_calls_that_arrive_together_share_one_commit(database_url: str) -> None:
    services = services_on(database_url)
    token = routine_with_token(services, "hook")
    groups: list[int] = []

    def commit(calls: Sequence[ApiCall]) -> list[Outcome]:
        groups.append(len(calls))
        return services.trigger_batch.trigger_api_calls(calls)

    group_commit: GroupCommit[ApiCall, Outcome] = GroupCommit(commit)
    answers = await asyncio.gather(*(group_commit.submit(ApiCall("hook", token, {"n": n},
                                                                 f"key-{n}"))
                                     for n in range(20)))
    assert len({a.run_id for a in answers if isinstance(a, QueuedRun)}) == 20
    assert sum(groups) == 20 and len(groups) < 20
    assert runs_of(database_url, "hook") == 20
