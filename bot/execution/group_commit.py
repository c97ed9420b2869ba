"""Group commit on the event loop: requests that arrive while a commit is being written
wait for the next one, and then share it.

No timer: the first request is written at once, alone; the ones that arrive during its
commit form the next group, and so on. Under a light load every request has its own
commit (no added latency); under a heavy one a group holds everything that arrived
during one commit, so the commits per second stay what the database can do while the
requests per second grow with the group. At most `max_group` requests share a commit,
so one transaction stays short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")
DEFAULT_MAX_GROUP = 256


class GroupCommit(Generic[Item, Answer]):
    """`await submit(item)` is `commit([item, ...])[i]` for the group `item` joined.

    `commit` runs in a worker thread, one group at a time, and returns one answer per item
    in order (an answer may be an exception value: it is returned, not raised). If
    `commit` raises, every item of its group gets that exception raised."""

    def __init__(self, commit: Callable[[Sequence[Item]], Sequence[Answer]],
                 max_group: int = DEFAULT_MAX_GROUP) -> None:
        self._commit = commit
        self._max_group = max_group
        self._waiting: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="group-commit")
        # A caller that goes away cancels its future only: its item stays in the group
        # (it may be written already) and its answer is dropped.
        return await future

    async def _write(self) -> None:
        """Commit groups until nobody waits; each group is what arrived meanwhile."""
        group: list[tuple[Item, asyncio.Future[Answer]]] = []
        try:
            while self._waiting:
                group = self._waiting[:self._max_group]
                del self._waiting[:self._max_group]
                try:
                    answers = await asyncio.to_thread(self._commit, [i for i, _ in group])
                except Exception as exc:  # the whole group failed: each caller hears it
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(group, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._writer = None
            for _, future in group + self._waiting:  # only left undone when cancelled
                future.cancel()
