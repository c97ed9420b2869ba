"""The only module that creates engines and sessions (SQLite by default, PostgreSQL by URL).

A database that is locked (another SQLite writer) or unreachable (PostgreSQL stopped) is
`DatabaseUnavailable`, raised by `session()` after its unit of work was rolled back, so
the doors answer 503 and nothing is half-written. Waits are bounded below Slack's
3-second acknowledgement: SQLite waits `BUSY_SECONDS` for a lock, PostgreSQL
`CONNECT_SECONDS` for a connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import Session, create_engine

from bot.errors import DatabaseProblem, DatabaseUnavailable
from bot.store import tables as models  # noqa: F401 - registers the tables on SQLModel.metadata

BUSY_SECONDS = 2.0
CONNECT_SECONDS = 2


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.engine = create_engine(url, connect_args={"check_same_thread": False,
                                                           "timeout": BUSY_SECONDS})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            connect = ({"connect_timeout": CONNECT_SECONDS}
                       if url.startswith("postgresql") else {})
            self.engine = create_engine(url, pool_pre_ping=True, connect_args=connect)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error; a database locked
        or out of reach is `DatabaseUnavailable`."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    with contextlib.suppress(SQLAlchemyError):  # a dead connection too
                        session.rollback()
                    raise
        except DBAPIError as exc:
            problem = outage(exc)
            if problem is None:
                raise
            raise DatabaseUnavailable(problem) from exc

    @contextmanager
    def savepoint(self, session: Session) -> Iterator[None]:
        """A savepoint in the session's transaction: an error inside undoes only what was
        done inside, and the transaction goes on (a group commit refuses one call, not all).

        On SQLite the driver opens its transaction only at the first write, and a SAVEPOINT
        outside one is a transaction of its own, its RELEASE a commit: the rows inside
        would be on disk before the unit of work ends, and stay there if it then failed.
        So the driver's transaction is opened first."""
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            driver = connection.connection.dbapi_connection
            if driver is not None and not driver.in_transaction:
                connection.exec_driver_sql("BEGIN")
        with session.begin_nested():
            yield

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()


def outage(exc: DBAPIError) -> DatabaseProblem | None:
    """The outage an error of the driver means, or None for any other error (a bug, a
    constraint): a lock held too long, a connection refused, lost or timed out."""
    text = str(exc.orig).lower()
    if "database is locked" in text or "database is busy" in text:
        return DatabaseProblem.LOCKED
    if exc.connection_invalidated:
        return DatabaseProblem.UNREACHABLE
    if type(exc.orig).__module__.startswith("psycopg") and type(exc.orig).__name__ in {
            "OperationalError", "InterfaceError"}:
        return DatabaseProblem.UNREACHABLE  # connection refused, closed, server shut down
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web handlers read while a run's events are being written.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


__all__ = ["Database", "Engine"]
