"""Run one spec in a fresh, locked-down container and observe it to the end.

Blocking by design (docker and git are blocking libraries): the bot calls `execute`
from a worker thread and can stop waiting through a `RunControl`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from runner import workspace
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
    anthropic_api_key: str = ""
    anthropic_base_url: str = ""
    max_diff_chars: int = 1_000_000


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
    def __init__(self, client: docker.DockerClient, config: SandboxConfig) -> None:
        self.client = client
        self.config = config

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
                                     SANDBOX_UID if os.geteuid() == 0 else None)
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
        reader = threading.Thread(target=self._read_events,
                                  args=(stream, result, on_event, skip_events), daemon=True)
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
            break
        if result.exit_code is None:
            with contextlib.suppress(docker.errors.APIError):
                container.kill()
        reader.join(timeout=10)
        if result.final is None:  # why it died matters most when it never reported
            tail = _stderr_tail(container)
            if tail:
                on_event(result.events_seen + 1, {"type": "stderr", "text": tail})
        self._finish(spec.run_id, container, result)
        return result

    def _start(self, spec: RunSpec, repo: Path) -> Any:
        cfg = self.config
        env = {SPEC_ENV: spec.to_json(), "ANTHROPIC_API_KEY": cfg.anthropic_api_key}
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
        )
        try:
            container.start()
        except docker.errors.APIError:
            container.remove(force=True)
            raise
        return container

    @staticmethod
    def _read_events(stream: Any, result: RunResult, on_event: EventSink,
                     skip_events: int) -> None:
        buffer = b""
        seq = 0
        for chunk in _chunks(stream):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                seq += 1
                event = parse_event_line(line.decode("utf-8", errors="replace"))
                _account(result, event)
                if seq > skip_events:
                    on_event(seq, event)
        result.events_seen = seq

    def _finish(self, run_id: int, container: Any, result: RunResult) -> None:
        try:
            result.diff = workspace.diff(self.config.workspace_root, run_id,
                                         self.config.max_diff_chars)
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            workspace.remove(self.config.workspace_root, run_id)


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


def _account(result: RunResult, event: Event) -> None:
    if event.get("type") == "usage":
        result.input_tokens += int(event.get("input_tokens", 0))
        result.output_tokens += int(event.get("output_tokens", 0))
    elif event.get("type") == "result":
        result.final = event


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
