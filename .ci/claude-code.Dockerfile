# The sandbox image with Claude Code in it: the image runs whose routine's engine is
# `claude-code` execute in (README "Engines").
#
# FROM the sandbox image (same user, runner and entrypoint: `runner.inside.agent` reads the
# spec's engine and hands over to `runner.inside.claude_code`). The build context is only
# the directory holding the CLI: .ci/build-images.sh extracts the native binary from the
# pinned claude-agent-sdk wheel (PyPI) into build/claude-code/, so the build needs no
# network and no Node.
#
#   docker build -f .ci/claude-code.Dockerfile --build-arg SANDBOX_IMAGE=routines-sandbox:latest \
#       --build-arg CLAUDE_CODE_VERSION=2.1.332 -t routines-claude-code:latest build/claude-code

ARG SANDBOX_IMAGE=routines-sandbox:latest
FROM ${SANDBOX_IMAGE}

ARG CLAUDE_CODE_VERSION=unknown
LABEL org.routines.image="claude-code" \
      org.routines.claude_code="${CLAUDE_CODE_VERSION}"

USER root
# Root-owned and read-only for the agent: it cannot replace its own harness.
COPY claude /opt/claude/bin/claude
RUN chmod 0755 /opt/claude/bin/claude \
    && HOME=/tmp /opt/claude/bin/claude --version \
    && rm -rf /tmp/.claude /tmp/.claude.json

ENV PATH=/opt/agent/bin:/opt/claude/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DISABLE_TELEMETRY=1 \
    DISABLE_ERROR_REPORTING=1 \
    DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1

USER 10001:10001
