"""Git config, an external diff and a hook planted by the agent from inside the real sandbox
run nothing on the host, and the diff still holds the agent's work. (The same plants
written into the workspace directly, one by one: tests/services/test_workspace_git.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.support.bots import SANDBOX_IMAGE
from tests.support.run_specs import spec
from tests.support.sandbox_runs import execute, make_sandbox

pytestmark = pytest.mark.docker


async def test_git_config_planted_from_inside_the_sandbox_runs_nothing_on_the_host(
    tmp_path: Path, docker_client: object, anthropic_api: AnthropicStandIn, git_repo: str,
) -> None:
    marker = tmp_path / "HOST-RAN-AGENT-CODE"
    marker_script = f"touch {marker}"
    marker_scenario = anthropic_api.script(
        "plant-git-config",
        [tool("run_shell", command=(
            f"git config core.fsmonitor '{marker_script}; false'"
            f" && git config diff.external '{marker_script}'"
            f" && printf '#!/bin/sh\\n{marker_script}\\n' > .git/hooks/post-index-change"
            " && chmod +x .git/hooks/post-index-change"
            " && echo from-the-sandbox > planted.txt && id -u"))],
        [report("success", "planted")],
    )
    sandbox = make_sandbox(docker_client, anthropic_api, tmp_path / "ws", SANDBOX_IMAGE)

    seen = await execute(sandbox, spec(11, f"Plant. {marker_scenario}", git_repo))

    output = seen.of_type("tool_output")[0]["output"]
    assert output.startswith("exit code 0") and "10001" in output
    assert seen.result.final is not None and seen.result.final["outcome"] == "success"
    assert "+from-the-sandbox" in seen.result.diff
    assert not marker.exists()
