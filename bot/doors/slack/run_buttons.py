"""The buttons under a run's result message: View log and Retry (Slack block actions).

View log posts the run's log in the thread of its result message, where the whole
channel can read it next to the alert: a first message saying what it is, then
sections of at most 2,900 characters (Slack allows 3,000), five to a message and at
most four messages. Past that the earliest lines are left out, and the first message
says how many, naming `routines logs RUN_ID` which prints everything. A single line
longer than `LINE_CHARS` (as Slack receives it) is cut with a note. The workspace diff
follows in one last message. Retry asks the service to run the run again; a refusal
(paused, rate limited, not finished...) is told to the clicker alone.

A thin adapter: parse, call the services, render.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.run_log import chunk, log_lines
from bot.doors.slack.messages import Messages, escape_mrkdwn
from bot.doors.slack.words import say
from bot.errors import RoutinesError
from bot.services import Services
from bot.services.views import RunView
from runner.contract import Event

log = logging.getLogger(__name__)
LOG_SECTION_CHARS = 2900
LINE_CHARS = 1500
SECTIONS_PER_MESSAGE = 5
MAX_MESSAGES = 4
DIFF_CHARS = 2800


def log_thread(messages: Messages, view: RunView, events: list[Event]) -> list[dict[str, Any]]:
    """The messages that show a run's log (and then its diff), in posting order."""
    # Escaped before cutting and chunking, so each size is what Slack receives.
    lines = [_shown(line) for line in log_lines(events, limit=None)]
    chunks, dropped = chunk(lines, LOG_SECTION_CHARS, SECTIONS_PER_MESSAGE * MAX_MESSAGES)
    groups = [chunks[i:i + SECTIONS_PER_MESSAGE]
              for i in range(0, len(chunks), SECTIONS_PER_MESSAGE)] or [[]]
    thread = [messages.render("run_log_thread.json.j2", view=view, sections=group,
                              part=number, parts=len(groups), line_count=len(lines),
                              dropped=dropped)
              for number, group in enumerate(groups, start=1)]
    if view.run.diff:
        thread.append(messages.render(
            "run_log_diff.json.j2", view=view, diff=escape_mrkdwn(view.run.diff, DIFF_CHARS),
            cut=len(escape_mrkdwn(view.run.diff)) > DIFF_CHARS))
    return thread


def _shown(line: str) -> str:
    escaped = escape_mrkdwn(line)
    if len(escaped) <= LINE_CHARS:
        return escaped
    return escape_mrkdwn(line, LINE_CHARS) + f" [cut: {len(line):,} characters in all]"


class RunButtons:
    def __init__(self, services: Services, messages: Messages) -> None:
        self.services = services
        self.messages = messages

    async def view_log(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any],
                       client: AsyncWebClient) -> None:
        await ack()
        try:
            run_id = _run_id(action)
            view = await asyncio.to_thread(self.services.runs.get, run_id)
            events = await asyncio.to_thread(self.services.runs.events, run_id)
        except RoutinesError as exc:
            await self._tell(client, body, say(exc))
            return
        channel, thread_ts = _thread_of(view, body)
        for message in log_thread(self.messages, view, events):
            await client.chat_postMessage(channel=channel, thread_ts=thread_ts, **message)

    async def retry(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any],
                    client: AsyncWebClient) -> None:
        await ack()
        actor = body["user"]["id"]
        try:
            run_id = _run_id(action)
            failed = await asyncio.to_thread(self.services.runs.get, run_id)
            triggered = await asyncio.to_thread(self.services.triggers.retry, run_id, actor)
        except RoutinesError as exc:
            await self._tell(client, body, say(exc))
            return
        message = self.messages.render("run_retried.json.j2", view=triggered.view,
                                       retried=run_id, actor=actor,
                                       replayed=triggered.replayed)
        if triggered.replayed:
            await self._tell(client, body, message=message)
            return
        channel, thread_ts = _thread_of(failed, body)
        await client.chat_postMessage(channel=channel, thread_ts=thread_ts, **message)

    async def _tell(self, client: AsyncWebClient, body: dict[str, Any], text: str = "",
                    message: dict[str, Any] | None = None) -> None:
        """Only the clicker sees it (an ephemeral message where they clicked)."""
        log.info("button refused: %s", text or message)
        message = message or self.messages.render("error.json.j2", message=text)
        channel = _clicked_in(body)[0]
        if channel:
            await client.chat_postEphemeral(channel=channel, user=body["user"]["id"],
                                            **message)


def _run_id(action: dict[str, Any]) -> int:
    value = str(action.get("value", ""))
    if not value.isascii() or not value.isdigit():
        raise RoutinesError("That button does not name a run.")
    return int(value)


def _clicked_in(body: dict[str, Any]) -> tuple[str, str | None]:
    container = body.get("container") or {}
    channel = (body.get("channel") or {}).get("id") or container.get("channel_id") or ""
    return str(channel), container.get("message_ts")


def _thread_of(view: RunView, body: dict[str, Any]) -> tuple[str, str | None]:
    """The result message's thread: as recorded when it was posted, else where the click
    came from (a message posted before the bot recorded threads)."""
    if view.run.announce_channel and view.run.announce_ts:
        return view.run.announce_channel, view.run.announce_ts
    channel, ts = _clicked_in(body)
    return channel or view.routine.channel_id, ts
