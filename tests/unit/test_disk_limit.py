"""A run's disk limit and the bound on its log, the pure parts: the size setting, the
verdict of a run that filled its disk, and the host's cap on one log line."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core.statuses import FailureKind, RunStatus
from bot.core.verdict import decide_outcome
from bot.errors import SettingsError
from bot.settings import Settings
from runner.contract import Report, RunResult, parse_event_line
from runner.disk_limit import DEFAULT_DISK_LIMIT, describe_size, parse_size
from runner.errors import DiskLimitUnavailable
from runner.host.log_lines import capped_lines

MiB, GiB = 1024**2, 1024**3
ENV = {"SLACK_BOT_TOKEN": "x", "ANTHROPIC_API_KEY": "k", "SLACK_APP_TOKEN": "xapp-1"}


@pytest.mark.parametrize(("text", "size"), [
    ("2g", 2 * GiB), ("2G", 2 * GiB), ("2GiB", 2 * GiB), ("2 gb", 2 * GiB),
    ("512m", 512 * MiB), ("512MiB", 512 * MiB), ("65536k", 64 * MiB), ("1t", 1024 * GiB),
    ("67108864", 64 * MiB), (" 64m ", 64 * MiB), ("0", 0), ("0g", 0), ("16m", 16 * MiB),
])
def test_sizes_read(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "words"), [
    ("", "is not a size"), ("two gigs", "is not a size"), ("-1g", "is not a size"),
    ("1.5g", "is not a size"), ("2p", "is not a size"), ("g", "is not a size"),
    ("1m", "below the smallest limit, 16 MiB"), ("1000", "below the smallest limit"),
])
def test_sizes_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_size(text)


@pytest.mark.parametrize(("size", "words"), [
    (2 * GiB, "2 GiB"), (512 * MiB, "512 MiB"), (3 * GiB // 2, "1.5 GiB"),
    (64 * MiB, "64 MiB"), (1024 * GiB, "1 TiB"), (4096, "4 KiB"), (100, "100 bytes"),
])
def test_sizes_said(size: int, words: str) -> None:
    assert describe_size(size) == words


def test_the_disk_limit_setting() -> None:
    assert Settings.from_env(ENV).run_disk_limit == DEFAULT_DISK_LIMIT == 2 * GiB
    assert Settings.from_env({**ENV, "ROUTINES_RUN_DISK_LIMIT": "512m"}).run_disk_limit \
        == 512 * MiB
    assert Settings.from_env({**ENV, "ROUTINES_RUN_DISK_LIMIT": "0"}).run_disk_limit == 0
    with pytest.raises(SettingsError, match=r"setting ROUTINES_RUN_DISK_LIMIT: 'lots' is "
                                            r"not a size: give bytes, or a number with k"):
        Settings.from_env({**ENV, "ROUTINES_RUN_DISK_LIMIT": "lots"})


def test_an_unenforceable_limit_names_the_setting_that_turns_it_off() -> None:
    error = DiskLimitUnavailable(2 * GiB, "mkfs.ext4 not found (install e2fsprogs)")
    assert str(error) == ("the run's disk limit of 2 GiB cannot be enforced: mkfs.ext4 not "
                          "found (install e2fsprogs) (ROUTINES_RUN_DISK_LIMIT=0 runs without "
                          "a limit)")
    assert (error.limit, error.why) == (2 * GiB, "mkfs.ext4 not found (install e2fsprogs)")


SUCCESS = {"kind": "report", "outcome": "success", "summary": "all done"}
FULL = 64 * MiB


def result(**fields: Any) -> RunResult:
    """A run as the host saw it; a success `final` also came through the gateway."""
    if fields.get("final") == SUCCESS:
        fields.setdefault("report", Report("success", "all done"))
    return RunResult(run_id=1, exit_code=0, **fields)


@pytest.mark.parametrize(("observed", "status", "reason", "failure", "summary"), [
    # A full disk fails the run whatever the agent then said, success included.
    (result(final=SUCCESS, disk_limit_reached=FULL), RunStatus.FAILED,
     "disk limit of 64 MiB reached", FailureKind.DISK_LIMIT, "all done"),
    (result(final={"kind": "report", "outcome": "failure", "summary": "no room"},
            disk_limit_reached=2 * GiB), RunStatus.FAILED, "disk limit of 2 GiB reached",
     FailureKind.DISK_LIMIT, "no room"),
    (result(final={"kind": "turn_limit", "summary": "used every turn"},
            disk_limit_reached=FULL), RunStatus.FAILED, "disk limit of 64 MiB reached",
     FailureKind.DISK_LIMIT, "used every turn"),
    (result(disk_limit_reached=FULL), RunStatus.FAILED, "disk limit of 64 MiB reached",
     FailureKind.DISK_LIMIT, None),
    # How the host itself ended the run stays what ended it.
    (result(timed_out=True, disk_limit_reached=FULL), RunStatus.TIMED_OUT,
     "timed out after 30s", FailureKind.TIMED_OUT, None),
    (result(killed=True, final=SUCCESS, disk_limit_reached=FULL), RunStatus.KILLED,
     "killed", FailureKind.KILLED, None),
    (result(token_budget_exceeded=True, disk_limit_reached=FULL), RunStatus.FAILED,
     "token budget exhausted", FailureKind.TOKEN_BUDGET, None),
    (RunResult(run_id=1, infra_error="docker engine unreachable", disk_limit_reached=FULL),
     RunStatus.ERROR, "docker engine unreachable", FailureKind.INFRASTRUCTURE, None),
    # Room left: the report decides, as before.
    (result(final=SUCCESS), RunStatus.SUCCEEDED, None, None, "all done"),
])
def test_the_verdict_of_a_run_that_filled_its_disk(
        observed: RunResult, status: RunStatus, reason: str | None,
        failure: FailureKind | None, summary: str | None) -> None:
    outcome = decide_outcome(observed, timeout_seconds=30)
    assert (outcome.status, outcome.reason, outcome.failure, outcome.summary) == (
        status, reason, failure, summary)


def test_log_lines_are_split_across_chunks() -> None:
    chunks = [b'{"type": "a"}\n{"ty', b'pe": "b"}\n', b"\n", b"plain\nunfinished"]
    assert list(capped_lines(chunks)) == [b'{"type": "a"}', b'{"type": "b"}', b"", b"plain"]


def test_a_line_past_the_cap_is_cut_and_the_rest_dropped_as_it_arrives() -> None:
    # 10 bytes allowed; the long line arrives in pieces, the next line is whole again.
    chunks = [b"0123456", b"789abcdef", b"ghij\nnext", b" line\n"]
    lines = list(capped_lines(chunks, max_line=10))
    assert lines == [b"0123456789 [... 10 more bytes dropped]", b"next line"]
    assert parse_event_line(lines[0].decode()) == {
        "type": "output", "text": "0123456789 [... 10 more bytes dropped]"}


def test_a_line_exactly_at_the_cap_is_whole() -> None:
    assert list(capped_lines([b"0123456789\n"], max_line=10)) == [b"0123456789"]


def test_a_64_mib_line_comes_out_as_the_cap_and_a_marker() -> None:
    # One line of 64 MiB, in 1 MiB chunks, its newline at the very end.
    chunk = b"x" * MiB
    lines = list(capped_lines([*(chunk for _ in range(64)), b"\n"], max_line=4096))
    assert lines == [b"x" * 4096 + f" [... {64 * MiB - 4096} more bytes dropped]".encode()]
