#!/usr/bin/env bash
# gVisor for the run containers: Debian's runsc, registered with the running dockerd as the
# `runsc` runtime (ptrace platform; --network=host: the container's own netns, which for runs
# is `none`; --host-uds=open: a run reaches the host's model gateway and egress proxy only
# through the Unix sockets bind-mounted at /run/routines).
# Idempotent. Run after .ci/docker-up.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { echo "[runsc-up] $*" >&2; }

if ! command -v runsc >/dev/null 2>&1; then
    log "installing runsc with apt"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends runsc >&2
fi
mkdir -p /etc/docker
python3 - <<'PY'
import json, pathlib
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
config.setdefault("runtimes", {})["runsc"] = {
    "path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=host",
                                       "--host-uds=open"]}
path.write_text(json.dumps(config, indent=2) + "\n")
PY
pkill -HUP -x dockerd  # runtimes reload without a restart
for _ in $(seq 1 30); do
    if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q runsc; then
        log "runsc registered ($(runsc --version | head -n 1))"
        exit 0
    fi
    sleep 1
done
log "ERROR: dockerd did not pick up the runsc runtime"
exit 1
