"""Socket Mode (the default install): the same routine created and run through the socket
door behaves as through HTTP, because both doors call the same service."""

from __future__ import annotations

import json

import pytest

from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.slack_api import SlackApiStandIn
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.slack_requests import TEAM, modal_values

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

USER = "U0ALICE01"


def slash_payload(text: str) -> dict[str, str]:
    return {"token": "legacy", "team_id": TEAM, "channel_id": "C0GENERAL1", "user_id": USER,
            "command": "/routine", "text": text, "api_app_id": "A0001",
            "trigger_id": "1.1.trigger", "response_url": "http://127.0.0.1:9/commands/1"}


async def test_create_and_run_over_socket_mode(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script("socket", [tool("run_shell", command="echo via-socket")],
                                  [report("success", "ran over socket mode")])
    await start_bot(slack_app_token="xapp-1-test-app-token-0000")
    assert slack_api.calls_to("apps.connections.open")

    submission = {
        "type": "view_submission", "team": {"id": TEAM}, "user": {"id": USER},
        "api_app_id": "A0001", "trigger_id": "2.2.trigger",
        "view": {"id": "V0001", "type": "modal", "callback_id": "routine_create",
                 "state": {"values": modal_values(
                     name="socket-run", prompt=f"Go. {marker}", repo_url=git_repo,
                     branch="main", channel_id=RESULTS_CHANNEL, model="claude-test-1",
                     timeout_seconds="60")}},
    }
    created = await slack_api.send_envelope("interactive", submission)
    assert "payload" not in created or not created["payload"]  # an empty ack closes the modal

    ack = await slack_api.send_envelope("slash_commands", slash_payload("run socket-run"))

    assert ack["payload"]["response_type"] == "ephemeral"
    assert "queued" in ack["payload"]["text"]
    call = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                    contains="socket-run run #1: ", timeout=60)
    assert call.params["text"] == "socket-run run #1: succeeded"
    assert "ran over socket mode" in json.dumps(call.params["blocks"])


async def test_unknown_routine_over_socket_mode(
    start_bot: BotFactory, slack_api: SlackApiStandIn,
) -> None:
    await start_bot(slack_app_token="xapp-1-test-app-token-0000")

    ack = await slack_api.send_envelope("slash_commands", slash_payload("run ghost"))

    assert "No routine named `ghost`" in ack["payload"]["text"]
