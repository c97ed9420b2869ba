"""Slack adapter: bolt listeners that parse, call the services, and render templates.

No rule lives here. Blocking service calls go through `asyncio.to_thread` so one slow
database call never delays another user's acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import retry, trigger, workflow_step
from bot.core.routine import RoutineDraft, parse_changes
from bot.doors.slack import commands
from bot.doors.slack.approvals import ApprovalMessages
from bot.doors.slack.messages import Messages
from bot.doors.slack.run_buttons import RunButtons
from bot.doors.slack.words import say
from bot.doors.slack.workflow_step import WorkflowStep
from bot.errors import DatabaseUnavailable, RoutinesError, ValidationFailed
from bot.services import Services
from bot.services.models import current_models, is_known
from bot.settings import Settings
from bot.store.tables import utcnow

log = logging.getLogger(__name__)
CREATE_CALLBACK = "routine_create"
REJECT_CALLBACK = "approval_reject"
LIST_SHOWN = 45  # routines a `/routine list` shows: a message holds at most 50 blocks
KILLSWITCH_ANNOUNCED = {"engage": "engaged", "disengage": "disengaged"}


def build_slack_app(settings: Settings, services: Services, messages: Messages,
                    client: AsyncWebClient) -> AsyncApp:
    app = AsyncApp(
        client=client,
        signing_secret=settings.slack_signing_secret or None,
        request_verification_enabled=not settings.socket_mode,
        logger=log,
    )
    handlers = SlackHandlers(settings, services, messages)
    app.command("/routine")(handlers.routine_command)
    app.view(CREATE_CALLBACK)(handlers.create_submitted)
    buttons = RunButtons(services, messages)
    app.action("view_log")(buttons.view_log)
    app.action("retry_run")(buttons.retry)
    app.action("approve")(handlers.approve_clicked)
    app.action("reject")(handlers.reject_clicked)
    app.view(REJECT_CALLBACK)(handlers.reject_submitted)
    app.function(workflow_step.CALLBACK_ID)(WorkflowStep(services).executed)
    app.error(answer_error)
    return app


# What a listener raises when a signed request lacks a field or carries one of the wrong
# type (a click without a trigger id, a view without state): the request's fault, a 400.
MALFORMED = (LookupError, TypeError, ValueError, AttributeError, SlackApiError)


async def answer_error(error: Exception, response: BoltResponse | None) -> BoltResponse | None:
    """Bolt's error handler for listeners and middleware: malformed input is a 400 with a
    short reason (Bolt's default is a bare 500); anything else stays a 500, and is logged."""
    if response is None:  # already acknowledged: nothing left to answer
        log.warning("a Slack listener failed after its ack: %r", error)
        return None
    if isinstance(error, DatabaseUnavailable):  # nothing was changed: try again shortly
        log.warning("a Slack request answered 503: %s", error)
        return BoltResponse(status=503, body=json.dumps(
            {"error": "database_unavailable", "message": str(error)}),
            headers={"content-type": "application/json",
                     "retry-after": str(error.retry_after)})
    if isinstance(error, MALFORMED):
        log.info("malformed Slack request answered 400: %s", type(error).__name__)
        return BoltResponse(status=400, body='{"error": "malformed", "message": '
                            '"the request lacks a field or has one of the wrong type"}',
                            headers={"content-type": "application/json"})
    log.error("a Slack listener failed", exc_info=error)
    return None


class SlackHandlers:
    def __init__(self, settings: Settings, services: Services, messages: Messages) -> None:
        self.settings = settings
        self.services = services
        self.messages = messages
        self.approvals = ApprovalMessages(services, messages)

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
        except DatabaseUnavailable:
            raise  # unacknowledged: `answer_error` says 503, the database's reason
        except RoutinesError as exc:
            reply = self.messages.render("error.json.j2", message=say(exc))
            await ack(response_type="ephemeral", **reply)
            return
        await ack(response_type="ephemeral", **reply)
        if parsed.action == "killswitch" and parsed.arg in KILLSWITCH_ANNOUNCED:
            await self._announce_kill_switch(client, command.get("channel_id", ""), reply)

    async def _announce_kill_switch(self, client: AsyncWebClient, channel: str,
                                    message: dict[str, Any]) -> None:
        """Who, when and why, in the requester's channel and the incidents channel."""
        for target in dict.fromkeys(c for c in (channel, self.settings.incidents_channel)
                                    if c[:1] in "CG"):
            try:
                await client.chat_postMessage(channel=target, **message)
            except Exception:
                log.exception("could not announce the kill switch in %s", target)

    def answer(self, parsed: commands.Command, user_id: str,
               channel_id: str = "") -> dict[str, Any]:
        """The reply to a command other than `create` (runs in a worker thread)."""

        def digest(parsed: commands.Command, user_id: str) -> dict[str, Any]:
            return self._digest(parsed, user_id, channel_id)  # `here` is this channel

        handler = {
            "run": self._run, "list": self._list, "status": self._status,
            "history": self._history, "pause": self._pause, "resume": self._resume,
            "token": self._token, "tokens": self._tokens, "revoke": self._revoke,
            "github": self._github, "schedule": self._schedule, "retries": self._retries,
            "set": self._set, "delete": self._delete, "cancel": self._cancel,
            "killswitch": self._killswitch, "audit": self._audit, "budget": self._budget,
            "digest": digest,
        }.get(parsed.action)
        if handler is None:
            return self.messages.render("help.json.j2", problem=parsed.problem)
        return handler(parsed, user_id)

    def _say(self, message: str) -> dict[str, Any]:
        return self.messages.render("error.json.j2", message=message)

    def _run(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        triggered = self.services.triggers.trigger(parsed.name, trigger.manual(user_id))
        view = triggered.view
        if triggered.approval is not None:
            return self._say(f"Run #{view.run.id} of `{view.routine.name}` waits for approval "
                             f"(risk high): the request is in <#{view.routine.channel_id}>.")
        return self.messages.render("run_queued.json.j2", run=view.run, routine=view.routine)

    def _set(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        self.services.routines.change(parsed.name, parse_changes(parsed.arg.split()), user_id,
                                      force=parsed.force)
        return self.messages.render("routine_status.json.j2", github=[],
                                    overview=self.services.routines.overview(parsed.name))

    def _delete(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        self.services.routines.delete(parsed.name, user_id, force=parsed.force)
        return self._say(f"Routine `{parsed.name}` deleted, with its runs and tokens; the "
                         "audit log keeps the record.")

    def _cancel(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        view = self.services.runs.cancel(int(parsed.arg), user_id)
        if view.run.status.finished:
            return self._say(f"Run #{view.run.id} of `{view.routine.name}` cancelled.")
        return self._say(f"Run #{view.run.id} of `{view.routine.name}` is being stopped; "
                         f"the result will be posted in <#{view.routine.channel_id}>.")

    def _killswitch(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        verb = parsed.arg
        if verb == "engage":
            report = self.services.kill_switch.engage(user_id, parsed.option)
        elif verb == "disengage":
            report = self.services.kill_switch.disengage(user_id)
        elif verb in {"release", "drop"}:
            self.services.kill_switch.release_held(user_id, drop=verb == "drop")
            report = self.services.kill_switch.report()
        else:
            report = self.services.kill_switch.report()
        event = {"release": "released", "drop": "dropped"}.get(
            verb, KILLSWITCH_ANNOUNCED.get(verb, "status"))
        return self.messages.render("killswitch.json.j2", report=report, event=event)

    def _audit(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        if parsed.name:
            self.services.routines.get(parsed.name)  # an unknown routine is an error, not empty
        return self.messages.render("audit_list.json.j2", routine=parsed.name,
                                    entries=self.services.audit.entries(parsed.name or None))

    def _budget(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        if parsed.arg:
            try:
                amount = float(parsed.arg.lstrip("$"))
            except ValueError:
                return self._say("Say the cap in dollars: `/routine budget cap 50`.")
            spend = self.services.spend.set_cap(amount, user_id)
        else:
            spend = self.services.spend.today()
        return self.messages.render("spend.json.j2", spend=spend)

    async def approve_clicked(self, ack: AsyncAck, body: dict[str, Any],
                              action: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await self.approvals.decide(client, body, action.get("value", ""), approve=True)

    async def reject_clicked(self, ack: AsyncAck, body: dict[str, Any],
                             action: dict[str, Any], client: AsyncWebClient) -> None:
        """Reject asks for an optional reason first (a modal); its submission decides."""
        await ack()
        try:
            view = await asyncio.to_thread(self.services.approvals.get, int(action["value"]))
        except (ValueError, RoutinesError) as exc:
            await self.approvals.tell(client, body, action.get("value", ""), say(exc))
            return
        await client.views_open(trigger_id=body["trigger_id"], view=self.messages.render(
            "reject_modal.json.j2", approval_id=view.approval.id, run_id=view.run.id,
            routine=view.routine.name))

    async def reject_submitted(self, ack: AsyncAck, body: dict[str, Any],
                               view: dict[str, Any], client: AsyncWebClient) -> None:
        reason = view["state"]["values"].get("reason", {}).get("value", {}).get("value") or ""
        await ack()
        await self.approvals.decide(client, body, view.get("private_metadata", ""),
                                    approve=False, reason=reason)

    def _list(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("routine_list.json.j2",
                                    overviews=self.services.routines.overviews(LIST_SHOWN),
                                    total=self.services.routines.count())

    def _status(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("routine_status.json.j2",
                                    overview=self.services.routines.overview(parsed.name),
                                    github=self.services.github.filters(parsed.name))

    def _history(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("run_history.json.j2",
                                    routine=self.services.routines.get(parsed.name),
                                    views=self.services.routines.history(parsed.name))

    def _pause(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        routine = self.services.routines.pause(parsed.name, user_id)
        return self.messages.render("routine_paused.json.j2", routine=routine)

    def _resume(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        routine = self.services.routines.resume(parsed.name, user_id)
        return self.messages.render("routine_paused.json.j2", routine=routine)

    def _token(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        value = self.services.tokens.create(parsed.name, parsed.arg, user_id)
        return self.messages.render(
            "token_created.json.j2", routine=parsed.name, token_name=parsed.arg, value=value,
            api_url=f"/api/v1/routines/{parsed.name}/runs")

    def _tokens(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        return self.messages.render("token_list.json.j2", routine=parsed.name,
                                    tokens=self.services.tokens.of_routine(parsed.name))

    def _revoke(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        self.services.tokens.revoke(parsed.name, parsed.arg, user_id)
        return self._say(f"Token `{parsed.arg}` of `{parsed.name}` revoked: it no longer works.")

    def _schedule(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        if parsed.arg.lower() == "off":
            self.services.schedules.clear(parsed.name, user_id, force=parsed.force)
            return self._say(f"`{parsed.name}` no longer runs on a schedule.")
        self.services.schedules.set(parsed.name, parsed.arg, parsed.option, user_id,
                                    force=parsed.force)
        return self.messages.render("routine_status.json.j2", github=[],
                                    overview=self.services.routines.overview(parsed.name))

    def _retries(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        policy = retry.parse_policy(parsed.arg.split())
        self.services.routines.set_retry_policy(parsed.name, policy, user_id, force=parsed.force)
        return self.messages.render("routine_status.json.j2",
                                    overview=self.services.routines.overview(parsed.name),
                                    github=self.services.github.filters(parsed.name))

    def _github(self, parsed: commands.Command, user_id: str) -> dict[str, Any]:
        if parsed.arg.lower() == "off":
            count = self.services.github.unsubscribe(parsed.name, user_id, force=parsed.force)
            return self._say(f"`{parsed.name}` no longer listens to GitHub "
                             f"({count} filters removed).")
        wanted = self.services.github.subscribe(parsed.name, parsed.arg, user_id,
                                                 force=parsed.force)
        return self._say(f"`{parsed.name}` now runs on GitHub events matching "
                         f"`{wanted.describe()}`.")

    def _digest(self, parsed: commands.Command, user_id: str,
                channel_id: str) -> dict[str, Any]:
        digests = self.services.digests
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
        digests = self.services.digests
        await ack(response_type="ephemeral", text="Composing a runs digest for this channel…")
        try:
            digest = await asyncio.to_thread(digests.compose, channel_id, utcnow())
            await client.chat_postMessage(
                channel=channel_id, **self.messages.render("digest.json.j2", digest=digest))
            await asyncio.to_thread(digests.mark_sent, digest)
        except Exception:
            log.exception("digest now for %s failed", channel_id)

    def create_modal(self, channel_id: str) -> dict[str, Any]:
        s = self.settings
        return self.messages.render(
            "create_modal.json.j2", channel_id=channel_id if channel_id[:1] in "CG" else "",
            default_model=s.default_model, models=current_models(),
            default_timeout=s.default_timeout_seconds,
            min_timeout=s.min_timeout_seconds, max_timeout=s.max_timeout_seconds)

    async def create_submitted(self, ack: AsyncAck, body: dict[str, Any],
                               view: dict[str, Any], client: AsyncWebClient) -> None:
        draft = draft_from_modal(view["state"]["values"])
        user_id = body["user"]["id"]
        try:
            routine = await asyncio.to_thread(self.services.routines.create, draft, user_id)
        except ValidationFailed as exc:
            await ack(response_action="errors", errors=exc.field_errors)
            return
        await ack()
        await client.chat_postMessage(
            channel=routine.channel_id,
            **self.messages.render("routine_created.json.j2", routine=routine, actor=user_id,
                                   model_known=is_known(routine.model)))


def draft_from_modal(values: dict[str, Any]) -> RoutineDraft:
    """Read the modal's state; block ids are the draft's field names."""

    def value(block: str) -> str:
        element = values.get(block, {}).get("value", {})
        option = element.get("selected_option") or {}
        return str(element.get("value") or element.get("selected_conversation")
                   or option.get("value") or "")

    return RoutineDraft(
        name=value("name"), prompt=value("prompt"), repo_url=value("repo_url"),
        channel_id=value("channel_id"), branch=value("branch") or "main",
        setup_script=value("setup_script"), model=value("model"),
        timeout_seconds=value("timeout_seconds"), payload_template=value("payload_template"),
        schedule=value("schedule"), schedule_tz=value("schedule_tz"), network=value("network"),
        engine=value("engine"),
    )
