"""Block Kit checks against slack_sdk's models (Slack's own limits)."""

from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import Block


def check_blocks(message: dict[str, Any]) -> list[Block]:
    assert message["text"], "every message needs fallback text (notifications, screen readers)"
    assert len(message["blocks"]) <= 50
    blocks = Block.parse_all(message["blocks"])
    for block in blocks:
        block.validate_json()  # raises SlackObjectFormationError past Slack's limits
    return blocks
