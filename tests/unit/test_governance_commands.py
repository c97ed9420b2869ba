"""Governance words, pure: principals read from mentions and ids, `/routine set` changes
refused field by field, the governance commands parsed, spend levels against the cap, and
the diff summary an approval shows. The rules on a real database are in
tests/services/test_governance_rules.py."""

from __future__ import annotations

import pytest

from bot.core import budget, roles
from bot.core.routine import parse_changes
from bot.core.run_log import diff_summary
from bot.core.statuses import RiskLevel
from bot.doors.slack.commands import parse
from bot.errors import ValidationFailed


@pytest.mark.parametrize(("text", "expected"), [
    ("<@U0AAA111> <@U0BBB222|bob>", ("U0AAA111", "U0BBB222")),
    ("U0AAA111,U0AAA111", ("U0AAA111",)),
    ("<!subteam^S0OPS0001|@ops>", ("subteam:S0OPS0001",)),
    ("subteam:S0OPS0001, @U0AAA111", ("subteam:S0OPS0001", "U0AAA111")),
    ("", ()),
])
def test_principals_are_read_from_mentions_and_ids(text: str, expected: tuple[str, ...]) -> None:
    assert roles.parse_principals(text) == expected


@pytest.mark.parametrize("text", ["bob", "<!channel>", "<#C0123|general>", "@here"])
def test_what_is_not_a_user_or_group_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Slack user or user group"):
        roles.parse_principals(text)


@pytest.mark.parametrize(("spent", "cap", "level"), [
    (0, 0, "ok"), (100, 0, "ok"), (7.99, 10, "ok"), (8, 10, "warning"), (9.99, 10, "warning"),
    (10, 10, "exhausted"), (12, 10, "exhausted"),
])
def test_spend_levels(spent: float, cap: float, level: str) -> None:
    assert budget.Spend(spent, cap).level == level


@pytest.mark.parametrize(("words", "error"), [
    (["risk=extreme"], "risk"), (["owners="], "owners"), (["max-concurrent=0"], "max-concurrent"),
    (["when-busy=drop"], "when-busy"), (["colour=blue"], "colour"), (["nonsense"], "nonsense"),
    (["max-tokens=12"], "max-tokens"), ([], "set"),
])
def test_bad_changes_are_refused_field_by_field(words: list[str], error: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_changes(words)
    assert error in caught.value.field_errors


def test_changes_parse_lists_spanning_words() -> None:
    assert parse_changes(["approvers=<@U0AAA111>", "<!subteam^S0OPS0001>", "risk=HIGH",
                          "max-tokens=50000"]) == {
        "approvers": "U0AAA111,subteam:S0OPS0001", "risk": RiskLevel.HIGH,
        "max_tokens_per_run": 50_000}


@pytest.mark.parametrize(("text", "action", "arg", "option"), [
    ("killswitch engage db on fire", "killswitch", "engage", "db on fire"),
    ("killswitch", "killswitch", "status", ""),
    ("killswitch drop", "killswitch", "drop", ""),
    ("cancel #12", "cancel", "12", ""),
    ("budget cap 25", "budget", "25", ""),
    ("audit", "audit", "", ""),
    ("killswitch engage", "help", "", ""),
    ("cancel twelve", "help", "", ""),
    ("killswitch stop now", "help", "", ""),
])
def test_governance_commands_parse(text: str, action: str, arg: str, option: str) -> None:
    parsed = parse(text)
    assert (parsed.action, parsed.arg, parsed.option) == (action, arg, option)


def test_diff_summary_lists_files_with_counts() -> None:
    diff = "diff --git a/x b/x\n--- a/x\n+++ b/x\n+a\n+b\n-c\ndiff --git a/y b/y\n+++ b/y\n+z"
    assert diff_summary(diff) == "2 file(s) changed\nx  +2 -1\ny  +1 -0"
    assert diff_summary("") == "no changes"


def test_a_trailing_force_is_read_on_the_edits_of_a_routine_only() -> None:
    forced = parse("set nightly risk=high owners=@U0ALICE01 --force")
    assert (forced.action, forced.name, forced.arg, forced.force) == (
        "set", "nightly", "risk=high owners=@U0ALICE01", True)
    assert parse('schedule nightly "every 2h" Europe/Paris --force').force
    assert parse("delete nightly --FORCE").force
    assert parse("github nightly off --force").arg == "off"
    assert not parse("set nightly risk=high").force
    assert not parse("run nightly --force").force  # not an edit: nothing to force
