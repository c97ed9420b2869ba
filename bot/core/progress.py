"""A running run as its live message shows it: the current step in plain words, tokens
and cost so far, egress refusals so far, and how long since its last event. Pure.

The step comes from the run's events only (`step_of`): the container's `tool_call` lines
say what the agent is doing, the host's `model_call` events say what the model gateway
counted, and the host's `egress` events say what the proxy refused. A container line
claiming a host type never reaches here as one (the sandbox keeps it as `output`), and
`source` is checked anyway, as `run_log.egress_refusals` does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from bot.core.pricing import PriceTable
from runner.contract import HOST_SOURCE, Event
from runner.egress_policy import EGRESS_EVENT

STARTING = "starting the sandbox"
WAITING = "waiting for the model"
COMMAND_LIMIT = 80  # characters of a command or path shown in a step


def step_of(event: Event) -> str | None:
    """What the run is doing once `event` happened, in plain words; None: no change."""
    kind = event.get("type")
    if kind == "setup_started":
        return "running the setup script"
    if kind in ("started", "setup_finished", "tool_output"):
        return WAITING  # the next thing the agent does is ask the model
    if kind == "result":
        return "finishing"
    if kind != "tool_call":
        return None
    given = event.get("input")
    args: dict[str, object] = given if isinstance(given, dict) else {}
    name = str(event.get("name", ""))
    if name == "run_shell":
        return f"running {_code(args.get('command'))}"
    if name in ("write_file", "edit_file"):
        return f"editing {_code(args.get('path'))}"
    if name == "read_file":
        return f"reading {_code(args.get('path'))}"
    if name == "report_result":
        return "reporting the result"
    return f"using {_code(name)}"


def _code(value: object) -> str:
    """A command or path as inline code: one line, no backticks, cut short."""
    text = " ".join(str(value or "").split()).replace("`", "'")
    if len(text) > COMMAND_LIMIT:
        text = text[:COMMAND_LIMIT - 1] + "…"
    return f"`{text}`" if text else "`?`"


def _host(event: Event, kind: str) -> bool:
    return event.get("type") == kind and event.get("source") == HOST_SOURCE


def _count(value: object) -> int:
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


@dataclass(frozen=True)
class Progress:
    """One running run, as far as its events tell; a new value after every event."""

    run_id: int
    routine: str
    model: str
    started_at: datetime
    last_event_at: datetime
    step: str = STARTING
    steps: tuple[str, ...] = ()  # every distinct step seen, in order (the log says more)
    input_tokens: int = 0
    output_tokens: int = 0
    refusals: int = 0
    events: int = 0

    def after(self, event: Event, at: datetime) -> Progress:
        step = step_of(event)
        steps = self.steps
        if step is not None and (not steps or steps[-1] != step):
            steps = (*steps, step)
        used_in, used_out = self.input_tokens, self.output_tokens
        if _host(event, "model_call"):
            used_in += _count(event.get("input_tokens"))
            used_out += _count(event.get("output_tokens"))
        refused = self.refusals + (1 if _host(event, EGRESS_EVENT)
                                   and event.get("allowed") is False else 0)
        return replace(self, last_event_at=at, step=step or self.step, steps=steps,
                       input_tokens=used_in, output_tokens=used_out, refusals=refused,
                       events=self.events + 1)

    def snapshot(self, now: datetime, prices: PriceTable, idle_after_seconds: float) -> Snapshot:
        """What the message shows at `now`; `idle` once no event came for the threshold."""
        quiet = max(0.0, (now - self.last_event_at).total_seconds())
        return Snapshot(
            step=self.step,
            elapsed_seconds=max(0.0, (now - self.started_at).total_seconds()),
            input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            cost_usd=prices.cost_usd(self.model, self.input_tokens, self.output_tokens),
            refusals=self.refusals,
            idle=idle_text(quiet) if quiet >= idle_after_seconds else "")


@dataclass(frozen=True)
class Snapshot:
    """The figures of one live message: the template reads these and nothing else."""

    step: str
    elapsed_seconds: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    refusals: int
    idle: str  # "" while events come; else "no activity for 4 min"


def idle_text(seconds: float) -> str:
    """How long a run has been silent, in whole minutes (seconds under a minute)."""
    whole = int(seconds)
    return (f"no activity for {whole // 60} min" if whole >= 60
            else f"no activity for {whole}s")
