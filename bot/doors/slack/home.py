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
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import trigger
from bot.core.home_page import home_page, mention
from bot.doors.slack.messages import Messages
from bot.doors.slack.words import say
from bot.errors import RoutinesError
from bot.execution.wake import WakeLoop
from bot.services import Services
from bot.services.home import Snapshot
from bot.services.workers import WorkerView
from bot.store.tables import utcnow

log = logging.getLogger(__name__)
ACTIONS = re.compile(r"^home_(run|pause|resume)$")
VIEWER_DAYS = 30  # a user who has not opened Home for this long is no longer republished
NOTICE_SECONDS = 120.0  # how long the answer to a click stays on the clicker's Home
PUBLISH_CONCURRENCY = 4
MIN_GAP_SECONDS = 0.5  # between two refreshes, however often changes wake it

class HomeTab:
    def __init__(self, services: Services, messages: Messages, client: AsyncWebClient,
                 refresh_seconds: float, lease_seconds: float = 30.0) -> None:
        self.services = services
        self.lease_seconds = lease_seconds  # whether a worker's heartbeat is recent enough
        self.home = services.home
        self.messages = messages
        self.client = client
        self.loop = WakeLoop("home-tab", self.refresh, refresh_seconds, MIN_GAP_SECONDS)
        self._stamp: tuple[Any, ...] | None = None
        self._due: set[str] = set()  # users whose Home is published at the next round
        self._notices: dict[str, tuple[str, float]] = {}
        self._published: dict[str, str] = {}  # user -> digest of the view they have

    def register(self, app: AsyncApp) -> None:
        app.event("app_home_opened")(self.opened)
        app.action(ACTIONS)(self.clicked)

    async def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()

    def changed(self) -> None:
        """Thread-safe: something changed here; refresh now rather than at the next poll."""
        self.loop.wake()

    # Listeners -----------------------------------------------------------------------

    async def opened(self, event: dict[str, Any]) -> None:
        if event.get("tab", "home") != "home":
            return  # the Messages tab also sends app_home_opened
        user_id = str(event["user"])
        await asyncio.to_thread(self.home.seen, user_id)
        self._due_now(user_id)

    async def clicked(self, ack: AsyncAck, body: dict[str, Any],
                      action: dict[str, Any]) -> None:
        await ack()
        user_id = str(body["user"]["id"])
        verb, name = str(action["action_id"]).removeprefix("home_"), str(action.get("value"))
        try:
            notice = await asyncio.to_thread(self._act, verb, name, user_id)
        except RoutinesError as exc:  # a refusal: the message says why, and who may
            notice = say(exc)
        except Exception:
            log.exception("Home %s of %s failed", verb, name)
            notice = f"Could not {verb} `{name}`: an internal error (it was logged)."
        self._notices[user_id] = (notice, time.monotonic() + NOTICE_SECONDS)
        await asyncio.to_thread(self.home.seen, user_id)
        self._due_now(user_id)

    def _act(self, verb: str, name: str, user_id: str) -> str:
        """The same service calls as the slash command; runs in a worker thread."""
        if verb == "run":
            view = self.services.triggers.trigger(name, trigger.manual(user_id)).view
            return str(self.messages.render("run_queued.json.j2", run=view.run,
                                            routine=view.routine)["text"])
        if verb == "pause":
            routine = self.services.routines.pause(name, user_id)
        else:
            routine = self.services.routines.resume(name, user_id)
        return str(self.messages.render("routine_paused.json.j2", routine=routine)["text"])

    def _due_now(self, user_id: str) -> None:
        self._due.add(user_id)
        self.loop.wake_here()

    # Publishing ----------------------------------------------------------------------

    def view_for(self, snapshot: Snapshot, user_id: str, now: datetime,
                 workers: Sequence[WorkerView] = ()) -> dict[str, Any]:
        """The user's Home; `workers` (read once per round) are shown to admins only."""
        overviews, kill_switch = snapshot
        notice, until = self._notices.get(user_id, ("", 0.0))
        if notice and until < time.monotonic():
            del self._notices[user_id]
            notice = ""
        shown = workers if self.home.roles.is_admin(user_id) else None
        page = home_page(overviews, kill_switch, user_id, now, notice, workers=shown)
        return self.messages.render("app_home.json.j2", page=page, mention=mention)

    async def refresh(self) -> None:
        """One round: every recent viewer if the stamp moved; users due in any case."""
        due, self._due = self._due, set()
        stamp = await asyncio.to_thread(self.home.change_stamp)
        moved = self._stamp is not None and stamp != self._stamp
        self._stamp = stamp
        users = set(due)
        if moved:
            since = utcnow() - timedelta(days=VIEWER_DAYS)
            users.update(await asyncio.to_thread(self.home.viewers_since, since))
        if users:
            await self._publish(sorted(users), always=due)

    async def _publish(self, users: Iterable[str], always: set[str]) -> None:
        snapshot = await asyncio.to_thread(self.home.snapshot)
        workers = await asyncio.to_thread(self.services.workers.all, self.lease_seconds)
        now = utcnow()
        slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def publish(user_id: str) -> None:
            view = self.view_for(snapshot, user_id, now, workers)
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
