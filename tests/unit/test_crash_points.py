"""ROUTINES_TEST_CRASH_AT, the crash tests' switch (tests/acceptance/
test_crash_at_any_stage.py): read as a stage or refused with one line; inert at every other
stage, and unset; at its stage the process dies by SIGKILL, as in a power cut."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.core.crash_stage import CrashStage
from bot.errors import SettingsError
from bot.execution.crash import CrashPoints
from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"SLACK_BOT_TOKEN": "xoxb-1", "ANTHROPIC_API_KEY": "sk-ant-1",
            "SLACK_SIGNING_SECRET": "s"}


@pytest.mark.parametrize("stage", list(CrashStage))
def test_every_stage_is_read_by_its_name(stage: CrashStage) -> None:
    env = {**REQUIRED, "ROUTINES_TEST_CRASH_AT": f" {stage.value.upper()} "}
    assert Settings.from_env(env).test_crash_at == stage


def test_unset_or_empty_is_no_crash_and_a_wrong_name_is_refused() -> None:
    assert Settings.from_env(REQUIRED).test_crash_at is None
    assert Settings.from_env({**REQUIRED, "ROUTINES_TEST_CRASH_AT": ""}).test_crash_at is None
    with pytest.raises(SettingsError, match="setting ROUTINES_TEST_CRASH_AT: must be one of "
                                            "queued, cloning"):
        Settings.from_env({**REQUIRED, "ROUTINES_TEST_CRASH_AT": "sometime"})


def test_other_stages_and_no_stage_are_inert() -> None:
    for stage in CrashStage:
        CrashPoints(None)(stage)
        if stage != CrashStage.PUSHED:
            CrashPoints(CrashStage.PUSHED)(stage)  # still alive: this line returns


def test_at_its_stage_the_process_dies_by_sigkill() -> None:
    code = ("from bot.core.crash_stage import CrashStage as S\n"
            "from bot.execution.crash import CrashPoints\n"
            "CrashPoints(S.RUNNING)(S.QUEUED)\n"
            "print('passed queued', flush=True)\n"
            "CrashPoints(S.RUNNING)(S.RUNNING)\n"
            "print('survived')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout == "passed queued\n"
    assert "ROUTINES_TEST_CRASH_AT=running reached" in proc.stderr  # said before it dies
