"""Slack being down or rate-limiting, said as data: a failed post becomes `SlackUnavailable`
(its status and `Retry-After`), so the loops that owe messages (results, approval requests,
digests) know to post again later, and when; any other refusal passes through unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from slack_sdk.errors import SlackApiError

from bot.doors.slack.live_progress import retry_after
from bot.errors import SlackUnavailable

OUTAGE_STATUSES = frozenset({429, 500, 502, 503, 504})


@asynccontextmanager
async def outage_of(method: str) -> AsyncIterator[None]:
    """Around one Slack call: a 429, a 5xx or no answer at all is `SlackUnavailable`."""
    try:
        yield
    except SlackApiError as exc:
        status = exc.response.status_code
        if status not in OUTAGE_STATUSES:
            raise
        raise SlackUnavailable(method, status,
                               retry_after(exc) if status == 429 else None) from exc
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise SlackUnavailable(method, None, None) from exc
