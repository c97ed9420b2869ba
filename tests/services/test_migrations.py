"""The schema as a migration chain: a database made at the first migration and filled with
rows of every table is upgraded to the head and read back intact; the head and the models
agree; an older unversioned database is recognised; a newer one is refused unchanged.
Marked `postgres`: CI runs them again on PostgreSQL (native enum types included)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, col, select

from bot.core.pricing import PriceTable
from bot.core.statuses import (
    ApprovalKind,
    ApprovalStatus,
    BusyPolicy,
    RiskLevel,
    RunStatus,
    StopKind,
    TriggerKind,
)
from bot.doors import cli
from bot.errors import DatabaseNewer
from bot.services.digests import DigestService
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import (
    ApiToken,
    Approval,
    AuditEntry,
    DigestSubscription,
    GitHubSubscription,
    HomeViewer,
    KillSwitch,
    MissedFire,
    Routine,
    Run,
    RunEvent,
    SpendCap,
    as_utc,
)
from runner.egress_policy import NetworkMode
from tests.support.rollups import assert_rollups_agree

pytestmark = pytest.mark.postgres
AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


def migrate_to(db: Database, revision: str) -> None:
    """Run the chain itself up to `revision` (not the empty-database shortcut)."""
    with db.engine.begin() as connection:
        command.upgrade(schema._config(connection), revision)


def first_version_rows() -> dict[str, list[dict[str, Any]]]:
    """One row or more in every table of the first schema, in its column names."""
    routine = dict(id=1, name="nightly", prompt="do it", repo_url="https://github.com/o/r",
                   branch="main", setup_script="make", channel_id="C1", model="claude-x",
                   timeout_seconds=600, max_turns=20, payload_template="{{ x }}",
                   schedule="daily 09:00", schedule_tz="Europe/Paris", last_fire_at=AT,
                   created_by="U1", created_at=AT, paused_at=None, paused_by=None,
                   owners="U1", approvers="subteam:S1", risk=RiskLevel.MEDIUM.name,
                   max_runs_per_day=5, max_concurrent=1, busy_policy=BusyPolicy.SKIP.name,
                   max_tokens_per_run=5000, retry_attempts=2, retry_backoff_seconds=30,
                   retry_agent_failures=True)
    run = dict(routine_id=1, status=RunStatus.KILLED.name, trigger_kind=TriggerKind.API.name,
               triggered_by="api", trigger_ref="key-1", payload_hash="abc", prompt="do it",
               queued_at=AT, started_at=AT, finished_at=AT, container_id="c1", summary="s",
               reason="stopped", input_tokens=10, output_tokens=2, diff="+x", notified_at=AT,
               attempt=1, retry_of=None, not_before=None, held_at=None,
               stop_requested_by="kill switch", commit_sha=None, published_ref=None,
               announce_channel="C1", announce_ts="1.2")
    return {
        "routine": [routine],
        "run": [dict(run, id=1), dict(run, id=2, status=RunStatus.CANCELLED.name,
                                      trigger_ref="key-2", stop_requested_by="U2",
                                      retry_of=1)],
        "runevent": [dict(id=1, run_id=1, seq=1, type="started", data='{"type": "started"}',
                          created_at=AT)],
        "approval": [dict(id=1, run_id=1, kind=ApprovalKind.PUBLISH.name,
                          status=ApprovalStatus.APPROVED.name, requested_by="U1",
                          requested_at=AT, expires_at=AT, decided_by="U2", decided_at=AT,
                          reason="", channel_id="C1", message_ts="1.3")],
        "apitoken": [dict(id=1, routine_id=1, name="ci", token_hash="h" * 64,
                          created_by="U1", created_at=AT, revoked_at=None, revoked_by=None,
                          last_used_at=AT)],
        "githubsubscription": [dict(id=1, routine_id=1, spec='{"repo": "o/r"}',
                                    created_by="U1", created_at=AT)],
        "missedfire": [dict(id=1, routine_id=1, scheduled_for=AT, recorded_at=AT,
                            why="paused")],
        "killswitch": [dict(id=1, engaged=False, reason="", changed_by="U9", changed_at=AT)],
        "spendcap": [dict(id=1, cap_usd=12.5, changed_by="U9", changed_at=AT)],
        "homeviewer": [dict(user_id="U1", opened_at=AT)],
        "digestsubscription": [dict(id=1, channel_id="C1", schedule="daily 08:00",
                                    schedule_tz="UTC", last_sent_at=AT, created_by="U1",
                                    created_at=AT)],
        "auditentry": [dict(id=1, at=AT, actor="U1", action="routine.create",
                            routine="nightly", details=json.dumps({"k": "v"}))],
    }


def insert_first_version_rows(db: Database) -> None:
    """Inserted through the tables as the database has them, not through today's models."""
    rows = first_version_rows()
    with db.engine.begin() as connection:
        tables = sa.MetaData()
        tables.reflect(connection)
        assert set(rows) == set(tables.tables) - {"alembic_version"}, "a row in every table"
        for name in ("routine", "run", "runevent", "approval", "apitoken",
                     "githubsubscription", "missedfire", "killswitch", "spendcap",
                     "homeviewer", "digestsubscription", "auditentry"):
            table = tables.tables[name]
            unknown = {key for row in rows[name] for key in row} - set(table.c.keys())
            assert not unknown, f"{name}: the first schema has no {unknown}"
            connection.execute(table.insert(), rows[name])


def model_differences(db: Database) -> list[Any]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def test_first_schema_filled_then_upgraded_reads_back_intact(db: Database) -> None:
    migrate_to(db, "0001")
    insert_first_version_rows(db)

    done = schema.upgrade(db)

    assert (done.before, done.after) == ("0001", schema.head())
    assert schema.current(db) == schema.head()
    with db.session() as session:
        routine = session.exec(select(Routine)).one()
        assert (routine.name, routine.risk, routine.busy_policy, routine.owners,
                routine.max_tokens_per_run, routine.retry_agent_failures) == (
            "nightly", RiskLevel.MEDIUM, BusyPolicy.SKIP, "U1", 5000, True)
        assert (routine.network, routine.network_hosts) == (NetworkMode.TRUSTED, "")
        assert routine.managed_by is None  # made before files could manage it
        runs = {run.id: run for run in session.exec(select(Run))}
        killed, cancelled = runs[1], runs[2]
        # The "kill switch" sentinel became a kind; a name stayed who asked.
        assert (killed.status, killed.stop_kind, killed.stop_requested_by) == (
            RunStatus.KILLED, StopKind.KILL_SWITCH, None)
        assert (cancelled.stop_kind, cancelled.stop_requested_by, cancelled.retry_of) == (
            StopKind.CANCEL, "U2", 1)
        assert killed.failure_kind is None  # stored before kinds existed
        assert (killed.trigger_kind, killed.input_tokens, killed.diff,
                as_utc(killed.finished_at or AT.replace(year=1))) == (
            TriggerKind.API, 10, "+x", AT)
        assert session.exec(select(RunEvent)).one().data == '{"type": "started"}'
        approval = session.exec(select(Approval)).one()
        assert (approval.kind, approval.status) == (ApprovalKind.PUBLISH, ApprovalStatus.APPROVED)
        assert session.exec(select(ApiToken)).one().token_hash == "h" * 64
        assert session.exec(select(GitHubSubscription)).one().spec == '{"repo": "o/r"}'
        assert session.exec(select(MissedFire)).one().why == "paused"
        assert session.exec(select(KillSwitch)).one().changed_by == "U9"
        assert session.exec(select(SpendCap)).one().cap_usd == 12.5
        assert session.exec(select(HomeViewer)).one().user_id == "U1"
        assert session.exec(select(DigestSubscription)).one().schedule == "daily 08:00"
        assert json.loads(session.exec(select(AuditEntry)).one().details) == {"k": "v"}


def test_an_upgrade_builds_the_rollups_of_the_runs_already_stored(db: Database) -> None:
    migrate_to(db, "0007")
    statuses = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.RUNNING, RunStatus.KILLED]
    routine = {key: value for key, value in first_version_rows()["routine"][0].items()
               if key not in {"schedule", "last_fire_at"}}
    with db.engine.begin() as connection:  # through the tables as 0007 has them
        tables = sa.MetaData()
        tables.reflect(connection)
        connection.execute(tables.tables["routine"].insert(), [routine])
        connection.execute(tables.tables["run"].insert(), [dict(
            routine_id=1, status=statuses[i % 4].name, trigger_kind=TriggerKind.API.name,
            triggered_by="api", trigger_ref=f"old-{i}", prompt="p", queued_at=AT,
            started_at=AT + timedelta(minutes=7 * i),
            finished_at=None if i % 4 == 2 else AT + timedelta(minutes=7 * i + 3, seconds=i),
            input_tokens=100 + i, output_tokens=i, diff="", attempt=1,
            failure_kind="NO_SELF_REPORT" if i % 8 == 1 else None) for i in range(40)])

    schema.upgrade(db)

    assert assert_rollups_agree(db) == 30  # the finished ones
    service = DigestService(db, PriceTable.default())
    start, end = AT - timedelta(minutes=20), AT + timedelta(hours=5, minutes=10)
    assert service.facts("C1", start, end) == service.facts("C1", start, end,
                                                            from_rollups=False)


def test_an_upgrade_keeps_the_first_of_missed_fires_recorded_twice(db: Database) -> None:
    """Before 0010 two processes could record one missed fire twice: the earliest stays."""
    migrate_to(db, "0009")
    routine = {key: value for key, value in first_version_rows()["routine"][0].items()
               if key not in {"schedule", "last_fire_at"}}
    with db.engine.begin() as connection:  # through the tables as 0009 has them
        tables = sa.MetaData()
        tables.reflect(connection)
        connection.execute(tables.tables["routine"].insert(), [routine])
        connection.execute(tables.tables["missedfire"].insert(), [
            dict(routine_id=1, scheduled_for=AT + timedelta(minutes=minute), why=why,
                 recorded_at=AT) for minute, why in ((0, "first"), (0, "again"), (1, "one"))])

    schema.upgrade(db)

    with db.session() as session:
        rows = session.exec(select(MissedFire.scheduled_for, MissedFire.why)
                            .order_by(col(MissedFire.scheduled_for))).all()
    assert [why for _, why in rows] == ["first", "one"]


def test_the_migration_head_and_the_models_agree(db: Database) -> None:
    migrate_to(db, "head")
    assert model_differences(db) == []


def test_an_empty_database_is_created_at_the_head(db: Database) -> None:
    done = schema.upgrade(db)
    assert (done.before, done.after) == (None, schema.head())
    assert model_differences(db) == []
    assert schema.upgrade(db) == schema.Upgrade(schema.head(), schema.head())  # idempotent


@pytest.mark.parametrize("made_at", ["0001", "0002"])
def test_a_database_made_before_migrations_is_recognised_and_upgraded(
        db: Database, made_at: str) -> None:
    migrate_to(db, made_at)
    with db.engine.begin() as connection:  # what an earlier version's create_all left
        connection.exec_driver_sql("DROP TABLE alembic_version")
    assert schema.current(db) is None

    done = schema.upgrade(db)

    assert (done.before, done.after) == (made_at, schema.head())
    assert model_differences(db) == []


def test_a_newer_database_is_refused_and_left_unchanged(db: Database) -> None:
    schema.upgrade(db)
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")

    with pytest.raises(DatabaseNewer) as refused:
        schema.upgrade(db)

    assert (refused.value.current, refused.value.head) == ("9999", schema.head())
    assert "9999" in str(refused.value) and schema.head() in str(refused.value)
    assert schema.current(db) == "9999"


def test_postgres_enum_types_hold_every_member(db: Database) -> None:
    """Native enum types on PostgreSQL must learn new members by migration; SQLite has
    none to check."""
    migrate_to(db, "head")
    if db.engine.dialect.name != "postgresql":
        assert db.engine.dialect.name == "sqlite"
        return
    with db.engine.connect() as connection:
        labels: dict[str, set[str]] = {}
        for typname, label in connection.exec_driver_sql(
                "SELECT t.typname, e.enumlabel FROM pg_type t "
                "JOIN pg_enum e ON e.enumtypid = t.oid"):
            labels.setdefault(typname, set()).add(label)
    for table in SQLModel.metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, sa.Enum):
                assert labels[str(column.type.name)] == set(column.type.enums), column


def test_the_db_command_upgrades_and_tells_where_it_stands(
        database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    head = schema.head()

    assert cli.main(["db", "current"]) == 0
    assert capsys.readouterr().out.strip() == f"none (head {head})"
    assert cli.main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == f"upgraded from an empty database to {head}"
    assert cli.main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == f"already at {head}"
    assert cli.main(["db", "current"]) == 0
    assert capsys.readouterr().out.strip() == f"{head} (head {head}, up to date)"
    assert cli.main(["db", "history"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["0001", "0002", "0003", "0004", "0005",
                                                  "0006", "0007", "0008", "0009",
                                                  "0010", "0011"]
    assert lines[0].startswith("0001  The first schema")


def test_an_upgrade_refuses_a_newer_database_in_one_line(
        database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(database_url)
    schema.upgrade(db)
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    db.close()
    monkeypatch.setenv("DATABASE_URL", database_url)

    assert cli.main(["db", "upgrade"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("routines: the database is at migration 9999")
