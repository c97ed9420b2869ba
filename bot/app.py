"""The whole bot as one object with an explicit lifetime: `start()` opens everything,
`stop()` closes what it opened. Tests start and stop it in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import docker
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.crash_stage import CrashStage
from bot.core.redaction import Redactor
from bot.core.worker import WorkerIdentity, WorkerRole
from bot.doors.http.ops import Readiness, add_ops_routes
from bot.doors.http.server import build_web_app
from bot.doors.scheduler import Scheduler
from bot.doors.slack.announce import Announcer
from bot.doors.slack.approvals import ApprovalDesk, ApprovalMessages
from bot.doors.slack.directory import SlackDirectory
from bot.doors.slack.home import HomeTab
from bot.doors.slack.listeners import build_slack_app
from bot.doors.slack.live_progress import BoardTimings, ProgressBoard
from bot.doors.slack.messages import Messages
from bot.doors.slack.socket import GuardedSocketModeHandler
from bot.errors import DatabaseUnavailable
from bot.execution.crash import CrashPoints
from bot.execution.dispatcher import Dispatcher
from bot.execution.group_commit import GroupCommit
from bot.execution.heartbeat import Heartbeat
from bot.execution.publisher import Publisher
from bot.services import ServicePolicy, Services
from bot.services.events import (
    ApprovalRequested,
    DigestScheduleChanged,
    KillSwitchChanged,
    PublishDecided,
    RunQueued,
    ScheduleChanged,
    StopRequested,
)
from bot.services.metrics import build_registry, running_containers
from bot.services.views import RunView
from bot.settings import Settings
from bot.store import schema
from bot.store.database import Database
from bot.store.one_process import OneProcess
from runner.host.sandbox import Sandbox, SandboxConfig
from runner.repo_policy import FetchPolicy

log = logging.getLogger(__name__)


class Bot:
    """`role` SERVE is `routines serve` (the doors, the scheduler, and runs unless
    ROUTINES_EXECUTE=off); WORKER is `routines worker`: runs only, and their messages."""

    def __init__(self, settings: Settings, role: WorkerRole = WorkerRole.SERVE) -> None:
        self.settings = settings
        self.role = role
        self.executes = role == WorkerRole.WORKER or settings.execute
        self.me = WorkerIdentity(settings.worker_id.split("/", 1)[0], settings.worker_name,
                                 role, self.executes, os.getpid())
        self.db = Database(settings.database_url)
        self.one_process = OneProcess(settings.database_url)  # SQLite: this process alone
        redact = Redactor(settings.secrets)
        self.services = Services(
            self.db, ServicePolicy.from_settings(settings), redact,
            SlackDirectory(settings.slack_bot_token, settings.slack_api_url))
        self.messages = Messages(redact=redact)
        self.slack_client = AsyncWebClient(token=settings.slack_bot_token,
                                           base_url=settings.slack_api_url)
        self.docker = docker.DockerClient(base_url=settings.docker_host or None)
        self.sandbox = Sandbox(self.docker, _sandbox_config(settings, self.executes))
        # Test-only (ROUTINES_TEST_CRASH_AT): inert unless a crash test set a stage.
        self.crash = crash = CrashPoints(settings.test_crash_at)
        self.sandbox.reached = lambda stage: crash(CrashStage(stage.value))
        self.sandbox.release_when_recorded = True  # the dispatcher releases each run
        self.progress = ProgressBoard(
            self.slack_client, self.messages, self.services, settings.prices,
            BoardTimings(settings.progress_update_seconds,
                         settings.progress_updates_per_second, settings.progress_idle_seconds))
        self.announcer = announcer = Announcer(self.slack_client, self.messages, self.services,
                              settings.incidents_channel, self.progress)
        async def announce(view: RunView) -> None:
            await announcer(view)
            crash(CrashStage.ANNOUNCED)  # test-only: posted, not yet marked announced

        self.dispatcher = Dispatcher(self.services, self.sandbox, announce,
                                     settings.max_concurrent_runs,
                                     announce_spend=announcer.spend,
                                     watcher=self.progress if settings.live_progress else None,
                                     crash=crash, worker_id=settings.worker_id,
                                     lease_seconds=settings.lease_seconds,
                                     executes=self.executes)
        self.heartbeat = Heartbeat(self.services, self.dispatcher, self.me,
                                   settings.lease_seconds)
        self.scheduler = Scheduler(self.services, announcer.missed, announcer.digest,
                                   settings.schedule_grace_seconds,
                                   settings.schedule_sync_seconds, holder=settings.worker_id,
                                   lease_seconds=settings.lease_seconds)
        self.approvals = ApprovalDesk(self.services, self.slack_client,
                                      ApprovalMessages(self.services, self.messages),
                                      Publisher(self.services.publishing,
                                                self.sandbox.config.workspace_root,
                                                self.sandbox.config.fetch_policy, crash),
                                      min(5.0, max(0.5, settings.approval_timeout_seconds / 4)),
                                      may_expire=self.scheduler.leading,
                                      worker_id=settings.worker_id,
                                      publish_only=role == WorkerRole.WORKER)
        self.slack = build_slack_app(settings, self.services, self.messages, self.slack_client)
        self.home = HomeTab(self.services, self.messages, self.slack_client,
                            settings.home_refresh_seconds, settings.lease_seconds)
        self.home.register(self.slack)
        # The API door's calls that arrive together share one transaction.
        self.api_triggers = GroupCommit(self.services.trigger_batch.trigger_api_calls)
        self._wire()
        self._web: web.AppRunner | None = None
        self._socket: GuardedSocketModeHandler | None = None
        self.port = 0

    def _wire(self) -> None:
        """Who hears what happened: every event's handlers, in one place."""
        bus = self.services.bus
        # First, so that a crash test dies with the run stored and nobody told of it yet.
        bus.subscribe(RunQueued, lambda _: self.crash(CrashStage.QUEUED))
        bus.subscribe(ApprovalRequested, lambda _: self.crash(CrashStage.AWAITING_APPROVAL))
        bus.subscribe(RunQueued, lambda _: self.dispatcher.wake())
        bus.subscribe(RunQueued, lambda _: self.home.changed())
        bus.subscribe(StopRequested, lambda event: self.dispatcher.stop_run(event.run_id))
        bus.subscribe(KillSwitchChanged, self._kill_switch_changed)
        bus.subscribe(ApprovalRequested, lambda _: self.approvals.wake())
        bus.subscribe(PublishDecided, lambda _: self.approvals.wake())
        bus.subscribe(ScheduleChanged, self.scheduler.schedule_changed)
        bus.subscribe(DigestScheduleChanged, self.scheduler.digest_schedule_changed)

    def _kill_switch_changed(self, event: KillSwitchChanged) -> None:
        """Engaged: no warm container waits for a run; disengaged: the pool refills."""
        for warm in self.sandbox.pools:
            (warm.drain if event.engaged else warm.resume)()

    async def start(self) -> None:
        self.one_process.claim()  # before anything reads or changes the database
        await asyncio.to_thread(schema.upgrade, self.db)
        # Refused (one line, exit 1) while a live process of this host has this id.
        await asyncio.to_thread(self.services.workers.register, self.me)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.progress.start()
        await self.dispatcher.start()
        self.heartbeat.start()
        kill_switch = self.services.kill_switch
        for warm in self.sandbox.pools:  # after reconciliation: it adopted given ones
            warm.held = lambda: kill_switch.state().engaged
            await asyncio.to_thread(warm.start)
        await self.approvals.start()
        if self.role == WorkerRole.SERVE:
            await self.announcer.complete_pending_steps()
            await self.scheduler.start()
            await self.home.start()
            web_app = build_web_app(self.slack, self.db, self.services, self.settings,
                                    self.api_triggers.submit)
        else:
            web_app = web.Application()  # a worker keeps only the ops routes
        add_ops_routes(web_app, Readiness(self.db, self.docker), build_registry(
            self.db, running_containers(self.docker, self.settings.instance),
            lambda: self.services.workers.all(self.settings.lease_seconds)))
        # keepalive_timeout also bounds a connection's wait for a request's headers (aiohttp
        # closes a connection whose request has not fully arrived when it expires); after a
        # refusal, the rest of a body is drained for no longer than a body may take.
        body_timeout = self.settings.http_body_timeout_seconds
        self._web = web.AppRunner(web_app, access_log=None,
                                  keepalive_timeout=self.settings.http_header_timeout_seconds,
                                  lingering_time=min(10.0, body_timeout))
        await self._web.setup()
        site = web.TCPSite(self._web, self.settings.host, self.settings.port)
        await site.start()
        self.port = self._web.addresses[0][1]
        if self.role == WorkerRole.WORKER:
            log.info("routines worker ready (%s, port %s)", self.me.id, self.port)
            return
        if self.settings.socket_mode:
            self._socket = GuardedSocketModeHandler(self.slack, self.settings.slack_app_token)
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
        log.info("routines bot ready (%s mode, port %s)",
                 "socket" if self.settings.socket_mode else "http", self.port)

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
        if self._web is not None:
            await self._web.cleanup()
        await self.home.stop()
        await self.scheduler.stop()
        await self.approvals.stop()
        await self.heartbeat.stop()
        await self.dispatcher.stop()
        await self.progress.stop()
        self.sandbox.close()
        self.docker.close()
        with contextlib.suppress(DatabaseUnavailable):  # its heartbeat then says it stopped
            await asyncio.to_thread(self.services.workers.stopped, self.me.id)
        self.db.close()
        self.one_process.release()


def _sandbox_config(settings: Settings, executes: bool) -> SandboxConfig:
    """Runs' containers carry the worker id; each named worker has workspaces of its own
    (two workers may share a data directory on one host), the default one where they were
    before workers had names. A process that executes nothing keeps no warm pool."""
    workspaces = settings.instance + ("" if settings.worker_name == Settings.worker_name
                                      else f"-{settings.worker_name}")
    return SandboxConfig(
        image=settings.sandbox_image,
        claude_code_image=settings.claude_code_image,
        workspace_root=settings.data_dir.resolve() / "workspaces" / workspaces,
        instance=settings.instance,
        worker=settings.worker_id,
        memory=settings.sandbox_memory,
        cpus=settings.sandbox_cpus,
        pids=settings.sandbox_pids,
        runtime=settings.sandbox_runtime,
        disk_limit=settings.run_disk_limit,
        anthropic_api_key=settings.anthropic_api_key,
        anthropic_base_url=settings.anthropic_base_url,
        fetch_policy=FetchPolicy(settings.repo_hosts, settings.allow_local_repos),
        warm_pool=0 if not executes else (
            settings.max_concurrent_runs if settings.warm_pool is None else settings.warm_pool),
    )
