"""The Slack app manifest (manifest.json) installs as is: it declares what the bot uses and no
more."""

from __future__ import annotations

import json
from pathlib import Path

from bot.doors.slack.scopes import BOT_SCOPES

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_declares_what_the_bot_uses_and_no_more() -> None:
    manifest = json.loads((ROOT / "manifest.json").read_text())
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/routine"]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]
    # usergroups.users.list resolves `subteam:` owners and approvers (bot.doors.slack.directory)
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == BOT_SCOPES == {
        "commands", "chat:write", "chat:write.public", "usergroups:read"}
