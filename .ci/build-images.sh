#!/usr/bin/env bash
# Build the images routines needs, without any container registry:
#   1. routines-base:bookworm   Debian bookworm + python3, venv, git (debootstrap + docker import)
#   2. build/wheels/            host-built wheels for the sandbox (anthropic and deps)
#   3. routines-sandbox:latest  Dockerfile target `sandbox` on top of (1), from (2) + runner/
#   4. routines-claude-code:latest  .ci/claude-code.Dockerfile on top of (3): the Claude Code CLI,
#                               the native binary of the pinned claude-agent-sdk wheel (PyPI)
# Optional (BUILD_SERVICE=1): wheels of the project itself + image routines:latest.
#
# Idempotent: the base image is made only when missing; the docker build is cached.
#
# Environment overrides:
#   BASE_IMAGE        base image tag            (default routines-base:bookworm)
#   SANDBOX_IMAGE     sandbox image tag         (default routines-sandbox:latest)
#   SERVICE_IMAGE     service image tag         (default routines:latest)
#   CLAUDE_CODE_IMAGE claude-code image tag     (default routines-claude-code:latest)
#   CLAUDE_AGENT_SDK  the wheel the CLI comes from (default: the pin below)
#   BUILD_CLAUDE_CODE=0  skip the claude-code image
#   BUILD_CONTEXT     docker build context      (default: the repo root)
#   SANDBOX_PACKAGES  packages for the sandbox  (default: anthropic, pinned to the
#                     version in .venv when there is one)
#   DEBIAN_MIRROR     debootstrap mirror        (default: the one apt uses here)
#   PYTHON            python used for `pip wheel` (default: .venv/bin/python, else python3)
#   REBUILD_BASE=1    remake the base image even if it exists
#   BUILD_SERVICE=1   also build the service image
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${BASE_IMAGE:-routines-base:bookworm}"
SANDBOX_IMAGE="${SANDBOX_IMAGE:-routines-sandbox:latest}"
SERVICE_IMAGE="${SERVICE_IMAGE:-routines:latest}"
CLAUDE_CODE_IMAGE="${CLAUDE_CODE_IMAGE:-routines-claude-code:latest}"
# The one pin of the Claude Code version: this wheel bundles CLI 2.1.332.
CLAUDE_AGENT_SDK="${CLAUDE_AGENT_SDK:-claude-agent-sdk==0.2.189}"
BUILD_CONTEXT="$(cd "${BUILD_CONTEXT:-$REPO_ROOT}" && pwd)"
WHEEL_DIR="$BUILD_CONTEXT/build/wheels"
SUITE=bookworm

log() { echo "[build-images] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# The Debian mirror apt already uses on this machine (deb822 or one-line format).
detect_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # First stanza whose Suites mention the plain suite (not -security).
        uri="$(awk -v suite="$SUITE" '
            BEGIN { RS=""; FS="\n" }
            {
                u=""; ok=0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); split($i, a, /[ \t]+/); u=a[1] }
                    if ($i ~ /^Suites:/) { n=split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok=1 }
                }
                if (ok && u != "") { print u; exit }
            }' "$f")"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri="$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i+1) == suite) { print $i; exit }
            }' "$f")"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    echo "http://deb.debian.org/debian"
}

# ---------------------------------------------------------------------------
# 1. base image
build_base() {  # IMAGE [PACKAGES]: a Debian root from debootstrap, imported as IMAGE
    local image="${1:-$BASE_IMAGE}" packages="${2:-python3,python3-venv,git,ca-certificates}"
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing (run .ci/docker-up.sh)"
    local mirror rootdir t0
    mirror="${DEBIAN_MIRROR:-$(detect_mirror)}"
    rootdir="$(mktemp -d /var/tmp/routines-base.XXXXXX)"
    # shellcheck disable=SC2064
    trap "as_root rm -rf '$rootdir'" EXIT
    t0=$SECONDS
    log "debootstrap $SUITE from $mirror into $rootdir"
    as_root debootstrap --variant=minbase \
        --include="$packages" \
        "$SUITE" "$rootdir" "$mirror" >/tmp/debootstrap.log 2>&1 \
        || { tail -n 30 /tmp/debootstrap.log >&2; die "debootstrap failed (log: /tmp/debootstrap.log)"; }
    # Nothing the image needs: package caches, apt lists, docs, man pages, translations.
    as_root sh -c "cd '$rootdir' && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* \
        var/log/*.log usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/*"
    log "docker import -> $image"
    as_root tar --numeric-owner -C "$rootdir" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'LABEL org.routines.image=base' \
        --change 'CMD ["/bin/bash"]' \
        - "$image" >/dev/null
    as_root rm -rf "$rootdir"
    trap - EXIT
    log "base image $image built in $((SECONDS - t0))s"
}

if [ "${REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    build_base
else
    log "base image $BASE_IMAGE present"
fi

# ---------------------------------------------------------------------------
# 2. wheels (host python is 3.11 like bookworm's, so binary wheels fit)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ -z "${SANDBOX_PACKAGES:-}" ]; then
    # Same SDK version in the sandbox as the one the project is tested with.
    v="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("anthropic"))' 2>/dev/null || true)"
    SANDBOX_PACKAGES="anthropic${v:+==$v}"
fi
host_py="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
base_py="$(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" \
    -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$host_py" = "$base_py" ] \
    || die "host python $host_py != base image python $base_py: binary wheels would not fit"

mkdir -p "$WHEEL_DIR"
log "pip wheel -w $WHEEL_DIR $SANDBOX_PACKAGES"
# shellcheck disable=SC2086
if ! "$PYTHON" -m pip wheel --quiet --disable-pip-version-check -w "$WHEEL_DIR" $SANDBOX_PACKAGES; then
    if compgen -G "$WHEEL_DIR/anthropic-*.whl" >/dev/null; then
        log "WARNING: pip wheel failed; using the wheels already in $WHEEL_DIR"
    else
        die "pip wheel failed and $WHEEL_DIR has no anthropic wheel"
    fi
fi

# ---------------------------------------------------------------------------
# 3. images
[ -d "$BUILD_CONTEXT/runner" ] || die "$BUILD_CONTEXT/runner/ missing: nothing to put in the sandbox"
t0=$SECONDS
runner_digest="$(python3 "$BUILD_CONTEXT/runner/fingerprint.py")"  # `routines doctor` reads it
log "docker build --target sandbox -> $SANDBOX_IMAGE (runner $runner_digest)"
docker build --target sandbox \
    --label "org.routines.runner=$runner_digest" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "SANDBOX_PACKAGES=$SANDBOX_PACKAGES" \
    -t "$SANDBOX_IMAGE" "$BUILD_CONTEXT" >&2
log "sandbox image $SANDBOX_IMAGE ready in $((SECONDS - t0))s"

# ---------------------------------------------------------------------------
# 4. the claude-code image: the CLI out of the pinned wheel, cached under build/
build_claude_code() {
    local cache="$BUILD_CONTEXT/build/claude-agent-sdk" ctx="$BUILD_CONTEXT/build/claude-code"
    local wheel version
    mkdir -p "$cache" "$ctx"
    # Wheel file names spell the project with an underscore.
    wheel="$(compgen -G "$cache/claude_agent_sdk-${CLAUDE_AGENT_SDK##*==}-*.whl" \
        | head -n 1 || true)"
    if [ -z "$wheel" ]; then
        log "pip download $CLAUDE_AGENT_SDK (the Claude Code CLI is bundled in it)"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary :all: --platform manylinux_2_17_x86_64 -d "$cache" "$CLAUDE_AGENT_SDK"
        wheel="$(compgen -G "$cache/claude_agent_sdk-${CLAUDE_AGENT_SDK##*==}-*.whl" | head -n 1)"
    fi
    [ -n "$wheel" ] || die "no wheel for $CLAUDE_AGENT_SDK in $cache"
    if [ ! -x "$ctx/claude" ] || [ "$wheel" -nt "$ctx/claude" ]; then
        log "extracting the CLI from $(basename "$wheel")"
        "$PYTHON" - "$wheel" "$ctx" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
wheel, ctx = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name, target in (("claude_agent_sdk/_bundled/claude", "claude"),
                         ("claude_agent_sdk/_bundled/claude.version", "claude.version")):
        with z.open(name) as src, open(ctx / target, "wb") as dst:
            shutil.copyfileobj(src, dst)
(ctx / "claude").chmod(0o755)
PY
    fi
    version="$(awk 'NR == 1 { print $1 }' "$ctx/claude.version")"
    t0=$SECONDS
    log "docker build claude-code.Dockerfile -> $CLAUDE_CODE_IMAGE (Claude Code $version)"
    docker build -f "$REPO_ROOT/.ci/claude-code.Dockerfile" \
        --build-arg "SANDBOX_IMAGE=$SANDBOX_IMAGE" \
        --build-arg "CLAUDE_CODE_VERSION=$version" \
        --label "org.routines.runner=$runner_digest" \
        -t "$CLAUDE_CODE_IMAGE" "$ctx" >&2
    log "claude-code image $CLAUDE_CODE_IMAGE ready in $((SECONDS - t0))s"
}
if [ "${BUILD_CLAUDE_CODE:-1}" = 1 ]; then
    build_claude_code
fi

if [ "${BUILD_SERVICE:-0}" = 1 ]; then
    log "pip wheel -w $WHEEL_DIR $BUILD_CONTEXT[postgres] (project + dependencies)"
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check -w "$WHEEL_DIR" "$BUILD_CONTEXT[postgres]"
    t0=$SECONDS
    docker build --target service \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$SERVICE_IMAGE" "$BUILD_CONTEXT" >&2
    log "service image $SERVICE_IMAGE ready in $((SECONDS - t0))s"
fi

# PostgreSQL for the compose stack where no registry is reachable (the compose file's default
# is the public postgres image; POSTGRES_IMAGE=routines-postgres:15 selects this one).
if [ "${BUILD_POSTGRES:-0}" = 1 ]; then
    if ! docker image inspect routines-postgres-base:bookworm >/dev/null 2>&1; then
        build_base routines-postgres-base:bookworm postgresql-15
    fi
    docker build -q -f "$REPO_ROOT/.ci/postgres.Dockerfile" -t routines-postgres:15 \
        "$REPO_ROOT/.ci" >&2
    log "postgres image routines-postgres:15 ready"
fi
