#!/usr/bin/env bash
# A local PostgreSQL on loopback for the acceptance tests' second database run.
# Idempotent. Prints the admin URL the tests take in ROUTINES_TEST_POSTGRES.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { echo "[postgres-up] $*" >&2; }

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    log "installing postgresql with apt"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql >&2
fi
read -r version cluster _ < <(pg_lsclusters -h | head -n 1)
pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 || true  # localhost only
for _ in $(seq 1 30); do
    su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
    sleep 1
done
su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'routines'\"" >&2
log "up"
echo "postgresql+psycopg://postgres:routines@127.0.0.1:5432/postgres"
