"""One task per process beats for it (docs/scale-out.md): every third of a lease it says
it is alive, renews the lease of every run it executes, kills the container of a run it
no longer holds, and fails the runs of other workers whose leases lapsed."""

from __future__ import annotations

import asyncio
import logging

from bot.core.worker import WorkerIdentity, beat_interval
from bot.execution.dispatcher import Dispatcher
from bot.execution.wake import WakeLoop
from bot.services import Services

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, services: Services, dispatcher: Dispatcher, me: WorkerIdentity,
                 lease_seconds: float) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self.me = me
        self.lease_seconds = lease_seconds
        self._loop = WakeLoop("heartbeat", self._beat, beat_interval(lease_seconds))

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _beat(self) -> None:
        await asyncio.to_thread(self.services.workers.beat, self.me.id)
        leases = self.services.run_leases
        leased = self.dispatcher.leased_runs
        if leased:
            held = await asyncio.to_thread(leases.renew, self.me.id, leased,
                                           self.lease_seconds)
            for run_id in set(leased) - held:
                if run_id in self.dispatcher.leased_runs:  # not recorded meanwhile
                    self.dispatcher.lose(run_id)
        # Idempotent in every process: each lapsed run is failed by one of them.
        for lapse in await asyncio.to_thread(leases.lapsed, self.me.id):
            view = await asyncio.to_thread(leases.expire, lapse)
            if view is not None:
                log.warning("run %s: %s", lapse.run_id, lapse.reason)
                await self.dispatcher.announce_result(view)
