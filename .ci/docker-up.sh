#!/usr/bin/env bash
# Make sure a Docker engine is installed and answering on the default socket.
# Idempotent: does nothing when `docker info` already works.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { echo "[docker-up] $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1 \
    || ! command -v debootstrap >/dev/null 2>&1; then
    log "installing docker.io and debootstrap with apt"
    # Wait for any other apt/dpkg run (e.g. a provisioning job) to finish first.
    for _ in $(seq 1 300); do
        if ! pgrep -x apt-get >/dev/null 2>&1 && ! pgrep -x dpkg >/dev/null 2>&1; then
            break
        fi
        sleep 2
    done
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends \
        docker.io debootstrap ca-certificates iptables
fi

if docker info >/dev/null 2>&1; then
    log "docker engine already running"
    exit 0
fi

log "starting dockerd (log: /tmp/dockerd.log)"
# setsid + nohup: the daemon must outlive this script and the CI step.
as_root setsid nohup dockerd >/tmp/dockerd.log 2>&1 </dev/null &

for i in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        log "docker engine up after ${i}s"
        exit 0
    fi
    sleep 1
done

log "ERROR: docker engine did not come up within 60 s; tail of /tmp/dockerd.log:"
tail -n 50 /tmp/dockerd.log >&2 || true
exit 1
