"""Unit tests of the pure core: validation, verdicts, parsing, redaction, settings."""

from __future__ import annotations

import pytest

from bot.core.redaction import MASK, Redactor
from bot.core.routine import RoutineDraft, RoutineLimits, validate
from bot.core.run_log import chunk, log_lines
from bot.core.statuses import FailureKind, RunStatus
from bot.core.verdict import RunOutcome, decide_outcome
from bot.doors.slack import commands
from bot.errors import SettingsError
from bot.settings import Settings
from runner.contract import (
    Event,
    Report,
    Resume,
    RunResult,
    RunSpec,
    api_status_code,
    parse_event_line,
)
from runner.repo_policy import DEFAULT_REPO_HOSTS

# The default repository hosts, and an operator's own forge allowed by name.
LIMITS = RoutineLimits(min_timeout=60, max_timeout=3600, allow_local_repos=False,
                       repo_hosts=(*DEFAULT_REPO_HOSTS, "git.internal"))


def draft(**overrides: str) -> RoutineDraft:
    fields = {"name": "deps-check", "prompt": "Check deps.", "repo_url":
              "https://github.com/org/repo.git", "channel_id": "C0123ABC", "branch": "main",
              "model": "claude-sonnet-4-5", "timeout_seconds": "600"}
    fields.update(overrides)
    return RoutineDraft(**fields)


def test_a_good_draft_has_no_errors() -> None:
    assert validate(draft(), LIMITS) == {}


@pytest.mark.parametrize(("field", "value"), [
    ("name", "Deps"), ("name", "x"), ("name", "1abc"), ("name", "a" * 41), ("name", "a b"),
    ("prompt", "   "), ("prompt", "x" * 20_001),
    ("repo_url", "ext::sh -c id"), ("repo_url", "http://insecure.example/repo"),
    ("repo_url", "/srv/git/repo"), ("repo_url", "file:///srv/git/repo"),
    ("repo_url", "--upload-pack=id"),
    ("branch", "-x"), ("branch", "a..b"), ("branch", "feature/"), ("branch", "a b"),
    ("channel_id", ""), ("channel_id", "general"),
    ("model", "bad model"), ("timeout_seconds", "59"), ("timeout_seconds", "3601"),
    ("timeout_seconds", "ten"),
])
def test_bad_fields_are_named(field: str, value: str) -> None:
    assert set(validate(draft(**{field: value}), LIMITS)) == {field}


@pytest.mark.parametrize("url", [
    "https://github.com/org/repo.git", "ssh://git@github.com/org/repo.git",
    "git@github.com:org/repo.git", "https://git.internal:8443/team/repo",
])
def test_remote_urls_are_accepted(url: str) -> None:
    assert validate(draft(repo_url=url), LIMITS) == {}


def test_local_repos_only_when_allowed() -> None:
    allowed = RoutineLimits(60, 3600, allow_local_repos=True)
    assert validate(draft(repo_url="file:///srv/git/repo"), allowed) == {}


def result(**kwargs: object) -> RunResult:
    return RunResult(run_id=1, **kwargs)  # type: ignore[arg-type]


def reported(outcome: str, summary: str | None = None, **kwargs: object) -> RunResult:
    """A run whose report_result call the gateway saw, and whose container said so too."""
    final: dict[str, object] = {"kind": "report", "outcome": outcome}
    if summary is not None:
        final["summary"] = summary
    return result(final=final, report=Report(outcome, summary or ""), **kwargs)


@pytest.mark.parametrize(("observed", "status", "reason"), [
    (reported("success", "ok", exit_code=0), RunStatus.SUCCEEDED, None),
    (result(exit_code=0), RunStatus.FAILED, "no self-report (exit code 0)"),
    (result(exit_code=137), RunStatus.FAILED, "no self-report (exit code 137)"),
    (reported("failure", "red", exit_code=2), RunStatus.FAILED, "red"),
    (reported("success", timed_out=True), RunStatus.TIMED_OUT, "timed out after 30s"),
    (result(infra_error="clone failed"), RunStatus.ERROR, "clone failed"),
    (result(exit_code=2, final={"kind": "api_error", "summary": "overloaded"}),
     RunStatus.ERROR, "overloaded"),
    (result(exit_code=3, final={"kind": "setup_failed", "summary": "setup exited 1"}),
     RunStatus.FAILED, "setup exited 1"),
    (result(exit_code=2, final={"kind": "turn_limit", "summary": "turn limit"}),
     RunStatus.FAILED, "turn limit"),
])
def test_only_an_explicit_success_report_succeeds(
    observed: RunResult, status: RunStatus, reason: str | None,
) -> None:
    outcome = decide_outcome(observed, timeout_seconds=30)
    assert (outcome.status, outcome.reason) == (status, reason)


def api_error(summary: str = "Anthropic API error: ...", **fields: object) -> RunResult:
    return result(exit_code=2, final={"kind": "api_error", "summary": summary, **fields})


LEGACY_529 = ("Anthropic API error: OverloadedError: Error code: 529 - {'type': 'error', "
              "'error': {'type': 'overloaded_error', 'message': 'Overloaded'}}")
LEGACY_401 = "Anthropic API error: AuthenticationError: Error code: 401 - {'type': 'error'}"


@pytest.mark.parametrize(("observed", "status", "reason", "failure"), [
    (reported("success", "ok", exit_code=0), RunStatus.SUCCEEDED, None, None),
    # the container's word alone is no report: only what the gateway saw counts
    (result(exit_code=0, final={"kind": "report", "outcome": "success", "summary": "ok"}),
     RunStatus.FAILED, "no self-report (exit code 0)", FailureKind.NO_SELF_REPORT),
    (result(exit_code=2, final={"kind": "report", "outcome": "failure", "summary": "red"}),
     RunStatus.FAILED, "no self-report (exit code 2)", FailureKind.NO_SELF_REPORT),
    # the gateway's report counts when the container wrote no result at all...
    (result(exit_code=1, report=Report("success", "done")), RunStatus.SUCCEEDED, None, None),
    # ...and the container can still make it fail, never the other way round
    (result(exit_code=3, report=Report("success", "done"),
            final={"kind": "setup_failed", "summary": "setup exited 1"}),
     RunStatus.FAILED, "setup exited 1", FailureKind.SETUP_FAILED),
    (result(exit_code=2, report=Report("success", "done"),
            final={"kind": "no_report", "summary": "stopped"}),
     RunStatus.FAILED, "no self-report (exit code 2)", FailureKind.NO_SELF_REPORT),
    (result(exit_code=0), RunStatus.FAILED, "no self-report (exit code 0)",
     FailureKind.NO_SELF_REPORT),
    (result(), RunStatus.FAILED, "no self-report", FailureKind.NO_SELF_REPORT),
    (result(exit_code=2, final={"kind": "no_report", "summary": "stopped"}), RunStatus.FAILED,
     "no self-report (exit code 2)", FailureKind.NO_SELF_REPORT),
    (result(exit_code=2, final={"kind": "from-a-newer-image"}), RunStatus.FAILED,
     "no self-report (exit code 2)", FailureKind.NO_SELF_REPORT),
    # a failure report is the agent's word, whatever it says
    (reported("failure", "red", exit_code=2), RunStatus.FAILED, "red",
     FailureKind.REPORTED_FAILURE),
    (reported("failure", "no self-report (it says so)", exit_code=2),
     RunStatus.FAILED, "no self-report (it says so)", FailureKind.REPORTED_FAILURE),
    (reported("failure", exit_code=2), RunStatus.FAILED, "the agent reported failure",
     FailureKind.REPORTED_FAILURE),
    (result(exit_code=3, final={"kind": "setup_failed", "summary": "setup exited 1"}),
     RunStatus.FAILED, "setup exited 1", FailureKind.SETUP_FAILED),
    (result(exit_code=2, final={"kind": "turn_limit", "summary": "turn limit"}),
     RunStatus.FAILED, "turn limit", FailureKind.TURN_LIMIT),
    (result(exit_code=2, final={"kind": "token_budget", "summary": "token budget exhausted "
                                "(12 of 10 tokens)"}), RunStatus.FAILED,
     "token budget exhausted (12 of 10 tokens)", FailureKind.TOKEN_BUDGET),
    (result(exit_code=2, final={"kind": "token_budget"}), RunStatus.FAILED,
     "token budget exhausted", FailureKind.TOKEN_BUDGET),
    (result(token_budget_exceeded=True, killed=True), RunStatus.FAILED,
     "token budget exhausted", FailureKind.TOKEN_BUDGET),
    (reported("success", timed_out=True), RunStatus.TIMED_OUT, "timed out after 30s",
     FailureKind.TIMED_OUT),
    (result(killed=True, exit_code=137), RunStatus.KILLED, "killed", FailureKind.KILLED),
    (result(infra_error="clone failed"), RunStatus.ERROR, "clone failed",
     FailureKind.INFRASTRUCTURE),
    # the API: its HTTP status, as data
    (api_error(status_code=529), RunStatus.ERROR, "Anthropic API error: ...",
     FailureKind.API_UNAVAILABLE),
    (api_error(status_code=500), RunStatus.ERROR, "Anthropic API error: ...",
     FailureKind.API_UNAVAILABLE),
    (api_error(status_code=429), RunStatus.ERROR, "Anthropic API error: ...",
     FailureKind.API_UNAVAILABLE),
    (api_error(status_code=408), RunStatus.ERROR, "Anthropic API error: ...",
     FailureKind.API_UNAVAILABLE),
    (api_error(status_code=None), RunStatus.ERROR, "Anthropic API error: ...",
     FailureKind.API_UNAVAILABLE),
    (api_error(status_code=401), RunStatus.ERROR, "Anthropic API error: ...",
     FailureKind.API_REFUSED),
    (api_error(status_code=400), RunStatus.ERROR, "Anthropic API error: ...",
     FailureKind.API_REFUSED),
    # the key wins over the words; an image that wrote no key is read by its words
    (api_error(LEGACY_401, status_code=529), RunStatus.ERROR, LEGACY_401,
     FailureKind.API_UNAVAILABLE),
    (api_error(LEGACY_401), RunStatus.ERROR, LEGACY_401, FailureKind.API_REFUSED),
    (api_error(LEGACY_529), RunStatus.ERROR, LEGACY_529, FailureKind.API_UNAVAILABLE),
    (result(exit_code=2, final={"kind": "api_error", "summary": "overloaded"}),
     RunStatus.ERROR, "overloaded", FailureKind.API_UNAVAILABLE),
])
def test_every_verdict_says_its_failure_kind(
    observed: RunResult, status: RunStatus, reason: str | None, failure: FailureKind | None,
) -> None:
    outcome = decide_outcome(observed, timeout_seconds=30)
    assert (outcome.status, outcome.reason, outcome.failure) == (status, reason, failure)


@pytest.mark.parametrize(("event", "code"), [
    ({"kind": "api_error", "status_code": 529, "summary": LEGACY_401}, 529),
    ({"kind": "api_error", "status_code": None, "summary": LEGACY_401}, None),
    ({"kind": "api_error", "status_code": "529"}, None),
    ({"kind": "api_error", "status_code": True}, None),
    ({"kind": "api_error", "summary": LEGACY_401}, 401),
    ({"kind": "api_error", "summary": "Anthropic API error: APIConnectionError: Connection "
                                      "error."}, None),
    ({"kind": "api_error"}, None),
])
def test_the_api_status_is_read_from_the_key_or_an_older_image_s_words(
    event: dict[str, object], code: int | None,
) -> None:
    assert api_status_code(event) == code


@pytest.mark.parametrize(("status", "failure"), [
    (RunStatus.SUCCEEDED, FailureKind.KILLED), (RunStatus.FAILED, None),
    (RunStatus.ERROR, None),
])
def test_an_outcome_has_a_failure_kind_exactly_when_it_failed(
    status: RunStatus, failure: FailureKind | None,
) -> None:
    with pytest.raises(ValueError, match="outcome with failure"):
        RunOutcome(status, None, "why", failure)


@pytest.mark.parametrize(("text", "action", "name", "problem"), [
    ("", "help", "", ""),
    ("run Nightly", "run", "nightly", ""),
    ("status nightly", "status", "nightly", ""),
    ("run", "help", "", "Usage: `/routine run NAME`."),
    ("run a b", "help", "", "Usage: `/routine run NAME`."),
    ("frobnicate", "help", "", "Unknown subcommand `frobnicate`."),
    ('run "unterminated', "help", "", "I could not read that command (unbalanced quotes?)."),
    ("CREATE", "create", "", ""),
])
def test_command_parsing(text: str, action: str, name: str, problem: str) -> None:
    assert commands.parse(text) == commands.Command(action, name, problem)


def test_redaction_masks_known_values_and_token_shapes() -> None:
    redact = Redactor(["s3cret-value-123"])
    text = redact("key=s3cret-value-123 bot=xoxb-1234-5678-abcdefgh ant=sk-ant-api03-abcdefghij")
    assert text == f"key={MASK} bot={MASK} ant={MASK}"


def test_missing_settings_are_named_in_one_line() -> None:
    with pytest.raises(SettingsError, match=r"^missing required setting: SLACK_BOT_TOKEN, "
                       r"ANTHROPIC_API_KEY, SLACK_SIGNING_SECRET$"):
        Settings.from_env({})


def test_socket_mode_does_not_need_a_signing_secret() -> None:
    settings = Settings.from_env({"SLACK_BOT_TOKEN": "xoxb-1", "ANTHROPIC_API_KEY": "k",
                                  "SLACK_APP_TOKEN": "xapp-1", "PORT": "8080"})
    assert settings.socket_mode and settings.port == 8080


def test_a_bad_number_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="PORT must be a whole number"):
        Settings.from_env({"SLACK_BOT_TOKEN": "x", "ANTHROPIC_API_KEY": "k",
                           "SLACK_SIGNING_SECRET": "s", "PORT": "eighty"})


def test_stray_output_lines_are_kept_as_text() -> None:
    assert parse_event_line('{"type": "usage", "input_tokens": 3}')["type"] == "usage"
    assert parse_event_line("pip: installing...") == {"type": "output",
                                                      "text": "pip: installing..."}
    assert parse_event_line("[1, 2]") == {"type": "output", "text": "[1, 2]"}


@pytest.mark.parametrize("line", [
    '{"type": "model_call", "input_tokens": 1, "output_tokens": 1}',
    '{"type": "egress", "host": "example.test", "allowed": true}',
])
def test_a_container_line_claiming_a_host_type_is_kept_as_text(line: str) -> None:
    assert parse_event_line(line) == {"type": "output", "text": line}


def test_a_container_line_cannot_claim_the_host_as_its_source() -> None:
    assert parse_event_line('{"type": "tool_call", "source": "host"}') == {"type": "tool_call"}


def test_resume_counts_the_container_events_and_the_gateways_usage_and_report() -> None:
    events: list[Event] = [{"type": "started"}, {"type": "model_call", "source": "host",
                                    "input_tokens": 100, "output_tokens": 20},
              {"type": "output", "text": '{"type": "model_call", "input_tokens": 9}'},
              {"type": "model_call", "source": "host", "input_tokens": 101,
               "output_tokens": 21, "report": {"outcome": "success", "summary": "ok"}},
              {"type": "egress", "source": "host"}, {"type": "tool_call"}]
    assert Resume.from_log(events, last_seq=9) == Resume(
        skip_events=3, next_seq=10, input_tokens=201, output_tokens=41,
        report=Report("success", "ok"))


def test_run_spec_round_trips_as_json() -> None:
    spec = RunSpec(1, "r", "p", "https://h/o/r", "main", "m", 60, 5, "make")
    assert RunSpec.from_json(spec.to_json()) == spec


def test_log_chunks_keep_the_end_and_count_what_was_dropped() -> None:
    lines = log_lines([{"type": "assistant_text", "text": f"line {i} " + "x" * 80}
                       for i in range(100)])
    chunks, dropped = chunk(lines, max_chars=500, max_chunks=3)
    assert len(chunks) == 3 and all(len(c) <= 500 for c in chunks)
    assert "line 99" in chunks[-1]
    assert dropped == 100 - sum(c.count("\n") + 1 for c in chunks)
