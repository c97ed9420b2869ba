"""Slack layouts are data: Jinja2 templates under `templates/` rendered to Block Kit JSON.

Every string from users or agents passes through `tojson` (valid JSON whatever it
holds) and `mrkdwn` (Slack's three control characters escaped), so content cannot
break out of the layout. Every string of the rendered message then goes through the
redactor, so no secret reaches Slack whatever the template was given.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from bot.core.redaction import Redactor
from bot.core.roles import format_principals, split
from bot.core.statuses import FAILURES

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[3] / "templates"
# Templates whose whole point is to show a secret once, to the one user who made it.
REVEALS_SECRET = frozenset({"token_created.json.j2"})

STATUS_ICONS = {
    "queued": ":hourglass_flowing_sand:",
    "running": ":arrows_counterclockwise:",
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "timed_out": ":alarm_clock:",
    "error": ":warning:",
    "awaiting_approval": ":raised_hand:",
    "killed": ":octagonal_sign:",
    "cancelled": ":no_entry_sign:",
    "rejected": ":no_entry:",
    "expired": ":hourglass:",
}


class Messages:
    def __init__(self, template_dir: Path = DEFAULT_TEMPLATES,
                 redact: Redactor | None = None) -> None:
        self.redact = redact or Redactor(())  # token shapes are masked even with no values
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(template_dir),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - JSON output; values go through tojson
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            mrkdwn=escape_mrkdwn, duration=format_duration, when=format_when,
            when_seconds=lambda value: format_when(value, "%Y-%m-%d %H:%M:%S UTC"),
            icon=lambda status: STATUS_ICONS.get(str(status), ":grey_question:"),
            truncate_text=truncate_text, mentions=escape_keeping_mentions,
            principals=lambda stored: format_principals(split(str(stored))),
        )
        self.env.globals["FAILURES"] = sorted(FAILURES)  # the statuses that alert
        self.env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}

    def render(self, template: str, **context: Any) -> dict[str, Any]:
        """Render a `.json.j2` template into the dict Slack expects."""
        text = self.env.get_template(template).render(**context)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"template {template} produced invalid JSON: {exc}") from exc
        assert isinstance(value, dict)
        if template in REVEALS_SECRET:
            return value
        redacted = self.redact.structure(value)
        assert isinstance(redacted, dict)
        return redacted


def escape_mrkdwn(value: object, limit: int | None = None) -> str:
    """Escape Slack's control characters, then cut to `limit` without splitting an entity
    (escaping first, so the limit holds for what Slack receives)."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if limit is None or len(text) <= limit:
        return text
    return _PARTIAL_ENTITY.sub("", text[: limit - 1]) + "…"


_MENTION = re.compile(r"&lt;((?:@[UW]|#C|!subteam\^S)[A-Z0-9]{2,})&gt;")


def escape_keeping_mentions(value: object, limit: int | None = None) -> str:
    """Like `escape_mrkdwn`, but user, channel and group mentions the bot wrote itself
    (`<@U123>`, `<#C123>`, `<!subteam^S123>`) stay mentions: their shape holds no text."""
    return _MENTION.sub(r"<\1>", escape_mrkdwn(value, limit))


def truncate_text(value: object, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = round(seconds)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def format_when(value: datetime | None, layout: str = "%Y-%m-%d %H:%M UTC") -> str:
    if value is None:
        return "-"
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime(layout)
