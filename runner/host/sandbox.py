"""Run one spec in a fresh, locked-down container and observe it to the end.

Blocking by design (docker and git are blocking libraries): the bot calls `execute`
from a worker thread and can stop waiting through a `RunControl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions

from runner.contract import (
    LABEL_INSTANCE,
    LABEL_ROUTINE,
    LABEL_RUN_ID,
    SPEC_ENV,
    WORKSPACE,
    Event,
    RunResult,
    RunSpec,
    parse_event_line,
)
from runner.disk_limit import DEFAULT_DISK_LIMIT
from runner.host import publish, workspace
from runner.host.fetch_policy import Resolver, system_resolve
from runner.host.log_lines import capped_lines
from runner.repo_policy import FetchPolicy

SANDBOX_UID = 10001
EventSink = Callable[[int, Event], None]


@dataclass(frozen=True)
class SandboxConfig:
    image: str
    network: str
    workspace_root: Path
    instance: str = "default"
    memory: str = "1g"
    cpus: float = 1.0
    pids: int = 256
    runtime: str = ""  # the engine's OCI runtime for runs ("runsc": gVisor); "" its default
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


class RunControl:
    """Lets the bot stop waiting for a run (`detach`) or end it (`kill`) from another thread."""

    def __init__(self) -> None:
        self.detached = threading.Event()
        self.kill_requested = threading.Event()

    def detach(self) -> None:
        self.detached.set()

    def kill(self) -> None:
        self.kill_requested.set()


class Sandbox:
    def __init__(self, client: docker.DockerClient, config: SandboxConfig,
                 resolve: Resolver = system_resolve) -> None:
        self.client = client
        self.config = config
        self.resolve = resolve  # the clone's resolver (tests give a fake one)

    def ensure_network(self) -> None:
        """Create the runs' bridge network once; runs never share the default bridge."""
        existing = self.client.networks.list(names=[self.config.network])  # substring match
        if not any(network.name == self.config.network for network in existing):
            self.client.networks.create(self.config.network, driver="bridge",
                                        labels={"org.routines": "sandbox"})

    def execute(self, spec: RunSpec, on_event: EventSink,
                on_started: Callable[[str], None], control: RunControl) -> RunResult:
        """Clone, start the container, follow it, and clean up, whatever happens."""
        root = self.config.workspace_root
        try:
            repo = workspace.prepare(root, spec.run_id, spec.repo_url, spec.branch,
                                     SANDBOX_UID if os.geteuid() == 0 else None,
                                     policy=self.config.fetch_policy, resolve=self.resolve,
                                     disk_limit=self.config.disk_limit)
            container = self._start(spec, repo)
        except (workspace.WorkspaceError, docker.errors.DockerException) as exc:
            workspace.remove(root, spec.run_id)
            return RunResult(run_id=spec.run_id, infra_error=_describe_infra_error(exc))
        on_started(container.id)
        return self.follow(spec, container, on_event, control, skip_events=0)

    def kill(self, run_id: int) -> None:
        """Kill a run's container at once (its follower then records how it ended)."""
        try:
            self.client.containers.get(self.container_name(run_id)).kill()
        except docker.errors.NotFound:
            pass  # already gone
        except docker.errors.APIError as exc:
            if "is not running" not in str(exc):
                raise

    def container_name(self, run_id: int) -> str:
        return f"routines-{self.config.instance}-run-{run_id}"

    def find_run_containers(self) -> dict[int, Any]:
        """Every container this bot instance started, by run id (for reconciliation).

        Filtered by instance, so two deployments sharing an engine never adopt or remove
        each other's runs."""
        found: dict[int, Any] = {}
        labels = [f"{LABEL_INSTANCE}={self.config.instance}", LABEL_RUN_ID]
        for container in self.client.containers.list(all=True, filters={"label": labels}):
            with contextlib.suppress(ValueError):
                found[int(container.labels[LABEL_RUN_ID])] = container
        return found

    def follow(self, spec: RunSpec, container: Any, on_event: EventSink,
               control: RunControl, skip_events: int) -> RunResult:
        """Stream a started container's events until it exits, times out or is killed.

        `skip_events` lets an adopted container's earlier events (already stored) be
        skipped: the container's log is replayed from its start.
        """
        result = RunResult(run_id=spec.run_id)
        started = _started_at(container)
        stream = container.logs(stream=True, follow=True, stdout=True, stderr=False)
        meter = _TokenMeter(spec.max_tokens, over_budget=lambda: _kill(container))
        reader = threading.Thread(target=self._read_events,
                                  args=(stream, result, on_event, skip_events, meter),
                                  daemon=True)
        reader.start()
        deadline = started + spec.timeout_seconds
        while True:
            if control.detached.is_set():
                stream.close()  # the next bot process replays the log from the start
                reader.join(timeout=10)
                result.detached = True
                return result
            if control.kill_requested.is_set():
                result.killed = True
                break
            remaining = deadline - time.time()
            if remaining <= 0:
                result.timed_out = True
                break
            try:
                status = container.wait(timeout=min(1.0, remaining))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                continue
            result.exit_code = int(status.get("StatusCode", -1))
            # Killed from outside while we waited (the bot kills containers directly).
            result.killed = control.kill_requested.is_set()
            break
        if result.exit_code is None:
            _kill(container)
        reader.join(timeout=10)
        if result.final is None:  # why it died matters most when it never reported
            tail = _stderr_tail(container)
            if tail:
                on_event(result.events_seen + 1, {"type": "stderr", "text": tail})
        self._finish(spec, container, result)
        return result

    def _start(self, spec: RunSpec, repo: Path) -> Any:
        cfg = self.config
        # `publish` is the host's business; left out, an older image still reads the spec.
        env = {SPEC_ENV: dataclasses.replace(spec, publish=False).to_json(),
               "ANTHROPIC_API_KEY": cfg.anthropic_api_key}
        if cfg.anthropic_base_url:
            env["ANTHROPIC_BASE_URL"] = cfg.anthropic_base_url
        user = f"{SANDBOX_UID}:{SANDBOX_UID}" if os.geteuid() == 0 else f"{os.geteuid()}"
        # `create` never pulls (unlike `run`): a missing image is an error, not a download.
        container = self.client.containers.create(
            cfg.image,
            name=self.container_name(spec.run_id),
            labels={LABEL_INSTANCE: cfg.instance, LABEL_RUN_ID: str(spec.run_id),
                    LABEL_ROUTINE: spec.routine},
            environment=env,
            user=user,
            network=cfg.network,
            runtime=cfg.runtime or None,
            volumes={str(repo): {"bind": WORKSPACE, "mode": "rw"}},
            working_dir=WORKSPACE,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            tmpfs={"/tmp": "rw,size=512m,mode=1777",  # noqa: S108 - inside the container
                   "/home/agent": f"rw,size=512m,uid={SANDBOX_UID},gid={SANDBOX_UID}"},
            mem_limit=cfg.memory,
            memswap_limit=cfg.memory,
            nano_cpus=int(cfg.cpus * 1e9),
            pids_limit=cfg.pids,
            log_config=docker.types.LogConfig(
                type=docker.types.LogConfig.types.JSON,
                config={"max-size": cfg.log_file_size, "max-file": str(cfg.log_files)}),
        )
        try:
            container.start()
        except docker.errors.APIError:
            container.remove(force=True)
            raise
        return container

    @staticmethod
    def _read_events(stream: Any, result: RunResult, on_event: EventSink,
                     skip_events: int, meter: _TokenMeter) -> None:
        seq = 0
        for line in capped_lines(_chunks(stream)):  # no line can exhaust the host's memory
            if not line.strip():
                continue
            seq += 1
            event = parse_event_line(line.decode("utf-8", errors="replace"))
            meter.account(result, event)
            if seq > skip_events:
                on_event(seq, event)
        result.events_seen = seq

    def _finish(self, spec: RunSpec, container: Any, result: RunResult) -> None:
        """Read the work back (the diff; for a publishing run, the kept commit), then
        remove the container and the workspace. The container has ended by now."""
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
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            workspace.remove(root, spec.run_id)

    def _commit_message(self, spec: RunSpec, result: RunResult) -> str:
        title = f"routine {spec.routine} run {spec.run_id}"
        final = result.final or {}
        lines = str(final.get("summary", "")).strip().splitlines()
        if final.get("kind") != "report" or not lines:
            return title
        summary = lines[0][:200]
        if self.config.anthropic_api_key:  # the bot redacts the rest; this leaves the host
            summary = summary.replace(self.config.anthropic_api_key, "[REDACTED]")
        return f"{title}\n\n{summary}"


def _chunks(stream: Any) -> Any:
    """The log stream's chunks, ending quietly when another thread closes the stream."""
    try:
        yield from stream
    except (OSError, ValueError, AttributeError, requests.exceptions.RequestException):
        return


def _stderr_tail(container: Any) -> str:
    try:
        raw = container.logs(stdout=False, stderr=True, tail=20)
    except docker.errors.APIError:
        return ""
    return str(raw.decode("utf-8", errors="replace")).strip()


class _TokenMeter:
    """Counts tokens from the usage events, and is the host's backstop for the budget.

    The agent stops itself after the response that reaches `RunSpec.max_tokens`, so
    it may overshoot by that one response and no more. How much one response costs is
    not bounded by `max_tokens_per_turn` (its input is the whole conversation so far),
    so the backstop counts calls rather than tokens: a usage event arriving when the
    budget was already reached is a call the agent should not have made. Then the
    container is killed and `RunResult.token_budget_exceeded` set.
    """

    def __init__(self, max_tokens: int | None, over_budget: Callable[[], None]) -> None:
        self.max_tokens = max_tokens
        self.over_budget = over_budget

    def account(self, result: RunResult, event: Event) -> None:
        if event.get("type") == "usage":
            spent = result.input_tokens + result.output_tokens
            result.input_tokens += _int(event.get("input_tokens"))
            result.output_tokens += _int(event.get("output_tokens"))
            if (self.max_tokens is not None and spent >= self.max_tokens
                    and not result.token_budget_exceeded):
                result.token_budget_exceeded = True
                self.over_budget()
        elif event.get("type") == "result":
            result.final = event


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _kill(container: Any) -> None:
    with contextlib.suppress(docker.errors.APIError):
        container.kill()


def _started_at(container: Any) -> float:
    """When the container started, from the engine (so adoption keeps the same deadline)."""
    container.reload()
    raw = str(container.attrs.get("State", {}).get("StartedAt", ""))
    try:
        return datetime.fromisoformat(raw[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return time.time()


def _describe_infra_error(exc: Exception) -> str:
    if isinstance(exc, workspace.WorkspaceError):
        return str(exc)
    if isinstance(exc, docker.errors.ImageNotFound):
        return "sandbox image not found: build it with `make images`"
    if isinstance(exc, docker.errors.APIError):
        return f"docker engine refused the run: {exc.explanation or exc}"
    return f"docker engine unreachable: {exc}"
