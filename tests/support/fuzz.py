"""What the door fuzz suite shares: its Hypothesis settings, the hostile inputs as
strategies, and the fingerprint of the bot's state that a refused request must not move.

CI runs `EXAMPLES` examples per door, derandomized so a failure reproduces as it failed
(Hypothesis then shrinks it to a minimal input). `ROUTINES_FUZZ_EXAMPLES=5000` runs more.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlmodel import SQLModel

from bot.app import Bot

EXAMPLES = int(os.environ.get("ROUTINES_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    # One bot per test serves every example: the fixture is function-scoped on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Text a hostile client types: quotes, backslashes, percent signs, controls, non-ASCII.
NASTY = st.sampled_from(['"', "'", "\\", "%", "%%", "%zz", "&", "=", "+", "\x00", "\n",
                         "`", "<@U1>", "é", "\U0001f600", "\u202e", " "])
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=12)), max_size=8).map("".join)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
# Slack's field names, so garbage reaches further than the first lookup.
SLACK_KEYS = st.sampled_from([
    "type", "team", "user", "user_id", "team_id", "channel", "channel_id", "command",
    "text", "trigger_id", "actions", "action_id", "value", "view", "callback_id", "state",
    "values", "private_metadata", "event", "payload", "response_url", "api_app_id",
    "container", "message_ts", "enterprise", "authorizations", "is_enterprise_install",
])
SHAPED_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        SLACK_KEYS | TEXT, inner, max_size=6),
    max_leaves=16,
)
DEEP_JSON = st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth)
JSON_TEXT = st.one_of(JSON.map(json.dumps), SHAPED_JSON.map(json.dumps), DEEP_JSON,
                      TEXT, st.just("{"), st.just("%%%"))

SUBCOMMANDS = st.sampled_from([
    "run", "list", "status", "history", "token", "tokens", "github", "schedule", "retries",
    "set", "cancel", "audit", "budget", "digest", "killswitch", "explode", "",
])
CONTENT_TYPES = st.sampled_from([
    "application/x-www-form-urlencoded", "application/json", "text/plain",
    "multipart/form-data", "application/json; charset=utf-8", "",
]) | HEADER_TEXT


def form(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs)


FORM_BODIES = st.one_of(
    st.lists(st.tuples(SLACK_KEYS | TEXT, TEXT), max_size=6).map(form),
    JSON_TEXT.map(lambda payload: "payload=" + quote(payload)),
    JSON_TEXT.map(lambda payload: "payload=" + payload),  # not even percent-encoded
    st.sampled_from(["payload=%%%", "payload=", "payload", "=&=&", "payload=%7B",
                     "payload=%5B1%5D", "payload=%22x%22", "command=%ZZ&text=%"]),
)


def slash_form(text: str, fields: dict[str, str]) -> str:
    return urlencode({"token": "legacy", "team_id": "T0001", "channel_id": "C0GENERAL1",
                      "user_id": "U0ALICE01", "command": "/routine", "text": text,
                      "api_app_id": "A0001", "trigger_id": "1.1.trigger",
                      "response_url": "http://127.0.0.1:9/commands/1", **fields})


SLASH_COMMANDS = st.builds(
    slash_form, st.tuples(SUBCOMMANDS, TEXT, TEXT).map(" ".join),
    st.dictionaries(st.sampled_from(["user_id", "channel_id", "trigger_id", "team_id",
                                     "command"]), TEXT, max_size=2),
)
ACTION_IDS = st.sampled_from(["approve", "reject", "view_log", "retry_run", "home_run",
                              "home_pause"]) | TEXT


def interactive(kind: str, action_id: str, value: Any, extra: dict[str, Any]) -> str:
    payload: dict[str, Any] = {
        "type": kind, "team": {"id": "T0001"}, "user": {"id": "U0ALICE01"},
        "api_app_id": "A0001", "trigger_id": "2.2.trigger", "channel": {"id": "C0GENERAL1"},
        "container": {"type": "message", "message_ts": "1.1", "channel_id": "C0GENERAL1"},
        "actions": [{"action_id": action_id, "block_id": "b1", "value": value,
                     "type": "button", "action_ts": "1.1"}],
        "view": {"id": "V0001", "type": "modal", "callback_id": action_id,
                 "state": {"values": value}, "private_metadata": value},
    }
    payload.update(extra)
    return urlencode({"payload": json.dumps(payload)})


INTERACTIVE = st.builds(
    interactive, st.sampled_from(["block_actions", "view_submission", "view_closed",
                                  "shortcut", "message_action"]) | TEXT,
    ACTION_IDS | st.sampled_from(["routine_create", "approval_reject"]),
    SHAPED_JSON, st.dictionaries(SLACK_KEYS, SHAPED_JSON, max_size=3),
)


def state_fingerprint(bot: Bot) -> str:
    """Every row of every table: what a refused request must leave exactly as it was."""
    digest = hashlib.sha256()
    with bot.db.engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            rows = conn.execute(sqlalchemy.select(table)).all()
            digest.update(table.name.encode())
            digest.update(repr(sorted(map(repr, rows))).encode())
    return digest.hexdigest()


def stale_timestamp() -> int:
    return int(time.time()) - 6 * 60
