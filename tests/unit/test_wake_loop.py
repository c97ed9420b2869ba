"""The background loops' wake-ups: every wake is heard, a burst inside the gap is one step."""

from __future__ import annotations

import asyncio

from bot.execution.wake import WakeLoop

LONG = 3600.0  # a period that never elapses in a test: only wakes make a step run


class Steps:
    """A step that counts its rounds; `reach(n)` waits for the n-th."""

    def __init__(self) -> None:
        self.count = 0
        self._moved = asyncio.Condition()

    async def step(self) -> None:
        async with self._moved:
            self.count += 1
            self._moved.notify_all()

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(10), self._moved:
            await self._moved.wait_for(lambda: self.count >= count)


async def test_a_burst_of_wakes_inside_the_gap_is_one_step_not_lost_not_repeated() -> None:
    steps = Steps()
    loop = WakeLoop("test", steps.step, LONG, min_gap=0.3)
    loop.start()
    try:
        await steps.reach(1)  # the first step runs at start
        for _ in range(50):
            loop.wake_here()
            await asyncio.sleep(0)
        await steps.reach(2)  # the burst is heard once the gap is over
        await asyncio.sleep(0.5)  # past another gap: nothing was left over to run
        assert steps.count == 2
    finally:
        await loop.stop()


async def test_without_a_gap_each_wake_after_a_step_runs_the_next_one() -> None:
    steps = Steps()
    loop = WakeLoop("test", steps.step, LONG)
    loop.start()
    try:
        for count in range(1, 4):
            await steps.reach(count)
            loop.wake()  # the thread-safe door, from the loop's own thread here
        await steps.reach(4)
    finally:
        await loop.stop()
    assert steps.count == 4
