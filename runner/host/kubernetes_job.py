"""The Kubernetes Job a run would be, beside the Docker container `runner.host.sandbox`
starts: the design of a Jobs backend behind the same interface (docs/scale-out.md).

Only the manifests are built here, as plain dicts a client would submit; no backend
submits them yet, and no API server can run on the machines this is built on. A unit test
reads each manifest into the official `kubernetes` client's models and back, so every key
is one the API knows (tests/unit/test_kubernetes_job.py).

The hardening is the Docker one, said the Kubernetes way: no root (the sandbox uid), no
capability, no privilege escalation, a read-only root filesystem with the same writable
scratch space, the same memory, CPU and disk limits, gVisor when runs use `runsc`, no
service-account token and no service links. Where Docker gives a run no network at all and
two Unix sockets, a pod gets a NetworkPolicy that lets it reach the gateway and the egress
proxy only, both Services of the bot: the run's token is still good only at the gateway,
and the real key never leaves the bot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.contract import (
    GATEWAY_PORT,
    LABEL_INSTANCE,
    LABEL_ROUTINE,
    LABEL_RUN_ID,
    PROXY_PORT,
    SPEC_ENV,
    WORKSPACE,
    RunSpec,
)
from runner.disk_limit import parse_size
from runner.host.sandbox import SANDBOX_UID, SandboxConfig

SCRATCH_BYTES = 512 * 1024**2  # /tmp and the agent's home: the container's tmpfs sizes
TOKEN_KEY = "token"  # noqa: S105 - the name of the key in the run's Secret, not a secret
LABEL_COMPONENT = "app.kubernetes.io/component"
RUN_COMPONENT = "run"


@dataclass(frozen=True)
class Cluster:
    """Where the bot's runs go, and the bot's two Services they may reach, by their
    cluster IPs (the backend reads them at start): a run pod needs no DNS, so it is
    allowed none, and cannot tunnel out through lookups."""

    namespace: str
    gateway_ip: str  # the Service of the model gateway, port GATEWAY_PORT
    proxy_ip: str  # the Service of the egress proxy, port PROXY_PORT
    bot_selector: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "routines"),)
    ttl_seconds: int = 600  # an ended Job and its pod are deleted this long after
    runtime_class: str = "gvisor"  # the RuntimeClass of runsc, when runs use it


def job_name(config: SandboxConfig, run_id: int) -> str:
    """The Job's name: the container's name, which is already unique per deployment."""
    return f"routines-{config.instance}-run-{run_id}"


def run_labels(config: SandboxConfig, spec: RunSpec) -> dict[str, str]:
    return {LABEL_INSTANCE: config.instance, LABEL_RUN_ID: str(spec.run_id),
            LABEL_ROUTINE: spec.routine, LABEL_COMPONENT: RUN_COMPONENT}


def job_manifest(spec: RunSpec, config: SandboxConfig, cluster: Cluster,
                 token_secret: str) -> dict[str, Any]:
    """The Job of one run. `token_secret` names the run's Secret (key `TOKEN_KEY`), made
    with the Job and owned by it, so that the token goes when the Job does."""
    labels = run_labels(config, spec)
    memory = str(parse_size(config.memory))
    gateway = f"http://{cluster.gateway_ip}:{GATEWAY_PORT}"
    proxy = f"http://{cluster.proxy_ip}:{PROXY_PORT}"
    env = [{"name": SPEC_ENV, "value": spec.for_container().to_json()},
           {"name": "ANTHROPIC_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": token_secret, "key": TOKEN_KEY}}},
           {"name": "ANTHROPIC_BASE_URL", "value": gateway},
           *({"name": name, "value": proxy}
             for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")),
           *({"name": name, "value": f"{cluster.gateway_ip},127.0.0.1,localhost"}
             for name in ("NO_PROXY", "no_proxy"))]
    workspace_limit = {"sizeLimit": str(config.disk_limit)} if config.disk_limit else {}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": SANDBOX_UID, "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "agent",
            "image": config.image_for(spec.engine),
            "imagePullPolicy": "IfNotPresent",
            "workingDir": WORKSPACE,
            "env": env,
            "securityContext": {
                "allowPrivilegeEscalation": False, "privileged": False,
                "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
            "resources": {"limits": {"memory": memory, "cpu": f"{int(config.cpus * 1000)}m",
                                     **({"ephemeral-storage": str(config.disk_limit)}
                                        if config.disk_limit else {})},
                          "requests": {"memory": memory}},
            "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE},
                             {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - in the pod
                             {"name": "home", "mountPath": "/home/agent"}],
        }],
        "volumes": [{"name": "workspace", "emptyDir": workspace_limit},
                    {"name": "tmp", "emptyDir": {"medium": "Memory",
                                                 "sizeLimit": str(SCRATCH_BYTES)}},
                    {"name": "home", "emptyDir": {"medium": "Memory",
                                                  "sizeLimit": str(SCRATCH_BYTES)}}],
    }
    if config.runtime == "runsc":
        pod["runtimeClassName"] = cluster.runtime_class
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(config, spec.run_id), "namespace": cluster.namespace,
                     "labels": labels},
        "spec": {
            "backoffLimit": 0,  # the bot retries, under the routine's retry policy
            "activeDeadlineSeconds": spec.timeout_seconds,
            "ttlSecondsAfterFinished": cluster.ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def network_policy(config: SandboxConfig, cluster: Cluster) -> dict[str, Any]:
    """Every run pod of this deployment: no ingress; egress to the gateway and the proxy
    ports of the bot's pods, nothing else, not even DNS (the proxy resolves names and
    applies the routine's own egress policy, as it does for Docker runs)."""
    bot_pods = {"podSelector": {"matchLabels": dict(cluster.bot_selector)}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"routines-{config.instance}-runs",
                     "namespace": cluster.namespace},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_INSTANCE: config.instance,
                                            LABEL_COMPONENT: RUN_COMPONENT}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {"to": [bot_pods], "ports": [{"protocol": "TCP", "port": GATEWAY_PORT},
                                             {"protocol": "TCP", "port": PROXY_PORT}]},
            ],
        },
    }


def kill_switch_selector(config: SandboxConfig) -> str:
    """The label selector the kill switch deletes Jobs by (`delete_collection_namespaced_job`
    with `propagation_policy="Background"` and `grace_period_seconds=0`): every run of
    this deployment at once, in one call, as `docker kill` of its containers."""
    return f"{LABEL_INSTANCE}={config.instance},{LABEL_COMPONENT}={RUN_COMPONENT}"
