"""Secrets out of everything stored or shown: known values, and well-known token shapes.

Applied before storage (a run's events, summary, reason and diff) and to every message
rendered for Slack (`bot.doors.slack.messages.Messages`), so a secret an agent prints, a payload
carries or a user pastes into a prompt is masked wherever it would surface.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "[REDACTED]"
TOKEN_PATTERNS = re.compile(
    r"xox[abposr]-[A-Za-z0-9-]{8,}"  # Slack bot, user, app-config... tokens
    r"|xapp-[A-Za-z0-9-]{8,}"  # Slack app-level tokens
    r"|sk-ant-[A-Za-z0-9_-]{8,}"  # Anthropic API keys
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|\brt_[A-Za-z0-9_-]{40,}"  # this bot's API tokens (`rt_` + 43 characters)
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"
)
MIN_SECRET_LENGTH = 6  # shorter configured values would mask ordinary words


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH},
                              key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return TOKEN_PATTERNS.sub(MASK, text)

    def structure(self, value: Any) -> Any:
        """Every string in a JSON-like value (dicts, lists, strings), redacted. Working on
        the parsed value, not on JSON text, catches secrets whatever JSON escaping did."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {key: self.structure(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.structure(item) for item in value]
        return value
