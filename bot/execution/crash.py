"""Test-only: a deterministic crash at one stage of a run's life.

The crash tests (tests/acceptance/test_crash_at_any_stage.py) start `routines serve` with
ROUTINES_TEST_CRASH_AT=<stage>; the process then kills itself with SIGKILL the first time
a run reaches that stage, as a power cut or the OOM killer would, and the test restarts
it without the setting. Unset (always, in production) every crash point is inert.
"""

from __future__ import annotations

import logging
import os
import signal

from bot.core.crash_stage import CrashStage

log = logging.getLogger(__name__)


class CrashPoints:
    """Dies at `stage` when one is set; does nothing otherwise."""

    def __init__(self, stage: CrashStage | None) -> None:
        self.stage = stage

    def __call__(self, reached: CrashStage) -> None:
        if reached == self.stage:
            log.warning("ROUTINES_TEST_CRASH_AT=%s reached: killing this process", reached)
            os.kill(os.getpid(), signal.SIGKILL)
