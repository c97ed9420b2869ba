#!/usr/bin/env bash
# The compose stack as an operator starts it, with the locally built images: the service
# image, PostgreSQL (.ci/postgres.Dockerfile; no registry here), the host's Docker engine,
# Socket Mode. Slack is the project's stand-in in a container of the stack, reached through
# SLACK_API_URL. Passes when `config` validates and the bot answers /readyz with ready: true.
# Needs: docker-compose, BUILD_SERVICE=1 BUILD_POSTGRES=1 .ci/build-images.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
log() { echo "[compose-check] $*" >&2; }

work="$(mktemp -d /var/tmp/routines-compose.XXXXXX)"
project="routines-ci-$$"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cp docker-compose.yml "$work/"
cat > "$work/.env" <<ENV
SLACK_BOT_TOKEN=xoxb-compose-check-0000
SLACK_APP_TOKEN=xapp-compose-check-0000
SLACK_API_URL=http://slack:8080/api/
ANTHROPIC_API_KEY=sk-ant-compose-check-0000
ROUTINES_LOG_FORMAT=json
ENV
cat > "$work/compose.ci.yml" <<YAML
services:
  slack:
    image: \${ROUTINES_IMAGE:-routines:latest}
    volumes:
      - $repo/tests:/opt/check/tests:ro
    working_dir: /opt/check
    command: ["python", "-m", "tests.standins.slack_api", "0.0.0.0", "8080", "http://slack:8080"]
  routines:
    depends_on:
      - postgres
      - slack
YAML
export ROUTINES_DATA_DIR_HOST="$work/data" ROUTINES_PORT="$port" POSTGRES_IMAGE=routines-postgres:15
compose() { docker-compose -p "$project" --project-directory "$work" -f "$work/docker-compose.yml" -f "$work/compose.ci.yml" "$@"; }
cleanup() {
    compose logs --no-color routines > "$work/routines.log" 2>&1 || true
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

compose config -q
log "config valid"
compose up -d >&2
for _ in $(seq 1 90); do
    if answer="$(curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null)"; then
        log "readyz: $answer"
        echo "$answer" | grep -q '"ready": true' && exit 0
    fi
    sleep 2
done
log "ERROR: the stack did not answer /readyz with ready: true"
compose ps >&2 || true
compose logs --no-color --tail 60 >&2 || true
exit 1
