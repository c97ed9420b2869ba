"""Run one spec in a fresh, locked-down container and observe it to the end.

Blocking by design (docker and git are blocking libraries): the bot calls `execute`
from a worker thread and can stop waiting through a `RunControl` (`runner.host.following`).

A run's container has no network (`network_mode="none"`) and no key. It reaches the host
only through Unix sockets in a per-run directory beside its workspace, mounted at
`SOCKET_DIR`: the model gateway (`runner.host.gateway`), which holds the real key and
counts the run's usage and self-report. The run's log is one sequence: the container's
lines and the host's own events (`HOST_EVENT_TYPES`) in arrival order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from runner.contract import (
    GATEWAY_SOCKET,
    LABEL_ROUTINE,
    LABEL_RUN_ID,
    LABEL_TOKEN_SHA256,
    PROXY_SOCKET,
    SOCKET_DIR,
    SPEC_ENV,
    WORKSPACE,
    Engine,
    Resume,
    RunResult,
    RunSpec,
    report_tool,
)
from runner.disk_limit import DEFAULT_DISK_LIMIT
from runner.egress_policy import EgressPolicy
from runner.errors import GatewayUnavailable
from runner.host import hardening, pool, publish, workspace
from runner.host.egress_proxy import EgressAttempt, EgressProxy
from runner.host.fetch_policy import Resolver, system_resolve
from runner.host.following import (
    EventSink,
    RunControl,
    RunLog,
    kill_quietly,
    read_events,
    started_at,
    stderr_tail,
    wait_for_end,
)
from runner.host.gateway import GatewayRun, ModelCall, ModelGateway, new_token, token_sha256
from runner.host.hardening import SANDBOX_UID
from runner.host.loop import BackgroundLoop
from runner.repo_policy import FetchPolicy


@dataclass(frozen=True)
class SandboxConfig:
    image: str
    workspace_root: Path
    # Ignored: runs have no network at all (`network_mode="none"`); kept so that existing
    # configurations (ROUTINES_SANDBOX_NETWORK) still load.
    network: str = ""
    instance: str = "default"
    # The worker ("host/name") this process is: on its containers' labels, so that workers
    # sharing an engine never adopt or remove each other's; "" labels none (one process).
    worker: str = ""
    memory: str = "1g"
    cpus: float = 1.0
    pids: int = 256
    runtime: str = ""  # the engine's OCI runtime for runs ("runsc": gVisor); "" its default
    # The model gateway's upstream: the real key never leaves the host.
    anthropic_api_key: str = ""
    anthropic_base_url: str = ""
    max_diff_chars: int = 1_000_000
    # Bytes the run's files may take on the host (`runner.host.disk`); 0: no limit.
    disk_limit: int = DEFAULT_DISK_LIMIT
    # The container's log (its event stream) is kept in `log_files` files of at most
    # `log_file_size` each (docker's json-file rotation): bounded on the host's disk. An
    # adopted container's log is replayed from its start, so the bound is generous.
    log_file_size: str = "32m"
    log_files: int = 2
    # Which repositories the host may clone from and push to (`runner.repo_policy`):
    # host-side only, never in the spec the container sees.
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    # The image for runs whose engine is `claude-code` (README "Engines"); "" none.
    claude_code_image: str = ""
    # Warm containers kept ready for runs (`runner.host.pool`); 0: none, every run cold.
    warm_pool: int = 0

    def image_for(self, engine: str) -> str:
        """The image holding `engine`'s agent."""
        if engine == Engine.CLAUDE_CODE:
            if not self.claude_code_image:
                raise ClaudeCodeImageMissing
            return self.claude_code_image
        return self.image


class ClaudeCodeImageMissing(Exception):
    """A claude-code run, and no claude-code image configured."""

    def __str__(self) -> str:
        return "no claude-code image configured (ROUTINES_CLAUDE_CODE_IMAGE)"


class SandboxStage(StrEnum):
    """The points of `execute` a `Sandbox.reached` hook hears of (the bot's crash tests
    die there: bot.execution.crash)."""

    CLONED = "cloning"  # the workspace is cloned, no container yet
    CONTAINER_CREATED = "container_created"  # the container exists, not started
    FINISHING = "finishing"  # the container ended; its work not read back nor removed


class Sandbox:
    def __init__(self, client: docker.DockerClient, config: SandboxConfig,
                 resolve: Resolver = system_resolve,
                 egress_resolve: Resolver = system_resolve) -> None:
        self.client = client
        self.config = config
        self.resolve = resolve  # the clone's resolver (tests give a fake one)
        self._servers = BackgroundLoop("sandbox-servers")
        self.gateway = ModelGateway(self._servers, config.anthropic_base_url,
                                    config.anthropic_api_key)
        # The proxy's resolver: tests map their own test hosts' names to addresses.
        self.egress = EgressProxy(self._servers, resolve=egress_resolve)
        # Called at each `SandboxStage` of a run, from the run's thread; nothing by default.
        self.reached: Callable[[SandboxStage], None] = lambda _: None
        # True (the bot): an ended run's container and workspace stay until `release`, once
        # its verdict is stored, so that a crash before that adopts the ended run again
        # instead of finding it gone. False: removed as soon as the work is read back.
        self.release_when_recorded = False
        # Warm containers (`config.warm_pool` of each engine with an image); none: every
        # run starts cold. `pool` is the default engine's.
        self.pools = [pool.WarmPool(client, config, config.warm_pool, engine)
                      for engine in (Engine.BUILTIN, Engine.CLAUDE_CODE)
                      if config.warm_pool > 0 and (engine == Engine.BUILTIN
                                                   or config.claude_code_image)]
        self.pool = self.pools[0] if self.pools else None

    def close(self) -> None:
        """Stop serving every run (their containers run on, to be adopted) and the loop;
        remove the warm containers no run was given."""
        for warm in self.pools:
            warm.close()
        self.gateway.stop()
        self.egress.close()
        self._servers.stop()

    def socket_dir(self, run_id: int) -> Path:
        """The run's Unix sockets on the host, mounted at `SOCKET_DIR` in its container."""
        return self.config.workspace_root / f"run-{run_id}.sock"

    def execute(self, spec: RunSpec, on_event: EventSink,
                on_started: Callable[[str], None], control: RunControl) -> RunResult:
        """Clone, open the run's gateway, start the container (or give the run a warm one,
        `runner.host.pool`), follow it, and clean up, whatever happens."""
        root = self.config.workspace_root
        token = new_token()
        log = RunLog(on_event)
        warm = next((p for p in self.pools if p.engine == spec.engine), None)
        slot = warm.take(spec.engine) if warm is not None else None
        try:
            repo = workspace.prepare(root, spec.run_id, spec.repo_url, spec.branch,
                                     SANDBOX_UID if os.geteuid() == 0 else None,
                                     policy=self.config.fetch_policy, resolve=self.resolve,
                                     disk_limit=self.config.disk_limit,
                                     into=None if slot is None else slot.directory)
            self.reached(SandboxStage.CLONED)
            if slot is not None:
                pool.claim_sockets(slot, self.socket_dir(spec.run_id))
            door = self._open_gateway(spec, token_sha256(token), log, Resume())
            self._open_egress(spec, log)
            container = (self._start(spec, repo, token) if warm is None or slot is None
                         else self._give(warm, slot, spec, token))
        except (workspace.WorkspaceError, GatewayUnavailable, ClaudeCodeImageMissing,
                docker.errors.DockerException) as exc:
            if warm is not None and slot is not None:
                warm.discard(slot)
            self.gateway.close(spec.run_id)
            self.egress.close_run(spec.run_id)
            shutil.rmtree(self.socket_dir(spec.run_id), ignore_errors=True)
            workspace.remove(root, spec.run_id)
            return RunResult(run_id=spec.run_id, infra_error=_describe_infra_error(exc))
        on_started(container.id)
        return self._follow(spec, container, control, log, door, skip_events=0)

    def _give(self, warm: pool.WarmPool, slot: pool.WarmSlot, spec: RunSpec,
              token: str) -> Any:
        """The warm container's turn of `_start`: it runs already, and is given the run."""
        container = warm.deliver(slot, spec, token, token_sha256(token),
                                 self.container_name(spec.run_id))
        self.reached(SandboxStage.CONTAINER_CREATED)
        return container

    def kill(self, run_id: int) -> None:
        """Kill a run's container at once (its follower then records how it ended); its
        token admits nothing from now on, and its proxy lets nothing more through."""
        self.gateway.revoke(run_id)
        self.egress.close_run(run_id)
        try:  # one engine call by name (`containers.get(...).kill()` is an inspect too)
            self.client.api.kill(self.container_name(run_id))
        except docker.errors.NotFound:
            pass  # already gone
        except docker.errors.APIError as exc:
            if "is not running" not in str(exc):
                raise

    def container_name(self, run_id: int) -> str:
        return f"routines-{self.config.instance}-run-{run_id}"

    def find_run_containers(self) -> dict[int, Any]:
        """Every container this bot instance started, by run id (for reconciliation).

        Filtered by instance and worker, so two deployments, or two workers of one,
        sharing an engine never adopt or remove each other's runs."""
        found: dict[int, Any] = {}
        labels = [*pool.owner_filter(self.config), LABEL_RUN_ID]
        for container in self.client.containers.list(all=True, filters={"label": labels}):
            with contextlib.suppress(ValueError):
                found[int(container.labels[LABEL_RUN_ID])] = container
        found.update(pool.given_containers(self.client, self.config))
        return found

    def follow(self, spec: RunSpec, container: Any, on_event: EventSink,
               control: RunControl, resume: Resume) -> RunResult:
        """Follow a container started by an earlier bot process (adoption): its gateway is
        opened again on the same socket, for the same token (by its hash, a label), with
        the usage and report observed so far; the container's log is replayed from its
        start and the events already stored (`resume.skip_events`) skipped."""
        log = RunLog(on_event, resume.next_seq)
        try:
            door = self._open_gateway(spec, pool.token_hash(
                container, self.config.workspace_root, spec.run_id), log, resume)
            self._open_egress(spec, log)
        except GatewayUnavailable as exc:
            kill_quietly(container)
            self._finish(spec, container, RunResult(run_id=spec.run_id))
            return RunResult(run_id=spec.run_id, infra_error=str(exc))
        if container.status == "created":  # the last process died before it started it
            try:
                container.start()
            except docker.errors.APIError as exc:
                self.gateway.close(spec.run_id)
                self.egress.close_run(spec.run_id)
                self._finish(spec, container, RunResult(run_id=spec.run_id))
                return RunResult(run_id=spec.run_id, infra_error=_describe_infra_error(exc))
        return self._follow(spec, container, control, log, door, resume.skip_events)

    def _open_egress(self, spec: RunSpec, log: RunLog) -> None:
        """The run's proxy, for every policy (`none` included: refusals are logged too);
        each attempt, allowed or refused, becomes an `egress` event of the run's log."""
        def on_attempt(attempt: EgressAttempt) -> None:
            log.emit(dict(attempt.event(), ts=round(time.time(), 3)))

        path = self.socket_dir(spec.run_id) / PROXY_SOCKET
        try:
            self.egress.open_run(spec.run_id, EgressPolicy.from_spec(spec.egress), path,
                                 on_attempt)
        except OSError as exc:
            raise GatewayUnavailable(str(path), exc.strerror or str(exc)) from exc

    def _open_gateway(self, spec: RunSpec, token_hash: str, log: RunLog,
                      resume: Resume) -> GatewayRun:
        def on_call(call: ModelCall) -> None:
            log.emit(dict(call.to_event(), ts=round(time.time(), 3)))

        door = GatewayRun(spec.run_id, token_hash, spec.max_tokens, on_call,
                          resume.input_tokens, resume.output_tokens, resume.report,
                          report_tool=report_tool(spec.engine))
        path = self.socket_dir(spec.run_id) / GATEWAY_SOCKET
        try:
            self.gateway.open(door, path)
        except OSError as exc:
            raise GatewayUnavailable(str(path), exc.strerror or str(exc)) from exc
        return door

    def _follow(self, spec: RunSpec, container: Any, control: RunControl, log: RunLog,
                door: GatewayRun, skip_events: int) -> RunResult:
        """Stream a started container's events until it exits, times out, is killed, or
        its gateway refused a call over its token budget.

        `skip_events` lets an adopted container's earlier events (already stored) be
        skipped: the container's log is replayed from its start.
        """
        result = RunResult(run_id=spec.run_id)
        started = started_at(container, self.config.workspace_root, spec.run_id)
        stream = container.logs(stream=True, follow=True, stdout=True, stderr=False)
        reader = threading.Thread(target=read_events,
                                  args=(stream, result, log, skip_events), daemon=True)
        reader.start()
        if wait_for_end(spec, container, control, door, started, result):
            stream.close()  # the next bot process replays the log from the start
            reader.join(timeout=10)
            self.gateway.close(spec.run_id, revoke=False)  # the next one reopens it
            self.egress.close_run(spec.run_id)
            result.detached = True
            return result
        if result.exit_code is None:
            kill_quietly(container)
        reader.join(timeout=10)
        self.gateway.close(spec.run_id)  # the token dies with the run
        self.egress.close_run(spec.run_id)
        # Usage, budget and report: the gateway's observations, never the container's.
        result.input_tokens, result.output_tokens = door.input_tokens, door.output_tokens
        result.report = door.report
        result.token_budget_exceeded = door.budget_exceeded
        if result.final is None:  # why it died matters most when it never reported
            tail = stderr_tail(container)
            if tail:
                log.emit({"type": "stderr", "text": tail})
        self._finish(spec, container, result)
        return result

    def _start(self, spec: RunSpec, repo: Path, token: str) -> Any:
        cfg = self.config
        # Host-only fields are the host's business; left out, an older image still reads
        # the spec. The agent's key is the run's token, good only at the run's gateway;
        # everything else goes through the run's proxy (the forwarder's loopback port).
        env = {SPEC_ENV: spec.for_container().to_json(), "ANTHROPIC_API_KEY": token,
               **hardening.network_env()}
        container = hardening.create(
            self.client, cfg, image=cfg.image_for(spec.engine),
            name=self.container_name(spec.run_id),
            labels={**pool.owner_labels(cfg), LABEL_RUN_ID: str(spec.run_id),
                    LABEL_ROUTINE: spec.routine, LABEL_TOKEN_SHA256: token_sha256(token)},
            environment=env,
            volumes={str(repo): {"bind": WORKSPACE, "mode": "rw"},
                     str(self.socket_dir(spec.run_id)): {"bind": SOCKET_DIR, "mode": "ro"}})
        self.reached(SandboxStage.CONTAINER_CREATED)
        try:
            container.start()
        except docker.errors.APIError:
            container.remove(force=True)
            raise
        return container

    def _finish(self, spec: RunSpec, container: Any, result: RunResult) -> None:
        """Read the work back (the diff; for a publishing run, the kept commit), then
        remove the container and the workspace. The container has ended by now."""
        self.reached(SandboxStage.FINISHING)
        root = self.config.workspace_root
        try:
            # Before the host's own git work takes any of the run's space.
            result.disk_limit_reached = workspace.disk_limit_reached(root, spec.run_id)
            result.diff = workspace.diff(root, spec.run_id, self.config.max_diff_chars)
            if spec.publish:
                try:
                    result.commit = publish.keep(root, spec.run_id,
                                                 self._commit_message(spec, result),
                                                 secrets=(self.config.anthropic_api_key,))
                except publish.PublishError as exc:
                    result.publish_error = str(exc)
        finally:
            if not self.release_when_recorded:
                self.release(spec.run_id, container)

    def release(self, run_id: int, container: Any = None) -> None:
        """Remove an ended run's container, workspace and sockets (nothing there is fine).
        An engine that cannot be reached leaves the container to the next start's
        reconciliation, which removes the containers of ended runs."""
        with contextlib.suppress(docker.errors.DockerException,
                                 requests.exceptions.RequestException):
            if container is None:
                container = self.client.containers.get(self.container_name(run_id))
            container.remove(force=True)
        workspace.remove(self.config.workspace_root, run_id)
        shutil.rmtree(self.socket_dir(run_id), ignore_errors=True)

    def _commit_message(self, spec: RunSpec, result: RunResult) -> str:
        title = f"routine {spec.routine} run {spec.run_id}"
        lines = result.report.summary.strip().splitlines() if result.report else []
        if not lines:
            return title
        summary = lines[0][:200]
        if self.config.anthropic_api_key:  # the bot redacts the rest; this leaves the host
            summary = summary.replace(self.config.anthropic_api_key, "[REDACTED]")
        return f"{title}\n\n{summary}"


def _describe_infra_error(exc: Exception) -> str:
    if isinstance(exc, workspace.WorkspaceError | GatewayUnavailable | ClaudeCodeImageMissing):
        return str(exc)
    if isinstance(exc, docker.errors.ImageNotFound):
        return "sandbox image not found: build it with `make images`"
    if isinstance(exc, docker.errors.APIError):
        return f"docker engine refused the run: {exc.explanation or exc}"
    return f"docker engine unreachable: {exc}"
