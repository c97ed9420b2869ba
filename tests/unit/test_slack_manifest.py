"""The Slack app manifest (manifest.json) installs as is: it declares what the bot uses and no
more."""

from __future__ import annotations

import json
from pathlib import Path

from bot.core.statuses import RunStatus
from bot.core.workflow_step import CALLBACK_ID, step_result
from bot.doors.slack.scopes import BOT_SCOPES

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_declares_what_the_bot_uses_and_no_more() -> None:
    manifest = json.loads((ROOT / "manifest.json").read_text())
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/routine"]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == [
        "app_home_opened", "function_executed"]
    # usergroups.users.list resolves `subteam:` owners and approvers (bot.doors.slack.directory)
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == BOT_SCOPES == {
        "commands", "chat:write", "chat:write.public", "usergroups:read"}


def test_the_run_a_routine_step_is_declared_as_the_bot_handles_it() -> None:
    """Custom steps need a remote function runtime and org deploy; the step's inputs and
    outputs are the ones `bot.doors.slack.workflow_step` reads and `bot.core.workflow_step`
    gives back."""
    manifest = json.loads((ROOT / "manifest.json").read_text())
    assert manifest["settings"]["function_runtime"] == "remote"
    assert manifest["settings"]["org_deploy_enabled"] is True
    step = manifest["functions"][CALLBACK_ID]
    inputs = step["input_parameters"]
    assert set(inputs["properties"]) == {"routine", "user", "payload"}
    assert inputs["required"] == ["routine", "user"]
    assert inputs["properties"]["user"]["type"] == "slack#/types/user_id"
    result = step_result(7, "nightly", RunStatus.SUCCEEDED, "done", None)
    assert set(step["output_parameters"]["properties"]) == set(result.outputs)
    assert step["output_parameters"]["required"] == ["run_id", "status", "summary"]
    for spec in [*inputs["properties"].values(),
                 *step["output_parameters"]["properties"].values()]:
        assert spec["type"] in {"string", "slack#/types/user_id"} and spec["title"]


def test_a_step_fails_unless_its_run_succeeded() -> None:
    assert step_result(7, "nightly", RunStatus.SUCCEEDED, "x" * 5000, None).outputs == {
        "run_id": "7", "status": "succeeded", "summary": "x" * 2000}
    failed = step_result(8, "nightly", RunStatus.FAILED, None,
                         "the agent ended without calling report_result")
    assert (failed.ok, failed.outputs) == (False, {})
    assert failed.error == (
        "nightly run #8 failed: the agent ended without calling report_result")
    assert step_result(9, "n", RunStatus.ERROR, None, None).error == (
        "n run #9 error: no reason recorded")
