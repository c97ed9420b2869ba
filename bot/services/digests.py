"""Digest subscriptions and the facts of a period, from the database.

The rules of what a digest says are in `bot.core.digest` (pure); this module stores who wants
one and when, and gathers the facts with a handful of queries: the totals from the daily and
hourly rollups and the runs of the partial hours (`bot.services.digest_totals`), and bounded
lists, so a digest over a million runs reads neither them all nor loads them into Python.
Methods are synchronous; async doors call them through `asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, not_, union_all, update
from sqlalchemy import select as columns
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core import schedule
from bot.core.digest import (
    DEFAULT_PERIOD,
    Digest,
    DigestFacts,
    DigestLimits,
    Listed,
    MissedFact,
    RunFact,
    UpcomingFact,
    UsageFact,
    build_digest,
    digest_cron,
    digest_owed,
)
from bot.core.digest_period import PeriodSplit, split_period
from bot.core.pricing import PriceTable
from bot.core.statuses import DIGEST_FAILURES, PENDING_STATUSES, STOPPED
from bot.errors import RoutinesError, TryAgain
from bot.services import digest_totals as totals
from bot.services.events import DigestScheduleChanged, EventBus
from bot.store import audit, rollups
from bot.store.database import Database
from bot.store.tables import DigestSubscription, MissedFire, Routine, Run, as_utc, utcnow


class NotSubscribed(RoutinesError, LookupError):
    def __init__(self, channel_id: str) -> None:
        super().__init__(f"<#{channel_id}> gets no digest; "
                         "`/routine digest here daily 09:00` subscribes it.")
        self.channel_id = channel_id


@dataclass(frozen=True)
class DigestOverview:
    """A channel's subscription, as `/routine digest here` shows it."""

    channel_id: str
    subscription: DigestSubscription | None
    next_sends: tuple[datetime, ...] = ()


class DigestService:
    """Subscriptions (one per channel) and the digest of a channel's current period."""

    def __init__(self, db: Database, prices: PriceTable, min_interval_seconds: int = 60,
                 limits: DigestLimits | None = None, bus: EventBus | None = None) -> None:
        self.db = db
        self.prices = prices
        self.min_interval_seconds = min_interval_seconds
        self.limits = limits or DigestLimits()
        self.bus = bus or EventBus()

    # Subscriptions -------------------------------------------------------------------

    def subscribe(self, channel_id: str, expression: str, timezone: str,
                  actor: str) -> tuple[DigestSubscription, schedule.Schedule]:
        """Validate, then save (a channel has one subscription: a new schedule replaces the
        old one, and the next digest still covers everything since the last one)."""
        if not channel_id:
            raise RoutinesError("Digests go to a channel: type the command in one.")
        when = schedule.parse_schedule(digest_cron(expression), timezone or "UTC",
                                       self.min_interval_seconds)
        with self.db.session() as session:
            row = self._find(session, channel_id)
            if row is None:
                row = DigestSubscription(channel_id=channel_id, schedule=when.expression,
                                         schedule_tz=when.timezone, created_by=actor)
                session.add(row)
            row.schedule, row.schedule_tz = when.expression, when.timezone
            try:
                session.flush()
            except IntegrityError:  # subscribed at the same moment elsewhere
                raise TryAgain("This channel was just subscribed; try again.") from None
            audit.record(session, actor, "digest_subscribed", None,
                         f"{channel_id} {when.expression} ({when.timezone})")
        self.bus.publish(DigestScheduleChanged(channel_id, when))
        return row, when

    def unsubscribe(self, channel_id: str, actor: str) -> None:
        with self.db.session() as session:
            row = self._find(session, channel_id)
            if row is None:
                raise NotSubscribed(channel_id)
            session.delete(row)
            audit.record(session, actor, "digest_unsubscribed", None, channel_id)
        self.bus.publish(DigestScheduleChanged(channel_id, None))

    def subscription(self, channel_id: str) -> DigestSubscription | None:
        with self.db.session() as session:
            return self._find(session, channel_id)

    def overview(self, channel_id: str) -> DigestOverview:
        row = self.subscription(channel_id)
        if row is None:
            return DigestOverview(channel_id, None)
        when = schedule.Schedule(row.schedule, row.schedule_tz)
        return DigestOverview(channel_id, row,
                              tuple(schedule.next_fire_times(when, utcnow(), 3)))

    def schedules(self) -> dict[str, schedule.Schedule]:
        """Every channel's digest schedule: the scheduler is rebuilt from these at start-up."""
        with self.db.session() as session:
            rows = session.exec(select(DigestSubscription)).all()
        return {r.channel_id: schedule.Schedule(r.schedule, r.schedule_tz) for r in rows}

    def owed(self, now: datetime) -> list[str]:
        """Channels whose digest fell due while the bot was down: one digest each, now."""
        with self.db.session() as session:
            rows = session.exec(select(DigestSubscription)).all()
        return [r.channel_id for r in rows if digest_owed(
            schedule.Schedule(r.schedule, r.schedule_tz), as_utc(r.last_sent_at), now)]

    # Digests -------------------------------------------------------------------------

    def compose(self, channel_id: str, now: datetime) -> Digest:
        """The channel's digest: since its last one (or since it subscribed); a channel
        without a subscription gets the last `DEFAULT_PERIOD`."""
        row = self.subscription(channel_id)
        start = as_utc(row.last_sent_at) if row else now - DEFAULT_PERIOD
        return build_digest(self.facts(channel_id, start, now), self.prices, self.limits)

    def mark_sent(self, digest: Digest) -> bool:
        """The digest reached the channel: the next one starts where it ended. Only if its
        period is still the next one (not marked from a later start, by another process
        that sent it too): whether this one moved it."""
        start, end = digest.start.astimezone(UTC), digest.end.astimezone(UTC)
        with self.db.session() as session:
            result = session.execute(update(DigestSubscription).where(
                col(DigestSubscription.channel_id) == digest.channel_id,
                col(DigestSubscription.last_sent_at) <= start,
                col(DigestSubscription.last_sent_at) < end).values(last_sent_at=end))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def facts(self, channel_id: str, start: datetime, end: datetime,
              from_rollups: bool = True) -> DigestFacts:
        """Everything that happened in [start, end), aggregated in the database: the whole
        days and hours of the period from the rollups, its partial hours from the runs.
        `from_rollups` False reads every run of the period instead (the same facts, slower: what
        the tests compare the rollups with)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        split = split_period(start, end) if from_rollups else PeriodSplit.whole(start, end)
        in_period = and_(col(Run.finished_at) >= start, col(Run.finished_at) < end)
        limits = self.limits
        with self.db.session() as session:
            groups = totals.groups(session, split, utcnow())
            names = {routine_id: group.routine for (routine_id, _), group in groups.items()}
            counts: dict[str, int] = {}
            usage: list[UsageFact] = []
            for (_, status), group in groups.items():
                counts[status] = counts.get(status, 0) + group.runs
                usage.append(UsageFact(group.routine, group.model, group.runs,
                                       group.input_tokens, group.output_tokens))
            no_report_total = sum(group.no_report for group in groups.values())
            status_of = totals.status_column(session)
            no_report = rollups.no_report(status_of)
            failures = and_(status_of.in_(DIGEST_FAILURES), not_(no_report))
            stopped = status_of.in_(STOPPED)
            failed, unreported, stopped_runs = self._latest(session, names, [
                (and_(in_period, failures), limits.failures),
                (and_(in_period, no_report), limits.no_report),
                (and_(in_period, stopped), limits.stopped)])
            return DigestFacts(
                channel_id=channel_id, start=start, end=end, status_counts=counts,
                in_progress=self._count(session, col(Run.status).in_(PENDING_STATUSES)),
                failures=Listed(failed, sum(counts.get(s, 0) for s in DIGEST_FAILURES)
                                - no_report_total),
                no_report=Listed(unreported, no_report_total),
                stopped=Listed(stopped_runs, sum(counts.get(s, 0) for s in STOPPED)),
                missed=self._missed(session, start, end, limits.missed),
                slowest=tuple(_run_fact(row, names) for row in totals.slowest(
                    session, split, limits.slowest, _RUN_FACT)),
                usage=tuple(usage),
                upcoming=self._upcoming(session, end, limits.upcoming),
            )

    # Queries -------------------------------------------------------------------------

    @staticmethod
    def _find(session: Session, channel_id: str) -> DigestSubscription | None:
        return session.exec(select(DigestSubscription).where(
            DigestSubscription.channel_id == channel_id)).first()

    @staticmethod
    def _count(session: Session, where: ColumnElement[bool]) -> int:
        return int(session.execute(select(func.count()).select_from(Run).where(where))
                   .scalar_one())

    @staticmethod
    def _latest(session: Session, names: dict[int, str],
                lists: list[tuple[ColumnElement[bool], int]]) -> list[tuple[RunFact, ...]]:
        """For each (where, limit): the latest `limit` runs matching `where`. One statement,
        each list its own ordered, limited part."""
        parts = [columns(literal(index).label("list"), *_RUN_FACT,
                         totals.duration_column(session).label("seconds"))
                 .where(where).order_by(col(Run.finished_at).desc(), col(Run.id).desc())
                 .limit(limit).subquery()
                 for index, (where, limit) in enumerate(lists) if limit > 0]
        found: list[list[RunFact]] = [[] for _ in lists]
        if parts:
            every = union_all(*(columns(part) for part in parts)).subquery()
            for index, *row in session.execute(columns(every).order_by(
                    every.c.list, every.c.finished_at.desc(), every.c.id.desc())):
                found[index].append(_run_fact(row, names))
        return [tuple(runs) for runs in found]

    @staticmethod
    def _missed(session: Session, start: datetime, end: datetime,
                limit: int) -> Listed[MissedFact]:
        """The latest `limit` missed fires of the period and how many there were: one
        statement (the count over the rows before the limit)."""
        recorded = and_(col(MissedFire.recorded_at) >= start, col(MissedFire.recorded_at) < end)
        rows = session.execute(
            select(Routine.name, MissedFire.scheduled_for, MissedFire.why, func.count().over())
            .join(Routine, col(Routine.id) == col(MissedFire.routine_id)).where(recorded)
            .order_by(col(MissedFire.scheduled_for).desc(), col(MissedFire.id).desc())
            .limit(max(limit, 1))).all()
        return Listed(tuple(MissedFact(name, as_utc(when), why)
                            for name, when, why, _ in rows[:limit]),
                      int(rows[0][3]) if rows else 0)

    @staticmethod
    def _upcoming(session: Session, after: datetime, limit: int) -> tuple[UpcomingFact, ...]:
        """Each active schedule's next fire after `after`, the soonest first."""
        rows = session.exec(select(Routine.name, Routine.schedule, Routine.schedule_tz).where(
            col(Routine.schedule).is_not(None), col(Routine.paused_at).is_(None))).all()
        next_fire: dict[schedule.Schedule, list[datetime]] = {}  # routines share schedules
        for _, expression, zone in rows:
            when = schedule.Schedule(expression or "", zone)
            if when not in next_fire:
                next_fire[when] = schedule.next_fire_times(when, after, 1)
        upcoming = [UpcomingFact(name, at) for name, expression, zone in rows
                    for at in next_fire[schedule.Schedule(expression or "", zone)]]
        return tuple(sorted(upcoming, key=lambda u: (u.at, u.routine))[:limit])


_RUN_FACT = (col(Run.id), col(Run.routine_id), col(Run.status), col(Run.finished_at),
             col(Run.reason))



def _run_fact(row: Any, names: dict[int, str]) -> RunFact:
    run_id, routine_id, status, finished_at, reason, duration = row
    return RunFact(run_id, names.get(routine_id, f"#{routine_id}"), str(status),
                   as_utc(finished_at), reason or "",
                   float(duration) if duration is not None else None)

