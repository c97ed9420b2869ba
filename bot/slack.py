"""Slack adapter: bolt listeners that parse, call the service, and render templates.

No rule lives here. Blocking service calls go through `asyncio.to_thread` so one slow
database call never delays another user's acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot import commands, trigger
from bot.digests import DigestService
from bot.errors import RoutinesError, ValidationFailed
from bot.messages import Messages, escape_mrkdwn
from bot.models import utcnow
from bot.routine import RoutineDraft
from bot.run_log import chunk, log_lines
from bot.service import RoutineService, RunView
from bot.settings import Settings

log = logging.getLogger(__name__)
CREATE_CALLBACK = "routine_create"
LOG_SECTION_CHARS = 2900
LOG_SECTIONS = 40


def build_slack_app(settings: Settings, service: RoutineService, messages: Messages,
                    client: AsyncWebClient, digests: DigestService | None = None) -> AsyncApp:
    app = AsyncApp(
        client=client,
        signing_secret=settings.slack_signing_secret or None,
        request_verification_enabled=not settings.socket_mode,
        logger=log,
    )
    handlers = SlackHandlers(settings, service, messages, digests)
    app.command("/routine")(handlers.routine_command)
    app.view(CREATE_CALLBACK)(handlers.create_submitted)
    app.action("view_log")(handlers.view_log)
    return app


class SlackHandlers:
    def __init__(self, settings: Settings, service: RoutineService, messages: Messages,
                 digests: DigestService | None = None) -> None:
        self.settings = settings
        self.service = service
        self.messages = messages
        self.digests = digests

    async def routine_command(self, ack: AsyncAck, command: dict[str, Any],
                              client: AsyncWebClient) -> None:
        parsed = commands.parse(command.get("text", ""))
        if parsed.action == "create":
            await ack()
            await client.views_open(trigger_id=command["trigger_id"],
                                    view=self.create_modal(command.get("channel_id", "")))
            return
        if parsed.action == "digest" and parsed.name == "now":
            await self.digest_now(ack, command.get("channel_id", ""), client)
            return
        try:
            reply = await asyncio.to_thread(self.answer, parsed, command["user_id"],
                                            command.get("channel_id", ""))
        except RoutinesError as exc:
            reply = self.messages.render("error.json.j2", message=str(exc))
        await ack(response_type="ephemeral", **reply)

    def answer(self, parsed: commands.Command, user_id: str,
               channel_id: str = "") -> dict[str, Any]:
        """The reply to a command other than `create` (runs in a worker thread)."""

        def digest(parsed: commands.Command, user_id: str) -> dict[str, Any]:
            return self._digest(parsed, user_id, channel_id)  # `here` is this channel

        handler = {
            "run": self._run, "list": self._list, "status": self._status,
            "history": self._history, "pause": self._pause, "resume": self._resume,
            "token": self._token, "tokens": self._tokens, "revoke": self._revoke,
            "github": self._github, "schedule": self._schedule,
            "digest": digest,
        }.get(parsed.action)
        if handler is None:
            return self.messages.render("help.json.j2", problem=parsed.problem)
        return handler(parsed, user_id)

    def _say(self, message: str) -> dict[str, Any]:
        return self.messages.render("error.json.j2", message=message)

    def _run(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        view = self.service.trigger_run(parsed.name, trigger.manual(user_id)).view
        return self.messages.render("run_queued.json.j2", run=view.run, routine=view.routine)

    def _list(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("routine_list.json.j2",
                                    overviews=self.service.list_routines())

    def _status(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("routine_status.json.j2",
                                    overview=self.service.routine_overview(parsed.name),
                                    github=self.service.github_filters(parsed.name))

    def _history(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("run_history.json.j2",
                                    routine=self.service.get_routine(parsed.name),
                                    views=self.service.run_history(parsed.name))

    def _pause(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        routine = self.service.pause_routine(parsed.name, user_id)
        return self.messages.render("routine_paused.json.j2", routine=routine)

    def _resume(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        routine = self.service.resume_routine(parsed.name, user_id)
        return self.messages.render("routine_paused.json.j2", routine=routine)

    def _token(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        value = self.service.create_token(parsed.name, parsed.arg, user_id)
        return self.messages.render(
            "token_created.json.j2", routine=parsed.name, token_name=parsed.arg, value=value,
            api_url=f"/api/v1/routines/{parsed.name}/runs")

    def _tokens(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("token_list.json.j2", routine=parsed.name,
                                    tokens=self.service.list_tokens(parsed.name))

    def _revoke(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        self.service.revoke_token(parsed.name, parsed.arg, user_id)
        return self._say(f"Token `{parsed.arg}` of `{parsed.name}` revoked: it no longer works.")

    def _schedule(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        if parsed.arg.lower() == "off":
            self.service.clear_schedule(parsed.name, user_id)
            return self._say(f"`{parsed.name}` no longer runs on a schedule.")
        self.service.set_schedule(parsed.name, parsed.arg, parsed.option, user_id)
        return self.messages.render("routine_status.json.j2", github=[],
                                    overview=self.service.routine_overview(parsed.name))

    def _github(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        if parsed.arg.lower() == "off":
            count = self.service.unsubscribe_github(parsed.name, user_id)
            return self._say(f"`{parsed.name}` no longer listens to GitHub "
                             f"({count} filters removed).")
        wanted = self.service.subscribe_github(parsed.name, parsed.arg, user_id)
        return self._say(f"`{parsed.name}` now runs on GitHub events matching "
                         f"`{wanted.describe()}`.")

    def _digest(self, parsed: commands.Command, user_id: str,
                channel_id: str) -> dict[str, Any]:
        digests = self._digest_service()
        if parsed.arg == "off":
            digests.unsubscribe(channel_id, user_id)
            return self._say("This channel no longer gets a runs digest.")
        if parsed.arg:
            digests.subscribe(channel_id, parsed.arg, parsed.option, user_id)
        return self.messages.render("digest_subscription.json.j2",
                                    overview=digests.overview(channel_id))

    async def digest_now(self, ack: AsyncAck, channel_id: str, client: AsyncWebClient) -> None:
        """Acknowledge at once (a digest of a busy period takes longer than Slack waits),
        then post the channel's digest there; its next one starts where this one ended."""
        if self.digests is None:
            await ack(response_type="ephemeral", text="Digests are not enabled on this bot.")
            return
        digests = self.digests
        await ack(response_type="ephemeral", text="Composing a runs digest for this channel…")
        try:
            digest = await asyncio.to_thread(digests.compose, channel_id, utcnow())
            await client.chat_postMessage(
                channel=channel_id, **self.messages.render("digest.json.j2", digest=digest))
            await asyncio.to_thread(digests.mark_sent, digest)
        except Exception:
            log.exception("digest now for %s failed", channel_id)

    def _digest_service(self) -> DigestService:
        if self.digests is None:
            raise RoutinesError("Digests are not enabled on this bot.")
        return self.digests

    def create_modal(self, channel_id: str) -> dict[str, Any]:
        s = self.settings
        return self.messages.render(
            "create_modal.json.j2", channel_id=channel_id if channel_id[:1] in "CG" else "",
            default_model=s.default_model, default_timeout=s.default_timeout_seconds,
            min_timeout=s.min_timeout_seconds, max_timeout=s.max_timeout_seconds)

    async def create_submitted(self, ack: AsyncAck, body: dict[str, Any],
                               view: dict[str, Any], client: AsyncWebClient) -> None:
        draft = draft_from_modal(view["state"]["values"])
        user_id = body["user"]["id"]
        try:
            routine = await asyncio.to_thread(self.service.create_routine, draft, user_id)
        except ValidationFailed as exc:
            await ack(response_action="errors", errors=exc.field_errors)
            return
        await ack()
        await client.chat_postMessage(
            channel=routine.channel_id,
            **self.messages.render("routine_created.json.j2", routine=routine, actor=user_id))

    async def view_log(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any],
                       client: AsyncWebClient) -> None:
        await ack()
        try:
            run_id = int(action.get("value", ""))
            view = await asyncio.to_thread(self.service.get_run, run_id)
            events = await asyncio.to_thread(self.service.run_events, run_id)
        except (ValueError, RoutinesError) as exc:
            log.warning("view_log refused: %s", exc)
            return
        await client.views_open(trigger_id=body["trigger_id"], view=self.log_modal(view, events))

    def log_modal(self, view: RunView, events: list[dict[str, Any]]) -> dict[str, Any]:
        # Escaped before chunking, so each chunk's size is what Slack receives.
        lines = [escape_mrkdwn(line) for line in log_lines(events)]
        chunks, dropped = chunk(lines, LOG_SECTION_CHARS, LOG_SECTIONS)
        return self.messages.render("run_log_modal.json.j2", view=view, chunks=chunks,
                                    dropped=dropped, line_count=len(lines),
                                    diff_excerpt=view.run.diff)


def draft_from_modal(values: dict[str, Any]) -> RoutineDraft:
    """Read the modal's state; block ids are the draft's field names."""

    def value(block: str) -> str:
        element = values.get(block, {}).get("value", {})
        return str(element.get("value") or element.get("selected_conversation") or "")

    return RoutineDraft(
        name=value("name"), prompt=value("prompt"), repo_url=value("repo_url"),
        channel_id=value("channel_id"), branch=value("branch") or "main",
        setup_script=value("setup_script"), model=value("model"),
        timeout_seconds=value("timeout_seconds"), payload_template=value("payload_template"),
        schedule=value("schedule"), schedule_tz=value("schedule_tz"),
    )
