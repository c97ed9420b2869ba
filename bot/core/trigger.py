"""What started a run: the door, the actor, the caller's reference, and the payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.core.statuses import TriggerKind

NO_PAYLOAD = object()


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    actor: str  # a Slack user id (by hand, or a workflow's), `token:NAME`, a GitHub login,
    # or `schedule`
    ref: str | None = None  # Idempotency-Key or X-GitHub-Delivery: at most one run per ref
    payload: Any = NO_PAYLOAD  # outside data, mapped into the prompt by the routine's template
    detail: str = ""  # e.g. the GitHub event, shown with the provenance

    @property
    def has_payload(self) -> bool:
        return self.payload is not NO_PAYLOAD

    def describe(self) -> str:
        """How the prompt names the source of the outside data."""
        what = {TriggerKind.API: "an API call", TriggerKind.GITHUB: "a GitHub event",
                TriggerKind.SCHEDULE: "its schedule",
                TriggerKind.WORKFLOW: "a Slack workflow"}.get(self.kind, "a user")
        detail = f" ({self.detail})" if self.detail else ""
        return f"{what}{detail} from {self.actor}"


def manual(actor: str) -> Trigger:
    return Trigger(TriggerKind.MANUAL, actor)
