"""The engine where Slack shows it: the create form's select (both engines, builtin
first and preselected), read back into the draft."""

from __future__ import annotations

from bot.doors.slack.listeners import draft_from_modal
from tests.support.slack_requests import modal_values
from tests.unit.test_block_kit_layouts import handlers


def test_the_create_form_offers_both_engines_and_reads_the_choice() -> None:
    form = handlers().create_modal("C0123ABC")
    [block] = [b for b in form["blocks"] if b["block_id"] == "engine"]
    element = block["element"]
    assert block["optional"] and element["type"] == "static_select"
    assert [o["value"] for o in element["options"]] == ["builtin", "claude-code"]
    assert element["initial_option"]["value"] == "builtin"
    values = modal_values(name="n", prompt="p", repo_url="r", channel_id="C0123ABC",
                          engine="claude-code")
    assert draft_from_modal(values).engine == "claude-code"
    assert draft_from_modal(modal_values(name="n")).engine == ""
