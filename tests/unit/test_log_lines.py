"""Logs: JSON lines when configured, and no secret in any log line, whatever the format.
`routines serve` writing them is in tests/doors/test_routines_command.py."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.core.redaction import Redactor
from bot.errors import SettingsError
from bot.logging_config import configure_logging
from bot.settings import Settings

SETTINGS = Settings(slack_bot_token="xoxb-planted-bot-token-1", anthropic_api_key="sk-ant-planted",
                    slack_signing_secret="planted-signing-secret",
                    extra_secrets=("planted-extra-value",))
UNKNOWN_TOKEN = "xoxp-1234567890-someone-elses-token"  # in no setting: caught by its shape
PLANTED = [*SETTINGS.secrets, UNKNOWN_TOKEN]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def log_everything(logger: logging.Logger) -> None:
    logger.info("connected with %s and %s", SETTINGS.slack_bot_token, UNKNOWN_TOKEN)
    logger.warning("signing secret is %s", SETTINGS.slack_signing_secret)
    try:
        raise RuntimeError(f"request failed: key={SETTINGS.anthropic_api_key} "
                           f"extra={SETTINGS.extra_secrets[0]}")
    except RuntimeError:
        logger.exception("call failed for %s", "planted-extra-value")


def test_json_lines_with_time_level_logger_message_and_exception(
    root_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", Redactor(SETTINGS.secrets), stream=out)

    log_everything(logging.getLogger("bot.something"))
    logging.getLogger("quiet").debug("below the level")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["logger"]) for e in lines] == [
        ("INFO", "bot.something"), ("WARNING", "bot.something"), ("ERROR", "bot.something")]
    assert all(set(e) >= {"time", "level", "logger", "message"} for e in lines)
    assert lines[0]["time"].endswith("+00:00")
    assert lines[0]["message"] == "connected with [REDACTED] and [REDACTED]"
    assert "exception" not in lines[0]
    assert "RuntimeError: request failed: key=[REDACTED] extra=[REDACTED]" in lines[2][
        "exception"]
    assert "Traceback" in lines[2]["exception"]


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_planted_secret_comes_out(root_logger: logging.Logger, log_format: str) -> None:
    out = io.StringIO()
    configure_logging(log_format, "DEBUG", Redactor(SETTINGS.secrets), stream=out)

    log_everything(logging.getLogger("bot.leaky"))

    written = out.getvalue()
    assert written.count("[REDACTED]") >= 5
    for secret in PLANTED:
        assert secret not in written
        assert json.dumps(secret)[1:-1] not in written


def test_the_log_format_setting() -> None:
    env = {"SLACK_BOT_TOKEN": "x", "ANTHROPIC_API_KEY": "k", "SLACK_APP_TOKEN": "xapp-1"}
    assert Settings.from_env(env).log_format == "text"
    assert Settings.from_env({**env, "ROUTINES_LOG_FORMAT": " JSON "}).log_format == "json"
    with pytest.raises(SettingsError, match="ROUTINES_LOG_FORMAT must be one of text, json"):
        Settings.from_env({**env, "ROUTINES_LOG_FORMAT": "xml"})
