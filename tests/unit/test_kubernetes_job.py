"""The Kubernetes Job and NetworkPolicy a run would be (runner.host.kubernetes_job), read
into the official `kubernetes` client's models and back: what comes back is exactly what
went in, so every key is one the API knows. No API server can run here; the models are
the API's own schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from runner.contract import GATEWAY_PORT, PROXY_PORT, SPEC_ENV, Engine, RunSpec
from runner.host.kubernetes_job import (
    Cluster,
    job_manifest,
    kill_switch_selector,
    network_policy,
)
from runner.host.sandbox import SANDBOX_UID, SandboxConfig

REAL_KEY = "sk-ant-real-key-never-in-a-pod"
CLUSTER = Cluster("routines", gateway_ip="10.96.0.40", proxy_ip="10.96.0.41")
SPEC = RunSpec(run_id=42, routine="nightly", prompt="Tidy the README.",
               repo_url="https://git.example.test/team/app.git", branch="main",
               model="claude-sonnet-4-5", timeout_seconds=900, max_turns=20,
               publish=True, egress="hosts:pypi.org")


def config(**overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = dict(
        image="routines-sandbox:latest", claude_code_image="routines-claude-code:latest",
        workspace_root=Path("/var/lib/routines"), instance="prod",
        anthropic_api_key=REAL_KEY, memory="1g", cpus=1.5, disk_limit=2 * 1024**3)
    return SandboxConfig(**{**values, **overrides})


def through_models(manifest: dict[str, Any], kind: str) -> dict[str, Any]:
    client = ApiClient()
    model = client.deserialize(json.dumps(manifest), kind, "application/json")
    assert type(model).__name__ == kind
    back = client.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
    assert isinstance(back, dict)
    return back


@pytest.mark.parametrize("overrides", [
    {}, {"runtime": "runsc"}, {"disk_limit": 0}, {"memory": "512m", "cpus": 0.5}])
@pytest.mark.parametrize("engine", list(Engine))
def test_the_job_is_exactly_a_v1_job(overrides: dict[str, Any], engine: Engine) -> None:
    spec = RunSpec(**{**SPEC.__dict__, "engine": engine.value})
    manifest = job_manifest(spec, config(**overrides), CLUSTER, "routines-prod-run-42-token")
    assert through_models(manifest, "V1Job") == manifest


def test_a_key_the_api_does_not_know_would_not_pass() -> None:
    manifest = job_manifest(SPEC, config(), CLUSTER, "t")
    manifest["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFs"] = True  # a typo
    assert through_models(manifest, "V1Job") != manifest


def test_the_pod_is_hardened_as_the_docker_container() -> None:
    manifest = job_manifest(SPEC, config(runtime="runsc"), CLUSTER, "routines-prod-run-42-token")
    pod = manifest["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == SANDBOX_UID
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert agent["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["runtimeClassName"] == "gvisor"
    assert agent["resources"]["limits"] == {
        "memory": str(1024**3), "cpu": "1500m", "ephemeral-storage": str(2 * 1024**3)}
    assert manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["activeDeadlineSeconds"] == 900
    assert manifest["spec"]["ttlSecondsAfterFinished"] > 0


def test_the_pod_holds_no_secret_and_no_host_only_field() -> None:
    manifest = job_manifest(SPEC, config(), CLUSTER, "routines-prod-run-42-token")
    assert REAL_KEY not in json.dumps(manifest)
    env = {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ANTHROPIC_API_KEY"] == {"name": "ANTHROPIC_API_KEY", "valueFrom": {
        "secretKeyRef": {"name": "routines-prod-run-42-token", "key": "token"}}}
    assert env["ANTHROPIC_BASE_URL"]["value"] == f"http://10.96.0.40:{GATEWAY_PORT}"
    assert env["HTTPS_PROXY"]["value"] == f"http://10.96.0.41:{PROXY_PORT}"
    sent = RunSpec.from_json(env[SPEC_ENV]["value"])
    assert (sent.publish, sent.egress) == (False, "none")  # the host's business only
    assert sent.prompt == SPEC.prompt


def test_the_network_policy_allows_the_gateway_and_the_proxy_only() -> None:
    policy = network_policy(config(), CLUSTER)
    assert through_models(policy, "V1NetworkPolicy") == policy
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    ports = [(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]]
    assert ports == [("TCP", GATEWAY_PORT), ("TCP", PROXY_PORT)]  # no DNS, nothing else
    job_labels = job_manifest(SPEC, config(), CLUSTER, "t")["spec"]["template"]["metadata"][
        "labels"]
    assert spec["podSelector"]["matchLabels"].items() <= job_labels.items()


def test_the_kill_switch_selects_every_run_of_the_deployment_only() -> None:
    selector = dict(term.split("=") for term in kill_switch_selector(config()).split(","))
    ours = job_manifest(SPEC, config(), CLUSTER, "t")["metadata"]["labels"]
    theirs = job_manifest(SPEC, config(instance="staging"), CLUSTER, "t")["metadata"]["labels"]
    assert selector.items() <= ours.items()
    assert not selector.items() <= theirs.items()
