"""What happened, as typed past-tense events on one small in-process bus.

Services publish after their unit of work is committed; the dispatcher, the scheduler,
the approval desk and the App Home subscribe by event type. Handlers run synchronously
in the publisher's thread, so a handler that touches an event loop hands over with
`call_soon_threadsafe` (the `WakeLoop` does)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bot.core.schedule import Schedule


@dataclass(frozen=True)
class Event:
    """Root of every event."""


@dataclass(frozen=True)
class RunQueued(Event):
    """A run can be claimed now (new, approved, released, or a retry)."""


@dataclass(frozen=True)
class ApprovalRequested(Event):
    """An approval request was stored; its message is to be posted."""


@dataclass(frozen=True)
class ScheduleChanged(Event):
    routine: str
    schedule: Schedule | None  # None: removed (cleared, or the routine deleted)


@dataclass(frozen=True)
class DigestScheduleChanged(Event):
    channel: str
    schedule: Schedule | None  # None: the channel unsubscribed


@dataclass(frozen=True)
class StopRequested(Event):
    """A running run must be stopped now (cancel, kill switch)."""

    run_id: int


@dataclass(frozen=True)
class KillSwitchChanged(Event):
    """The kill switch was engaged or disengaged (the warm pool drains or refills)."""

    engaged: bool


@dataclass(frozen=True)
class PublishDecided(Event):
    """A kept commit's approval was decided or expired: push it or discard it."""

    run_id: int


E = TypeVar("E", bound=Event)


class EventBus:
    def __init__(self) -> None:
        self._handlers: defaultdict[type[Event], list[Callable[[Event], None]]] = (
            defaultdict(list))

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        self._handlers[kind].append(handler)  # type: ignore[arg-type]

    def publish(self, event: Event) -> None:
        for handler in self._handlers[type(event)]:
            handler(event)
