# Images for routines.
#
#   sandbox  the locked-down image every agent run executes in (runner/ + anthropic SDK)
#   service  the bot itself (`routines serve`)
#
# Both stages install Python packages only from wheels in the build context
# (build/wheels/, made on the host by .ci/build-images.sh), never from an index,
# so the build needs no network.
#
# Default base: the public Python image. Where no registry is reachable, build a
# Debian bookworm base locally (.ci/build-images.sh does this) and pass
#   --build-arg BASE_IMAGE=routines-base:bookworm
# The Dockerfile works with both: python3/venv/pip come from whichever base is used.
#
#   docker build --target sandbox --build-arg BASE_IMAGE=routines-base:bookworm -t routines-sandbox:latest .
#   docker build --target service --build-arg BASE_IMAGE=routines-base:bookworm -t routines:latest .
#
# Works with the classic builder and with BuildKit (no RUN --mount, no # syntax=).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS sandbox

# Packages (by name, resolved from build/wheels only) installed into the agent venv.
ARG SANDBOX_PACKAGES="anthropic"

LABEL org.routines.image="sandbox"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8

# git is needed by agents working on repositories. The public slim image lacks
# it; the local debootstrap base has it (and no network to apt from).
RUN if ! command -v git >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && git --version

RUN groupadd --gid 10001 agent \
    && useradd --uid 10001 --gid 10001 --home-dir /home/agent --create-home --shell /bin/sh agent \
    && mkdir -p /workspace \
    && chown 10001:10001 /workspace

COPY build/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/agent \
    && /opt/agent/bin/pip install --no-index --find-links /tmp/wheels ${SANDBOX_PACKAGES} \
    && rm -rf /tmp/wheels \
    && /opt/agent/bin/python -c "import anthropic; print('anthropic', anthropic.__version__)"

# The runner changes most often: copy it last. Root-owned, so the agent cannot
# modify its own harness; byte-compiled now because the image is read at run time
# by a non-root user (and usually with a read-only root filesystem).
COPY runner/__init__.py runner/contract.py /opt/agent/app/runner/
COPY runner/inside/ /opt/agent/app/runner/inside/
RUN /opt/agent/bin/python -m compileall -q /opt/agent/app

ENV PYTHONPATH=/opt/agent/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/agent \
    PATH=/opt/agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

WORKDIR /workspace
USER 10001:10001
ENTRYPOINT ["/opt/agent/bin/python", "-m", "runner.inside.agent"]

# ---------------------------------------------------------------------------
# The bot. Optional: build with `make service-image` or the command above after
# `pip wheel -w build/wheels .` (BUILD_SERVICE=1 .ci/build-images.sh does both).
# Run it with the Docker socket mounted so it can start sandbox containers:
#   docker run -d --name routines -v /var/run/docker.sock:/var/run/docker.sock \
#     -v routines-data:/data --env-file .env routines:latest
# Access to the Docker socket is root-equivalent on the host anyway, so this
# stage does not pretend otherwise by switching to an unprivileged user.
FROM ${BASE_IMAGE} AS service

# The project wheel in build/wheels, with the PostgreSQL driver (the compose stack uses it).
ARG PROJECT_NAME="routines[postgres]"

LABEL org.routines.image="service"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8

COPY build/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/routines \
    && /opt/routines/bin/pip install --no-index --find-links /tmp/wheels "${PROJECT_NAME}" \
    && rm -rf /tmp/wheels

ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/routines/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

WORKDIR /data
CMD ["routines", "serve"]
