"""How every run's container is made: one place for the lock-down, so that a cold run's
container (`runner.host.sandbox`) and a warm one (`runner.host.pool`) cannot drift apart.

No network at all (the host is reached through Unix sockets in `SOCKET_DIR`), every
capability dropped, no privilege gained through exec, a read-only root with small tmpfs
mounts, memory, CPU and pid limits, the configured OCI runtime (gVisor's `runsc`), and a
rotated log. `create` never pulls (unlike `run`): a missing image is an error, not a
download.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import docker
import docker.types

from runner.contract import GATEWAY_PORT, PROXY_PORT, WORKSPACE

if TYPE_CHECKING:
    from runner.host.sandbox import SandboxConfig

SANDBOX_UID = 10001


def container_user() -> str:
    """The sandbox user when the host is root; the host's own uid otherwise."""
    return f"{SANDBOX_UID}:{SANDBOX_UID}" if os.geteuid() == 0 else f"{os.geteuid()}"


def network_env() -> dict[str, str]:
    """Where the agent finds the gateway and the proxy: the forwarder's loopback ports.
    Addresses only, nothing of a run's."""
    proxy = f"http://127.0.0.1:{PROXY_PORT}"
    return {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{GATEWAY_PORT}",
            "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy,
            "https_proxy": proxy, "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost"}


def create(client: docker.DockerClient, cfg: SandboxConfig, *, image: str, name: str,
           labels: dict[str, str], environment: dict[str, str],
           volumes: dict[str, dict[str, str]]) -> Any:
    """A created (not started) container, locked down."""
    return client.containers.create(
        image,
        name=name,
        labels=labels,
        environment=environment,
        user=container_user(),
        network_mode="none",  # loopback only: the host is reached through SOCKET_DIR
        runtime=cfg.runtime or None,
        volumes=volumes,
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
