"""Slack user groups, for roles granted to a group: who is in `S0123` right now.

A narrow adapter the service is given as its `roles.Directory`: a blocking call (the
service runs in worker threads) with a short cache, so a burst of clicks costs one
lookup. A group that cannot be read grants nothing (and says so in the log).
"""

from __future__ import annotations

import logging
import threading
import time

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)


class SlackDirectory:
    def __init__(self, token: str, base_url: str, ttl_seconds: float = 60.0) -> None:
        self.client = WebClient(token=token, base_url=base_url, timeout=10)
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, group: str) -> frozenset[str]:
        with self._lock:
            cached = self._cache.get(group)
        if cached and time.monotonic() - cached[0] < self.ttl_seconds:
            return cached[1]
        try:
            response = self.client.usergroups_users_list(usergroup=group)
            members = frozenset(str(u) for u in response.get("users") or [])
        except (SlackApiError, OSError) as exc:
            log.warning("could not read user group %s: %s", group, exc)
            return frozenset()
        with self._lock:
            self._cache[group] = (time.monotonic(), members)
        return members
