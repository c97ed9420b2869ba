"""The App Home door: publishes each user's Home tab and handles its buttons.

Buttons call the same service methods as `/routine run|pause|resume`, so the same rules
(roles, pause, kill switch, rate limit) hold; a refusal is shown to the clicker as a line at
the top of their Home.

Homes are refreshed after changes from any door and any process, without the service
knowing about Slack: a loop compares a cheap "change stamp" read from the database (the
newest audit entry and run, the runs still pending, the kill switch) every few seconds, and
republishes the Home of every recent viewer when it moved. Local changes wake it at once.
The viewers are a table, so a restart keeps them. One loop does all the publishing, so two
publishes for one user never race each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from bot.core import trigger
from bot.core.home_page import home_page, mention
from bot.core.statuses import PENDING_STATUSES
from bot.doors.slack.messages import Messages
from bot.errors import RoutinesError
from bot.services.service import RoutineOverview, RoutineService
from bot.store.database import Database
from bot.store.tables import AuditEntry, HomeViewer, KillSwitch, Run, utcnow

log = logging.getLogger(__name__)
ACTIONS = re.compile(r"^home_(run|pause|resume)$")
VIEWER_DAYS = 30  # a user who has not opened Home for this long is no longer republished
NOTICE_SECONDS = 120.0  # how long the answer to a click stays on the clicker's Home
PUBLISH_CONCURRENCY = 4

Snapshot = tuple[list[RoutineOverview], KillSwitch]


class HomeViewers:
    """Who opened the Home tab, and when (the `homeviewer` table)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def seen(self, user_id: str) -> None:
        try:
            with self.db.session() as session:
                viewer = session.get(HomeViewer, user_id) or HomeViewer(user_id=user_id)
                viewer.opened_at = utcnow()
                session.add(viewer)
        except IntegrityError:  # the same user's first open, recorded a moment ago elsewhere
            pass

    def since(self, when: datetime) -> list[str]:
        with self.db.session() as session:
            return list(session.exec(select(HomeViewer.user_id).where(
                col(HomeViewer.opened_at) >= when).order_by(col(HomeViewer.user_id))).all())


def change_stamp(db: Database) -> tuple[Any, ...]:
    """Moves whenever something a Home shows changes: a state change is audited, a run is
    queued (a new id), starts or finishes (the pending set), the kill switch flips."""
    with db.session() as session:
        audit = session.exec(select(func.max(AuditEntry.id))).one()
        newest_run = session.exec(select(func.max(Run.id))).one()
        pending = tuple(session.exec(select(Run.id, Run.status).where(
            col(Run.status).in_(PENDING_STATUSES)).order_by(col(Run.id))).all())
        switch = KillSwitch.current(session)
        switch_state = (switch.engaged, switch.changed_at)
    return audit, newest_run, pending, switch_state


class HomeTab:
    def __init__(self, service: RoutineService, messages: Messages, client: AsyncWebClient,
                 db: Database, refresh_seconds: float) -> None:
        self.service = service
        self.messages = messages
        self.client = client
        self.db = db
        self.viewers = HomeViewers(db)
        self.refresh_seconds = refresh_seconds
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stamp: tuple[Any, ...] | None = None
        self._due: set[str] = set()  # users whose Home is published at the next round
        self._notices: dict[str, tuple[str, float]] = {}
        self._published: dict[str, str] = {}  # user -> digest of the view they have

    def register(self, app: AsyncApp) -> None:
        app.event("app_home_opened")(self.opened)
        app.action(ACTIONS)(self.clicked)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._refresh_loop(), name="home-tab")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def changed(self) -> None:
        """Thread-safe: something changed here; refresh now rather than at the next poll."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # Listeners -----------------------------------------------------------------------

    async def opened(self, event: dict[str, Any]) -> None:
        if event.get("tab", "home") != "home":
            return  # the Messages tab also sends app_home_opened
        user_id = str(event["user"])
        await asyncio.to_thread(self.viewers.seen, user_id)
        self._due_now(user_id)

    async def clicked(self, ack: AsyncAck, body: dict[str, Any],
                      action: dict[str, Any]) -> None:
        await ack()
        user_id = str(body["user"]["id"])
        verb, name = str(action["action_id"]).removeprefix("home_"), str(action.get("value"))
        try:
            notice = await asyncio.to_thread(self._act, verb, name, user_id)
        except RoutinesError as exc:  # a refusal: the message says why, and who may
            notice = str(exc)
        except Exception:
            log.exception("Home %s of %s failed", verb, name)
            notice = f"Could not {verb} `{name}`: an internal error (it was logged)."
        self._notices[user_id] = (notice, time.monotonic() + NOTICE_SECONDS)
        await asyncio.to_thread(self.viewers.seen, user_id)
        self._due_now(user_id)

    def _act(self, verb: str, name: str, user_id: str) -> str:
        """The same service calls as the slash command; runs in a worker thread."""
        if verb == "run":
            view = self.service.trigger_run(name, trigger.manual(user_id)).view
            return str(self.messages.render("run_queued.json.j2", run=view.run,
                                            routine=view.routine)["text"])
        if verb == "pause":
            routine = self.service.pause_routine(name, user_id)
        else:
            routine = self.service.resume_routine(name, user_id)
        return str(self.messages.render("routine_paused.json.j2", routine=routine)["text"])

    def _due_now(self, user_id: str) -> None:
        self._due.add(user_id)
        self._wake.set()

    # Publishing ----------------------------------------------------------------------

    def view_for(self, snapshot: Snapshot, user_id: str, now: datetime) -> dict[str, Any]:
        overviews, kill_switch = snapshot
        notice, until = self._notices.get(user_id, ("", 0.0))
        if notice and until < time.monotonic():
            del self._notices[user_id]
            notice = ""
        page = home_page(overviews, kill_switch, user_id, now, notice)
        return self.messages.render("app_home.json.j2", page=page, mention=mention)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the database may be down for a while: keep trying
                log.warning("Home refresh failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def refresh(self) -> None:
        """One round: every recent viewer if the stamp moved; users due in any case."""
        due, self._due = self._due, set()
        stamp = await asyncio.to_thread(change_stamp, self.db)
        moved = self._stamp is not None and stamp != self._stamp
        self._stamp = stamp
        users = set(due)
        if moved:
            since = utcnow() - timedelta(days=VIEWER_DAYS)
            users.update(await asyncio.to_thread(self.viewers.since, since))
        if users:
            await self._publish(sorted(users), always=due)

    async def _publish(self, users: Iterable[str], always: set[str]) -> None:
        snapshot: Snapshot = await asyncio.to_thread(
            lambda: (self.service.list_routines(), self.service.kill_switch()))
        now = utcnow()
        slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def publish(user_id: str) -> None:
            view = self.view_for(snapshot, user_id, now)
            digest = hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()
            if user_id not in always and self._published.get(user_id) == digest:
                return  # they already have exactly this
            async with slots:
                try:
                    await self.client.views_publish(user_id=user_id, view=view)
                except SlackApiError as exc:
                    log.warning("views.publish for %s failed: %s", user_id,
                                exc.response.get("error"))
                    return
            self._published[user_id] = digest

        await asyncio.gather(*(publish(user_id) for user_id in users))
