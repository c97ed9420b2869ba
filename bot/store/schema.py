"""The database's schema version: a chain of Alembic migrations in `bot/store/migrations`.

Every start brings the database to the chain's head before anything reads it:
- a database with no tables is created from the models and stamped at the head (Alembic's
  advice for new databases; CI proves the models and the head agree);
- a database an earlier version made without migrations is recognised by its columns,
  stamped at the revision it matches, then upgraded;
- a database at a revision this version does not know (a newer version wrote it) is
  refused: `DatabaseNewer`, before anything is changed.
On PostgreSQL the upgrade holds an advisory lock, so processes starting together upgrade once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from bot.errors import DatabaseBehind, DatabaseNewer
from bot.store.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")
# Revisions an unversioned database can be at, newest first, by a column only it has.
_UNVERSIONED = (("0002", "run", "failure_kind"), ("0001", "run", "id"))
_LOCK_KEY = 7_305_011  # the advisory lock's key on PostgreSQL: any constant of our own


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    description: str


@dataclass(frozen=True)
class Upgrade:
    before: str | None  # None: the database was empty
    after: str


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    found = _scripts().get_current_head()
    assert found is not None, "the migration chain has a head"
    return found


def history() -> list[Revision]:
    """The chain, oldest first."""
    revisions = [Revision(script.revision, _down(script.down_revision),
                          (script.doc or "").strip().splitlines()[0] if script.doc else "")
                 for script in _scripts().walk_revisions()]
    return list(reversed(revisions))


def current(db: Database) -> str | None:
    """The revision the database is at; None when it has none (empty, or made before
    migrations existed)."""
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_head(db: Database) -> None:
    """For commands that must not change the schema: the database is at the head, or
    `DatabaseNewer` / `DatabaseBehind` says what to do."""
    at, target = current(db), head()
    if at == target:
        return
    if at is not None and at not in {r.revision for r in history()}:
        raise DatabaseNewer(current=at, head=target)
    raise DatabaseBehind(current=at, head=target)


def upgrade(db: Database) -> Upgrade:
    """Bring the database to the head (see the module's docstring)."""
    target = head()
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        before = MigrationContext.configure(connection).get_current_revision()
        config = _config(connection)
        if before is None:
            found = _unversioned_revision(connection)
            if found is None:
                SQLModel.metadata.create_all(connection)
                command.stamp(config, target)
                return Upgrade(None, target)
            command.stamp(config, found)
            before = found
        elif before not in {r.revision for r in history()}:
            raise DatabaseNewer(current=before, head=target)
        if before != target:
            command.upgrade(config, target)
    return Upgrade(before, target)


def _unversioned_revision(connection: Connection) -> str | None:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    for revision, table, column in _UNVERSIONED:
        if table in tables and column in {c["name"] for c in inspector.get_columns(table)}:
            return revision
    return None


def _down(value: str | Sequence[str] | None) -> str | None:
    """A merge revision has several parents: shown comma-separated."""
    if value is None or isinstance(value, str):
        return value
    return ",".join(value)
