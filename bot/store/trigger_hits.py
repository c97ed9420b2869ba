"""The trigger rate limit's memory: one `TriggerHit` row per accepted trigger.

In the database, not in a process: a restart must not forgive a burst, and every process
on one database must share one count. Exact under concurrency because the count and the
hits it admits are in one transaction that holds the routine's lock first:

* PostgreSQL: a transaction-level advisory lock per routine (`pg_advisory_xact_lock`,
  keyed by `LOCK_CLASS` and the routine id, taken in id order so two batches cannot
  deadlock). It is released by the commit, after the hits are written, so the next
  transaction's count sees them. The routine row itself is not locked: a run's foreign
  key to it would then wait behind the whole batch.
* SQLite: one process (`bot.store.one_process`); the prune below is the transaction's
  first write, so it takes the database's write lock before the count is read, and no
  thread of the process can count between the count and the hits.

Hits older than the window are deleted as the routine's next count is taken (its own
rows only, through the (routine_id, at) index): the table stays the size of one window.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

import sqlalchemy
from sqlalchemy import delete, func, insert
from sqlmodel import Session

from bot.core.ratelimit import WINDOW, RateWindow
from bot.store.tables import TriggerHit, as_utc

HIT_TABLE: sqlalchemy.Table = TriggerHit.__table__  # type: ignore[attr-defined]
# The first key of the two-key advisory locks: this lock's own space (2-key locks never
# meet the 1-key locks another part of the bot might take).
LOCK_CLASS = 0x7472  # "tr"
# One round trip for any number of routines; the subquery's order is the order the locks
# are taken in.
_LOCK_IN_ORDER = sqlalchemy.text(
    "SELECT pg_advisory_xact_lock(:space, id)::text FROM "
    "(SELECT unnest(CAST(:ids AS integer[])) AS id ORDER BY 1) AS routines")


def windows(session: Session, limits: dict[int, int], now: datetime,
            window: timedelta = WINDOW) -> dict[int, RateWindow]:
    """Each routine's window ending `now` (`limits`: routine id -> triggers allowed), read
    under its lock, its older hits pruned: three statements for any number of routines."""
    ids = sorted(limits)
    if not ids:
        return {}
    lock(session, ids)
    since = now - window
    session.execute(delete(HIT_TABLE).where(HIT_TABLE.c.routine_id.in_(ids),
                                            HIT_TABLE.c.at <= since))
    counted = {routine_id: (count, oldest) for routine_id, count, oldest in session.execute(
        sqlalchemy.select(HIT_TABLE.c.routine_id, func.count(), func.min(HIT_TABLE.c.at))
        .where(HIT_TABLE.c.routine_id.in_(ids), HIT_TABLE.c.at > since)
        .group_by(HIT_TABLE.c.routine_id))}
    found: dict[int, RateWindow] = {}
    for routine_id in ids:
        count, oldest = counted.get(routine_id, (0, None))
        found[routine_id] = RateWindow(limits[routine_id], now, count,
                                       as_utc(oldest) if oldest is not None else None, window)
    return found


def lock(session: Session, routine_ids: Collection[int]) -> None:
    """Hold these routines' rate-limit locks until the transaction ends (PostgreSQL; on
    SQLite the write lock the prune takes serialises instead)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(_LOCK_IN_ORDER, {"space": LOCK_CLASS, "ids": sorted(routine_ids)}).all()


def record(session: Session, hits: Iterable[tuple[int, datetime]]) -> None:
    """The accepted triggers' hits (routine id, when), in one multi-row INSERT."""
    rows = [{"routine_id": routine_id, "at": at} for routine_id, at in hits]
    if rows:
        session.execute(insert(HIT_TABLE), rows)
