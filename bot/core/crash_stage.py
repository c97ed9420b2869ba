"""The stages of a run's life at which the crash tests kill the bot (test-only:
ROUTINES_TEST_CRASH_AT, read by bot.settings; acted on by bot.execution.crash)."""

from __future__ import annotations

from enum import StrEnum


class CrashStage(StrEnum):
    """Where in a run's life the process may be made to die, in order."""

    QUEUED = "queued"  # the run is stored `queued`, nothing claimed it yet
    CLONING = "cloning"  # claimed `running`, its workspace cloned, no container yet
    CONTAINER_CREATED = "container_created"  # its container created, not started
    RUNNING = "running"  # its container started and its first event stored
    FINISHING = "finishing"  # its container exited; the work not read back nor removed
    RECORDING = "recording"  # its work read back, its verdict not stored yet
    ANNOUNCING = "announcing"  # its outcome stored, the announcement not posted yet
    ANNOUNCED = "announced"  # its announcement posted and placed, not yet marked done
    AWAITING_APPROVAL = "awaiting_approval"  # its publish request stored, not posted yet
    PUBLISHING = "publishing"  # its commit approved, not pushed yet
    PUSHED = "pushed"  # its commit pushed, the push not recorded yet


def parse_stage(raw: str) -> CrashStage | None:
    """The setting's value: empty for none; anything else must name a stage."""
    raw = raw.strip().lower()
    if not raw:
        return None
    try:
        return CrashStage(raw)
    except ValueError:
        raise ValueError(f"must be one of {', '.join(CrashStage)}, got {raw!r}") from None
