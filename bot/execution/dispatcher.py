"""Takes queued runs from the database and executes them, a bounded number at a time.

The database is the queue: a run is claimed by a conditional UPDATE, so nothing is
lost across restarts. On start, runs left `running` by a previous process are
reconciled with their containers (found by label): adopted if the container still
exists, otherwise failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import docker.errors

from bot.core.backoff import Backoff
from bot.core.budget import Spend
from bot.core.crash_stage import CrashStage
from bot.core.statuses import FailureKind, RunStatus
from bot.core.verdict import RunOutcome, decide_outcome
from bot.errors import DatabaseUnavailable, SlackUnavailable
from bot.execution.crash import CrashPoints
from bot.execution.recording import RunRecorder, record_until_done
from bot.execution.wake import WakeLoop
from bot.services import Services
from bot.services.views import RunView
from runner.contract import Event, RunResult
from runner.host import publish, workspace
from runner.host.following import RunControl
from runner.host.sandbox import Sandbox

log = logging.getLogger(__name__)
Announce = Callable[[RunView], Awaitable[None]]
AnnounceSpend = Callable[[Spend, str], Awaitable[None]]  # the spend level, a channel


class RunWatcher(Protocol):
    """Hears a run's life as it goes (the live message in Slack): started and finished on
    the loop, every event from the thread that follows the container."""

    def run_started(self, view: RunView) -> None: ...
    def run_event(self, run_id: int, event: Event) -> None: ...  # thread-safe
    async def run_finished(self, run_id: int) -> None: ...


class Unwatched:
    """No one watches: only the result is announced."""

    def run_started(self, view: RunView) -> None:
        pass

    def run_event(self, run_id: int, event: Event) -> None:
        pass

    async def run_finished(self, run_id: int) -> None:
        pass


# A result Slack refused outright (not an outage) is not tried again before this, unless
# the process that tried restarts.
REFUSED_HOLD_SECONDS = 600.0
LOST_CONTAINER = "interrupted: the bot restarted and the run's container was gone"


class Dispatcher:
    def __init__(self, services: Services, sandbox: Sandbox, announce: Announce,
                 max_concurrent: int, poll_seconds: float = 2.0,
                 announce_spend: AnnounceSpend | None = None,
                 watcher: RunWatcher | None = None, crash: CrashPoints | None = None,
                 worker_id: str | None = None, lease_seconds: float = 30.0,
                 executes: bool = True) -> None:
        self.services = services
        # Scale-out: the worker holding what this process claims (runs, and the results it
        # posts: `RunService.claim_announcement`), for how long a claim lasts unrenewed;
        # `executes` False (ROUTINES_EXECUTE=off) claims no runs.
        self.worker_id, self.lease_seconds, self.executes = worker_id, lease_seconds, executes
        self.poster = worker_id or "local"
        self._swept = time.monotonic()  # the last look for results nobody is posting
        self._lost: set[int] = set()  # runs another process failed for a lapsed lease
        self._recording: set[int] = set()  # runs whose verdict this process is recording
        self.crash = crash or CrashPoints(None)  # test-only: ROUTINES_TEST_CRASH_AT
        self.watcher: RunWatcher = watcher or Unwatched()
        self.sandbox = sandbox
        self.announce = announce
        self.announce_spend = announce_spend
        self.max_concurrent = max_concurrent
        self.poll_seconds = poll_seconds
        self._active: dict[int, tuple[asyncio.Task[None], RunControl]] = {}
        self._executor = ThreadPoolExecutor(max_concurrent + 1, thread_name_prefix="run")
        # Kills have threads of their own, one per run that can be running: the kill switch
        # stops every container at once (the default executor has cores + 4 threads).
        self._kills = ThreadPoolExecutor(max(1, max_concurrent), thread_name_prefix="kill")
        self._claims = WakeLoop("dispatcher", self._claim, poll_seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Results owed to Slack: retried while the bot runs, not before Slack's Retry-After
        # (or the backoff) is over. `_announcing` keeps one attempt per run at a time;
        # `_posted` holds runs whose message is out but not yet marked (the database
        # failed), so they are marked, never posted twice; a run Slack refused outright
        # (not an outage) waits for the next start, as before.
        self._slack = Backoff(base=1.0, most=60.0)
        self._announcing: set[int] = set()
        self._posted: set[int] = set()
        self._owed: set[int] = set()
        self._stopping = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            if self.executes:
                await self._reconcile()
        except docker.errors.DockerException as exc:
            log.error("docker engine unavailable at start, runs will error: %s", exc)
        for view in await asyncio.to_thread(self.services.runs.to_announce, self.poster):
            await self._announce(view)  # every process does this: the claim picks one
        self._claims.start()

    def wake(self) -> None:
        """Thread-safe: a run was queued (from whatever thread queued it)."""
        self._claims.wake()

    def stop_run(self, run_id: int) -> None:
        """Thread-safe: kill a running run's container now (cancel, kill switch). Its
        follower sees the kill and records the verdict the service decides."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_run, run_id)

    def lose(self, run_id: int) -> None:
        """On the loop: this worker no longer holds the run (its lease lapsed and another
        process failed it): kill its container now, so no run executes twice, and leave its
        result to the process that recorded it."""
        self._lost.add(run_id)
        log.warning("run %s is no longer held by this worker: killing its container", run_id)
        self._stop_run(run_id)

    def _stop_run(self, run_id: int) -> None:
        active = self._active.get(run_id)
        if active is None:
            log.warning("run %s was asked to stop but is not running here", run_id)
            return
        active[1].kill()
        # The follower polls its control every second; killing the container directly,
        # in parallel for every run, makes an engaged kill switch take effect at once.
        assert self._loop is not None

        def done(future: asyncio.Future[None]) -> None:
            if future.exception() is not None:
                log.warning("could not kill run %s: %s", run_id, future.exception())

        self._loop.run_in_executor(self._kills, self.sandbox.kill, run_id).add_done_callback(
            done)

    async def stop(self) -> None:
        """Stop waiting on runs without killing them: the next start adopts them."""
        self._stopping = True
        await self._claims.stop()
        for _, control in self._active.values():
            control.detach()
        await asyncio.gather(*(task for task, _ in self._active.values()),
                             return_exceptions=True)
        self._executor.shutdown(wait=True)
        self._kills.shutdown(wait=True)

    @property
    def active_runs(self) -> list[int]:
        return list(self._active)

    @property
    def leased_runs(self) -> list[int]:
        """The runs whose lease this process must keep: executing, verdict not yet being
        recorded (a recorded run is no longer `running`, and is not lost for that)."""
        return [run_id for run_id in self._active if run_id not in self._recording]

    async def _claim(self) -> None:
        """Stop the runs another process asked to stop; start queued runs while a slot is
        free."""
        await self._stop_asked_elsewhere()
        while self.executes and len(self._active) < self.max_concurrent:
            view = await asyncio.to_thread(self.services.runs.claim_next, self.worker_id,
                                           self.lease_seconds, self.max_concurrent)
            if view is None:
                break
            self._spawn(view, container=None)
        await self._announce_owed()

    async def _announce_owed(self) -> None:
        """Post the results Slack could not take earlier (down, 5xx, 429), once its
        Retry-After or the backoff is over; oldest first, stopping at the first refusal.
        Once a lease it also takes the results nobody is posting: released by
        a process that failed to post them, or claimed by one that died. (A result owed
        when every process stopped is posted at the next start.)"""
        await self._sweep_unclaimed()
        for posted in list(self._posted):
            await asyncio.to_thread(self.services.runs.mark_announced, posted)
            self._posted.discard(posted)
        for run_id in sorted(self._owed):
            if not self._slack.ready(time.monotonic()):
                return
            view = await asyncio.to_thread(self.services.runs.get, run_id)
            if view.run.notified_at is not None:  # announced meanwhile (another process)
                self._owed.discard(run_id)
                continue
            if not await self._announce(view):
                return

    async def _sweep_unclaimed(self) -> None:
        """The results of runs that finished a claim's time ago and are still unposted,
        unclaimed or past their claim: owed here now (posted only if claimed here)."""
        now = time.monotonic()
        if now - self._swept < self.lease_seconds:
            return
        self._swept = now
        try:
            views = await asyncio.to_thread(self.services.runs.to_announce, self.poster,
                                            self.lease_seconds)
        except DatabaseUnavailable:
            return  # looked at again after the next claim's time
        self._owed.update(v.run.id for v in views if v.run.id is not None)

    async def _stop_asked_elsewhere(self) -> None:
        """A cancel or the kill switch from another process (the CLI, another bot) is
        written to the database only: carried out here, at the next poll, for the runs
        this process is running."""
        running = [run_id for run_id, (_, control) in self._active.items()
                   if not control.kill_requested.is_set()]
        if not running:
            return
        for run_id in await asyncio.to_thread(self.services.runs.stop_requested, running):
            self._stop_run(run_id)

    def _spawn(self, view: RunView, container: Any) -> None:
        run_id = view.run.id
        assert run_id is not None
        control = RunControl()
        task = asyncio.create_task(self._execute(view, control, container), name=f"run-{run_id}")
        self._active[run_id] = (task, control)

        def done(_: asyncio.Task[None]) -> None:
            self._active.pop(run_id, None)
            self._claims.wake_here()

        task.add_done_callback(done)

    async def _execute(self, view: RunView, control: RunControl, container: Any) -> None:
        spec = self.services.runs.spec(view)
        loop = asyncio.get_running_loop()

        watcher = self.watcher
        recorder = RunRecorder(self.services.runs, spec.run_id)  # holds writes in an outage

        def on_event(seq: int, event: Event) -> None:
            recorder.event(seq, event)
            self.crash(CrashStage.RUNNING)
            watcher.run_event(spec.run_id, event)

        def on_started(container_id: str) -> None:
            recorder.started(container_id)

        watcher.run_started(view)
        try:
            if container is None:
                result = await loop.run_in_executor(
                    self._executor, self.sandbox.execute, spec, on_event, on_started, control)
            else:
                # What the host saw before the restart: events, gateway usage, report.
                resume = await asyncio.to_thread(self.services.runs.resume, spec.run_id)
                result = await loop.run_in_executor(
                    self._executor, self.sandbox.follow, spec, container, on_event, control,
                    resume)
        except Exception as exc:  # a bug must not leave the run `running` forever
            log.exception("run %s crashed in the dispatcher", spec.run_id)
            result = RunResult(run_id=spec.run_id, infra_error=f"internal error: {exc}")
        await watcher.run_finished(spec.run_id)  # its live message's ts is recorded by now
        if result.detached:
            return
        self.crash(CrashStage.RECORDING)
        outcome = decide_outcome(result, spec.timeout_seconds)

        def record() -> tuple[RunView, bool]:  # the held events first, then the verdict
            recorder.flush()
            return self.services.runs.finish_once(
                spec.run_id, outcome, result.input_tokens, result.output_tokens, result.diff,
                result.commit)

        self._recording.add(spec.run_id)
        try:
            finished, recorded = await record_until_done(
                record, f"the result of run {spec.run_id}", lambda: self._stopping)
        finally:
            self._recording.discard(spec.run_id)
        # Only now: a crash before this adopts the ended container again (its verdict).
        await asyncio.to_thread(self.sandbox.release, spec.run_id)
        if spec.run_id in self._lost and not recorded:
            self._lost.discard(spec.run_id)
            return  # failed by lease expiry elsewhere: that process announced it
        self._lost.discard(spec.run_id)
        await self._announce_finished(finished, result)

    async def _announce_finished(self, finished: RunView, result: RunResult) -> None:
        """Drop a commit nobody will publish, announce the result, then the spend level."""
        if result.commit and finished.run.commit_sha is None:  # nothing to publish
            await asyncio.to_thread(publish.discard, self.sandbox.config.workspace_root,
                                    result.run_id)
        self.crash(CrashStage.ANNOUNCING)
        await self._announce(finished)
        try:
            spend = await asyncio.to_thread(self.services.spend.alert_due)
        except DatabaseUnavailable:
            return  # said at the next run's end
        if spend is not None and self.announce_spend is not None:
            try:
                await self.announce_spend(spend, finished.routine.channel_id)
            except Exception:
                log.exception("could not announce the spend level")

    async def announce_result(self, view: RunView) -> bool:
        """Post a result this process recorded without running it (a lapsed lease)."""
        return await self._announce(view)

    async def _announce(self, view: RunView) -> bool:
        """Post the run's result once; False if Slack is down (then it is owed:
        `_announce_owed` posts it when Slack is back)."""
        run_id = view.run.id
        assert run_id is not None
        if run_id in self._announcing or run_id in self._posted:
            return True  # an attempt is under way, or it is out already
        if not self._slack.ready(time.monotonic()):
            log.info("run %s's result waits for Slack (backing off)", run_id)
            self._owed.add(run_id)
            return False
        try:
            claimed = await asyncio.to_thread(self.services.runs.claim_announcement, run_id,
                                              self.poster, self.lease_seconds)
        except DatabaseUnavailable:
            self._owed.add(run_id)  # claimed (or found posted) once the database is back
            return False
        if not claimed:  # posted already, or another live process is posting it
            self._owed.discard(run_id)
            return True
        self._announcing.add(run_id)
        try:
            await self.announce(view)
        except SlackUnavailable as exc:
            wait = self._slack.failed(time.monotonic(), exc.retry_after)
            log.warning("could not announce run %s (%s): trying again in %.0fs", run_id,
                        exc, wait)
            self._owed.add(run_id)
            await self._release(run_id)
            return False
        except DatabaseUnavailable:
            # Posted, then the database failed as its place was recorded: marked later by
            # `_announce_owed`, never posted again.
            self._posted.add(run_id)
            self._owed.discard(run_id)
            return True
        except Exception:
            # Refused for another reason (a channel gone...): retried at the next start,
            # or by any process once the held claim runs out.
            log.exception("could not announce run %s", run_id)
            self._owed.discard(run_id)
            await self._release(run_id, REFUSED_HOLD_SECONDS)
            return True
        finally:
            self._announcing.discard(run_id)
        self._slack.succeeded()
        self._owed.discard(run_id)
        self._posted.add(run_id)
        try:
            await asyncio.to_thread(self.services.runs.mark_announced, run_id)
        except DatabaseUnavailable:
            return True  # posted: `_announce_owed` marks it once the database is back
        self._posted.discard(run_id)
        return True

    async def _release(self, run_id: int, hold_seconds: float = 0.0) -> None:
        """Give up the claim of a result not posted, so it is tried again (its claim runs
        out by itself if the database cannot take this now)."""
        with contextlib.suppress(DatabaseUnavailable):
            await asyncio.to_thread(self.services.runs.release_announcement, run_id,
                                    self.poster, hold_seconds)

    async def _reconcile(self) -> None:
        """Runs left `running` by this worker's previous process (or from before workers
        were recorded): adopted from their containers, or failed; other workers' runs and
        containers are theirs (their leases tell when they are lost)."""
        containers = await asyncio.to_thread(self.sandbox.find_run_containers)
        if self.worker_id is None:
            running = await asyncio.to_thread(self.services.runs.with_status, RunStatus.RUNNING)
        else:
            running = await asyncio.to_thread(self.services.run_leases.mine_running,
                                              self.worker_id)
        adopted: set[int] = set()
        for view in running:
            assert view.run.id is not None
            container = containers.pop(view.run.id, None)
            if container is not None and self.worker_id is not None and not (
                    await asyncio.to_thread(self.services.run_leases.adopt, self.worker_id,
                                            view.run.id, self.lease_seconds)):
                continue  # ended, or taken by another worker, meanwhile
            if container is not None:
                log.info("adopting run %s from container %s", view.run.id, container.short_id)
                adopted.add(view.run.id)
                self._spawn(view, container)
                continue
            log.warning("run %s was running but its container is gone", view.run.id)
            finished = await asyncio.to_thread(
                self.services.runs.finish, view.run.id,
                RunOutcome(RunStatus.FAILED, None, LOST_CONTAINER, FailureKind.INTERRUPTED),
                0, 0, "")
            await self._announce(finished)
        for run_id, container in containers.items():
            log.info("removing leftover container of finished run %s", run_id)
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(container.remove, force=True)
        await asyncio.to_thread(self._remove_leftover_workspaces, adopted)

    def _remove_leftover_workspaces(self, adopted: set[int]) -> None:
        """Every workspace but the adopted runs' belongs to no run any more (its run ended
        while no process followed it): unmounted and deleted, so its space returns."""
        root = self.sandbox.config.workspace_root
        for run_id in workspace.leftover_runs(root):
            if run_id not in adopted:
                log.info("removing the leftover workspace of run %s", run_id)
                workspace.remove(root, run_id)
