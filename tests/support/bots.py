"""What the tests that start the bot share: the sandbox image, the results channel, and the
type of the `start_bot` fixture (tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from bot.app import Bot
from tests.support.slack_requests import FakeSlack

SANDBOX_IMAGE = os.environ.get("ROUTINES_SANDBOX_IMAGE", "routines-sandbox:latest")
# The image of `engine=claude-code` runs (the sandbox image with Claude Code's CLI in it).
CLAUDE_CODE_IMAGE = os.environ.get("ROUTINES_CLAUDE_CODE_IMAGE", "routines-claude-code:latest")
RESULTS_CHANNEL = "C0RESULTS1"

BotFactory = Callable[..., Awaitable[tuple[Bot, FakeSlack]]]
