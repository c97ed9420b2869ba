"""How the Slack door says an error: mrkdwn code spans, mentions, `/routine` hints."""

from __future__ import annotations

from collections.abc import Iterable

from bot.core.roles import format_principals
from bot.errors import RoutinesError


class SlackStyle:
    def code(self, text: str) -> str:
        return f"`{text}`"

    def user(self, user_id: str) -> str:
        return f"<@{user_id}>"

    def users(self, principals: Iterable[str]) -> str:
        return format_principals(principals)

    def command(self, args: str) -> str | None:
        return f"`/routine {args}`"


SLACK = SlackStyle()


def say(error: Exception) -> str:
    """The error in Slack's words (an unparsable id, a ValueError, as it says itself)."""
    return error.words(SLACK) if isinstance(error, RoutinesError) else str(error)
