"""The runner's data contract, shared by the host side and the in-container agent.

Events are JSON objects, one per line on the container's stdout, each with a `type`.
The last one the agent writes is a `result` event whose `kind` says how it ended:

- `report`: the agent called `report_result` (`outcome` is `success` or `failure`);
- `setup_failed`: the routine's setup script exited non-zero;
- `turn_limit`: the agent used every turn without reporting;
- `no_report`: the agent stopped talking without reporting;
- `api_error`: the Anthropic API could not be used (an infrastructure fault).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

SPEC_ENV = "ROUTINE_RUN_SPEC"
WORKSPACE = "/workspace"
LABEL_INSTANCE = "org.routines.instance"  # which bot deployment owns the container
LABEL_RUN_ID = "org.routines.run_id"
LABEL_ROUTINE = "org.routines.routine"

Event = dict[str, Any]


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; the container receives it as JSON in `SPEC_ENV`."""

    run_id: int
    routine: str
    prompt: str
    repo_url: str
    branch: str
    model: str
    timeout_seconds: int
    max_turns: int
    setup_script: str = ""
    max_tokens_per_turn: int = 4096

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> RunSpec:
        return cls(**json.loads(raw))


@dataclass
class RunResult:
    """What the host observed: facts, not a verdict (the bot decides the run's status)."""

    run_id: int
    exit_code: int | None = None
    timed_out: bool = False
    killed: bool = False
    infra_error: str | None = None
    final: Event | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    diff: str = ""
    events_seen: int = 0
    detached: bool = False  # the bot stopped following; the container runs on, to be adopted


def parse_event_line(line: str) -> Event:
    """Parse one stdout line; anything that is not a JSON object becomes an `output` event.

    The agent is not trusted to print only JSON (a setup script may write to stdout), so
    a stray line is kept as text rather than lost or treated as an error.
    """
    text = line.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return {"type": "output", "text": text}
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return value
    return {"type": "output", "text": text}
