"""The network setting where Slack shows it: the create form's field, the status section,
the result message's count of refused requests, and the log's egress lines."""

from __future__ import annotations

import json

from bot.core.run_log import egress_refusals, log_lines
from bot.doors.slack.listeners import draft_from_modal
from bot.services.views import RoutineOverview, RunView
from runner.egress_policy import EGRESS_EVENT, NetworkMode
from tests.support.block_kit import check_blocks
from tests.support.slack_requests import modal_values
from tests.unit.test_block_kit_layouts import handlers, messages, routine, run


def test_the_create_form_asks_for_the_network_and_reads_it() -> None:
    form = handlers().create_modal("C0123ABC")
    [block] = [b for b in form["blocks"] if b["block_id"] == "network"]
    assert block["optional"] and block["element"]["initial_value"] == "trusted"
    assert "full (admins only)" in block["hint"]["text"]
    values = modal_values(name="n", prompt="p", repo_url="r", channel_id="C0123ABC",
                          network="pypi.org *.corp.example")
    assert draft_from_modal(values).network == "pypi.org *.corp.example"
    assert draft_from_modal(modal_values(name="n")).network == ""


def test_status_shows_the_network_setting() -> None:
    shown = {}
    for network, hosts in ((NetworkMode.TRUSTED, ""), (NetworkMode.NONE, ""),
                           (NetworkMode.FULL, ""), (NetworkMode.CUSTOM, "pypi.org,*.corp.x")):
        message = messages.render("routine_status.json.j2", github=[], overview=RoutineOverview(
            routine(network=network, network_hosts=hosts), run()))
        check_blocks(message)
        [text] = [b["text"]["text"] for b in message["blocks"]
                  if b.get("text", {}).get("text", "").startswith("*Network*")]
        shown[network] = text
    assert "trusted: the package registries" in shown[NetworkMode.TRUSTED]
    assert "none: no network at all" in shown[NetworkMode.NONE]
    assert "full: any host" in shown[NetworkMode.FULL]
    assert shown[NetworkMode.CUSTOM] == "*Network*\nonly pypi.org, *.corp.x"


def test_the_result_message_counts_the_refused_requests() -> None:
    custom = routine(network=NetworkMode.CUSTOM, network_hosts="pypi.org")
    two = check_blocks(messages.render("run_finished.json.j2",
                                       view=RunView(run(), custom, egress_refusals=2)))
    text = json.dumps([b.to_dict() for b in two])
    assert "2 requests refused by the network policy" in text and "pypi.org" in text
    one = json.dumps(messages.render("run_finished.json.j2",
                                     view=RunView(run(), custom, egress_refusals=1)))
    assert "1 request refused by the network policy" in one
    none = json.dumps(messages.render("run_finished.json.j2", view=RunView(run(), custom)))
    assert "refused by the network policy" not in none


def test_egress_events_are_counted_and_read_as_lines() -> None:
    events = [
        {"type": EGRESS_EVENT, "source": "host", "method": "CONNECT", "host": "pypi.org",
         "port": 443, "allowed": True, "address": "151.101.0.223", "status": 200,
         "error": "", "bytes_sent": 900, "bytes_received": 5000},
        {"type": EGRESS_EVENT, "source": "host", "method": "GET", "host": "evil.example",
         "port": 80, "allowed": False, "reason": "host_not_allowed", "address": ""},
        {"type": EGRESS_EVENT, "method": "GET", "host": "forged", "allowed": False},
    ]
    assert egress_refusals(events) == 1
    lines = log_lines(events)
    assert lines[0] == ("network: CONNECT pypi.org:443 -> 151.101.0.223: status 200, "
                        "900 bytes out / 5000 in")
    assert lines[1] == "network: refused GET evil.example:80: host_not_allowed"
    assert lines[2].startswith("egress: ")  # not the host's: shown as the raw event
