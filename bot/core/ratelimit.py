"""A sliding-window limit per key (a routine). In memory on purpose: a restart forgiving
a burst is harmless, and a database write per check would cost more than it protects."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    def __init__(self, max_hits: int, window_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_hits = max_hits
        self.window = window_seconds
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> int | None:
        """Record a hit; None when allowed, else the seconds to wait (nothing recorded)."""
        now = self.clock()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.max_hits:
                return max(1, math.ceil(hits[0] + self.window - now))
            hits.append(now)
            return None
