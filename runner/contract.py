"""The runner's data contract, shared by the host side and the in-container agent.

Events are JSON objects, one per line on the container's stdout, each with a `type`.
The last one the agent writes is a `result` event whose `kind` says how it ended:

- `report`: the agent called `report_result` (`outcome` is `success` or `failure`);
- `setup_failed`: the routine's setup script exited non-zero;
- `turn_limit`: the agent used every turn without reporting;
- `no_report`: the agent stopped talking without reporting;
- `api_error`: the Anthropic API could not be used (an infrastructure fault, or a
  refusal); `status_code` is the HTTP status it answered (an int), null when no answer
  came (connection error, timeout): read it with `api_status_code`;
- `token_budget`: the run's token budget (`RunSpec.max_tokens`, input + output tokens
  of every Messages API call together) was reached before the agent reported; the
  summary reads "token budget exhausted (USED of MAX tokens)".

Specs cross versions: the host and the sandbox image are upgraded separately, so
`RunSpec.to_json` leaves out fields at their defaults (an older image, which rejects
keys it does not know, still reads a spec that uses no newer feature) and
`RunSpec.from_json` ignores keys it does not know (a newer host's spec still runs).
Events follow the same rule: a reader ignores keys it does not know and tolerates a
newer key being absent (an older image). So `api_error`'s `status_code`, added after
its summary, is read by `api_status_code`, which falls back on the summary's wording
for an image that wrote no such key; an older host ignores the key and reads the
summary, whose wording is kept.

Both engines (`Engine`: the built-in agent, Claude Code's CLI) write these events; the
spec's `engine` says which runs, and the host starts the image that holds it. Each has its
own self-report tool (`REPORT_TOOLS`), the one the gateway takes as the report.

The container's lines are not the run's truth. The host writes events of its own into
the same log (`HOST_EVENT_TYPES`, each with `"source": "host"`): `model_call` for every
Messages API call the model gateway (`runner.host.gateway`) forwarded, with its usage and,
when the response held a `report_result` tool call, that `report`. Usage, the budget and
the self-report come from those only: a container line claiming a host type is kept as an
`output` line, a container `usage` line counts nothing, and a container `result` can make
a run fail (setup_failed, turn_limit...) but never succeed (`RunResult.report` is what
the gateway saw).
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, dataclass, fields, replace
from enum import StrEnum
from typing import Any

SPEC_ENV = "ROUTINE_RUN_SPEC"
WORKSPACE = "/workspace"
LABEL_INSTANCE = "org.routines.instance"  # which bot deployment owns the container
# Which worker of that deployment ("host/name") started it: a worker adopts or removes only
# its own containers when several share one engine (docs/scale-out.md).
LABEL_WORKER = "org.routines.worker"
LABEL_RUN_ID = "org.routines.run_id"
LABEL_ROUTINE = "org.routines.routine"
# sha256 of the run's gateway token: an adopted container gets its gateway back.
LABEL_TOKEN_SHA256 = "org.routines.token_sha256"  # noqa: S105 - a label name

# Where the host's Unix sockets appear inside the container, and the loopback ports the
# in-container forwarder (`runner.inside.forwarder`) serves them on.
SOCKET_DIR = "/run/routines"
GATEWAY_SOCKET = "gateway.sock"
PROXY_SOCKET = "proxy.sock"
GATEWAY_PORT = 4100
PROXY_PORT = 3128
# Socket file name -> the loopback port it is forwarded to inside the container.
FORWARDED_SOCKETS = {GATEWAY_SOCKET: GATEWAY_PORT, PROXY_SOCKET: PROXY_PORT}

# A warm container (`runner.host.pool`) starts with no spec and no token: its agent waits
# for the host to deliver both as one file (`Delivery`), written atomically into this
# directory (its own, writable by the sandbox user) once the run is given to it; the agent
# reads it and deletes it before anything else runs. `WARM_ENV` set: wait for it.
DELIVERY_DIR = "/run/routines-run"
DELIVERY_FILE = "run.json"
LOADED_FILE = ".loaded"  # the agent's, in DELIVERY_DIR: its modules are loaded, it waits
WARM_ENV = "ROUTINES_WARM"
# Which pool a warm container belongs to: the fingerprint of its image and settings.
LABEL_POOL = "org.routines.pool"

# Event types only the host writes (see the module's docstring).
HOST_EVENT_TYPES = frozenset({"model_call", "egress"})
HOST_SOURCE = "host"

Event = dict[str, Any]


class Engine(StrEnum):
    """Which agent a run's container runs (README "Engines"): the built-in loop
    (`runner.inside.agent`) or Claude Code's CLI (`runner.inside.claude_code`)."""

    BUILTIN = "builtin"
    CLAUDE_CODE = "claude-code"


class RepoConfig(StrEnum):
    """Whether the code a repository's own configuration would run (Claude Code's hooks,
    .mcp.json servers, apiKeyHelper) is let run: off unless a routine trusts it."""

    UNTRUSTED = "untrusted"
    TRUSTED = "trusted"


# The tool call the gateway takes as an engine's self-report: the built-in agent's
# `report_result`; the `StructuredOutput` call Claude Code's `--json-schema` makes.
REPORT_TOOLS = {Engine.BUILTIN: "report_result", Engine.CLAUDE_CODE: "StructuredOutput"}


def report_tool(engine: str) -> str:
    """The self-report tool of `engine` (an unknown one: the built-in agent's)."""
    try:
        return REPORT_TOOLS[Engine(engine)]
    except ValueError:
        return REPORT_TOOLS[Engine.BUILTIN]


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
    # Input + output tokens for the whole run; None: no budget of its own.
    max_tokens: int | None = None
    # Host side only: keep the run's changes as a commit for `runner.host.publish` to push.
    publish: bool = False
    # Host side only: the run's egress policy for the host's proxy, as
    # `runner.egress_policy.EgressPolicy.to_spec` writes it; the default reaches nothing.
    egress: str = "none"
    # Which agent runs (`Engine`); the host picks the image that holds it.
    engine: str = Engine.BUILTIN.value
    # `RepoConfig`: whether the repository's own hooks / MCP servers may run.
    repo_config: str = RepoConfig.UNTRUSTED.value

    def for_container(self) -> RunSpec:
        """The spec without its host-side fields (`HOST_ONLY_FIELDS`, at their defaults):
        what the container is given, so an older image still reads it."""
        return replace(self, **{name: _DEFAULTS[name] for name in HOST_ONLY_FIELDS})

    def to_json(self) -> str:
        """The spec as JSON, without the fields left at their defaults (see above)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps({name: value for name, value in values.items()
                           if name not in _DEFAULTS or value != _DEFAULTS[name]})

    @classmethod
    def from_json(cls, raw: str) -> RunSpec:
        """Read a spec, ignoring keys this version does not know (see above)."""
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class Report:
    """The agent's self-report, as the host saw it: a `report_result` tool call in a
    model response that passed through the gateway."""

    outcome: str  # "success" or "failure"
    summary: str

    @classmethod
    def from_input(cls, args: Any) -> Report:
        """From the tool call's input; anything but an explicit success is a failure."""
        values = args if isinstance(args, dict) else {}
        outcome = "success" if values.get("outcome") == "success" else "failure"
        return cls(outcome, str(values.get("summary", "")))

    def to_json(self) -> dict[str, str]:
        return {"outcome": self.outcome, "summary": self.summary}


@dataclass(frozen=True)
class Resume:
    """What the host had already observed of a run it follows again (adoption after a
    restart), read back from the stored log: the container events to skip when its log
    is replayed, the next sequence number, the gateway's usage and report so far."""

    skip_events: int = 0
    next_seq: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    report: Report | None = None

    @classmethod
    def from_log(cls, events: list[Event], last_seq: int) -> Resume:
        """`events` in order, as stored; `last_seq` the largest stored sequence number."""
        skip = used_in = used_out = 0
        report: Report | None = None
        for event in events:
            if event.get("type") not in HOST_EVENT_TYPES:
                skip += 1
            elif event.get("type") == "model_call":
                used_in += _count(event.get("input_tokens"))
                used_out += _count(event.get("output_tokens"))
                if report is None and isinstance(event.get("report"), dict):
                    report = Report.from_input(event["report"])
        return cls(skip, last_seq + 1, used_in, used_out, report)


@dataclass
class RunResult:
    """What the host observed: facts, not a verdict (the bot decides the run's status)."""

    run_id: int
    exit_code: int | None = None
    timed_out: bool = False
    killed: bool = False
    infra_error: str | None = None
    final: Event | None = None  # the container's last `result` line: it can only fail a run
    report: Report | None = None  # the self-report the gateway saw: the only success
    # Usage as the gateway counted it (never from the container's lines).
    input_tokens: int = 0
    output_tokens: int = 0
    diff: str = ""
    events_seen: int = 0
    detached: bool = False  # the bot stopped following; the container runs on, to be adopted
    # `RunSpec.publish` and the run changed files: the commit kept for `runner.host.publish`.
    commit: str | None = None
    publish_error: str | None = None  # the changes could not be kept as a commit
    # The agent went on calling the API after its token budget was spent: the gateway
    # refused the call and the container was killed.
    token_budget_exceeded: bool = False
    # The run filled its filesystem (`runner.host.disk`): its disk limit, in bytes.
    disk_limit_reached: int | None = None


HOST_ONLY_FIELDS = ("publish", "egress")  # `RunSpec` fields the container is never sent


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RunSpec)
                             if f.default is not MISSING}
# How images without `status_code` wrote it (the SDK's wording, in the summary).
_LEGACY_STATUS = re.compile(r"Anthropic API error: .*?Error code: (\d{3})")


def api_error_event(summary: str, status_code: int | None) -> Event:
    """The `result` of a run the Anthropic API stopped (see the module's docstring)."""
    return {"type": "result", "kind": "api_error", "status_code": status_code,
            "summary": summary}


def api_status_code(event: Event) -> int | None:
    """The HTTP status an `api_error` result reports; None: no answer, or not known."""
    if "status_code" in event:
        code = event["status_code"]
        return code if isinstance(code, int) and not isinstance(code, bool) else None
    match = _LEGACY_STATUS.search(str(event.get("summary", "")))  # an older image
    return int(match.group(1)) if match else None


def parse_event_line(line: str) -> Event:
    """Parse one stdout line; anything that is not a JSON object becomes an `output` event.

    The agent is not trusted to print only JSON (a setup script may write to stdout), so
    a stray line is kept as text rather than lost or treated as an error. Nor is it
    trusted to speak for the host: a line claiming a host type is kept as text too, and
    a `source` key it wrote is dropped.
    """
    text = line.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return {"type": "output", "text": text}
    if (isinstance(value, dict) and isinstance(value.get("type"), str)
            and value["type"] not in HOST_EVENT_TYPES):
        value.pop("source", None)
        return value
    return {"type": "output", "text": text}


def delivery_json(spec: RunSpec, token: str) -> str:
    """What a warm container is given (`DELIVERY_FILE`): the spec and the run's token."""
    return json.dumps({"spec": json.loads(spec.to_json()), "token": token})


def read_delivery(raw: str) -> tuple[RunSpec, str]:
    """The spec and token of a delivered run (`delivery_json`)."""
    data = json.loads(raw)
    return RunSpec.from_json(json.dumps(data["spec"])), str(data["token"])
