"""One-holder leases (`Lease` rows, such as the scheduler's): take, renew, release and read,
one statement each, so two processes racing for one never both win.

`take` is an upsert: it inserts the lease, or takes it over only where it is this holder's
already or is past its time (`ON CONFLICT (name) DO UPDATE ... WHERE`), in SQLite's or
PostgreSQL's dialect as the session's is. Times come from the caller's clock: the hosts
sharing a database must agree on the time within a small part of a lease (NTP)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from bot.store.tables import Lease, as_utc

_TABLE: Any = Lease.__table__  # type: ignore[attr-defined]


def take(session: Session, name: str, holder: str, now: datetime, until: datetime) -> bool:
    """Hold `name` until `until` if it is free, past its time or already this holder's
    (then it is renewed, keeping when it was taken). Whether this holder has it now."""
    dialect = session.get_bind().dialect.name
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(_TABLE)
    statement = insert.values(name=name, holder=holder, until=until, taken_at=now)
    kept = _TABLE.c.holder == statement.excluded.holder
    statement = statement.on_conflict_do_update(
        index_elements=[_TABLE.c.name],
        set_={"holder": statement.excluded.holder, "until": statement.excluded.until,
              "taken_at": case((kept, _TABLE.c.taken_at), else_=statement.excluded.taken_at)},
        where=or_(kept, _TABLE.c.until < statement.excluded.taken_at))
    # A row comes back only if inserted or updated (rowcount is not told apart on every
    # driver: psycopg counts a conflict left alone as one).
    return session.execute(statement.returning(_TABLE.c.name)).first() is not None


def renew(session: Session, name: str, holder: str, now: datetime, until: datetime) -> bool:
    """Move the end of a lease this holder still has (not past its time) to `until`."""
    result = session.execute(update(_TABLE).where(
        _TABLE.c.name == name, _TABLE.c.holder == holder, _TABLE.c.until >= now)
        .values(until=until))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, name: str, holder: str) -> bool:
    """Give the lease up (a clean stop), so another process takes it without waiting."""
    result = session.execute(delete(_TABLE).where(_TABLE.c.name == name,
                                                  _TABLE.c.holder == holder))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def holder(session: Session, name: str) -> tuple[str, datetime, datetime] | None:
    """Who holds `name` (holder, until, taken_at); the row stays after its time, so compare
    `until` with now to know whether it is held still."""
    row = session.execute(select(_TABLE.c.holder, _TABLE.c.until, _TABLE.c.taken_at)
                          .where(_TABLE.c.name == name)).first()
    if row is None:
        return None
    return str(row[0]), as_utc(row[1]), as_utc(row[2])
