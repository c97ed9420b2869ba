"""Routine files, pure: a document read into a spec by the rules every door applies, written
back byte for byte, refused with its file, line and key; the diff as data; the JSON Schema
and the parser agree on every key."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from bot.core import retry
from bot.core.routine import RoutineLimits
from bot.core.routine_file import (
    KEYS,
    Defaults,
    RoutineSpec,
    dump,
    read_documents,
    to_spec,
)
from bot.core.routine_plan import FieldChange, differences
from bot.core.statuses import BusyPolicy, RiskLevel
from bot.errors import RoutineFileInvalid
from runner.contract import Engine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "routines"
SCHEMA = json.loads((ROOT / "docs" / "routine.schema.json").read_text())
DEFAULTS = Defaults("claude-default", 600, "U0APPLIER")
LIMITS = RoutineLimits(60, 3600, allow_local_repos=False)
MINIMAL = ("name: tiny\nprompt: Do it.\nrepository: https://github.com/example/app\n"
           "channel: C0123ABCD\n")


def spec_of(text: str, source: str = "r.yaml",
            prompts: dict[str, str] | None = None) -> RoutineSpec:
    def read_prompt(yaml_file: str, relative: str) -> str:
        if prompts is None or relative not in prompts:
            raise FileNotFoundError(2, "No such file or directory")
        return prompts[relative]
    [doc] = read_documents(text, source)
    return to_spec(doc, DEFAULTS, LIMITS, retry.DEFAULT_LIMITS, read_prompt)


def refusals(text: str, source: str = "r.yaml") -> list[str]:
    with pytest.raises(RoutineFileInvalid) as refused:
        spec_of(text, source)
    return [str(p) for p in refused.value.problems]


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_an_example_is_read_and_written_back_byte_for_byte(example: Path) -> None:
    text = example.read_text()
    assert dump([spec_of(text, str(example))]) == text


def test_every_field_is_read_into_the_form_the_database_keeps() -> None:
    spec = spec_of((EXAMPLES / "nightly-tests.yaml").read_text())
    assert spec == RoutineSpec(
        name="nightly-tests",
        prompt="Run the test suite and fix what fails.\n"
               "Keep each fix small, and explain it in the summary.\n",
        repository="https://github.com/example/app", channel="C0123ABCD",
        model="claude-sonnet-4-5", timeout_seconds=1800,
        owners=("U0OWNER01", "subteam:S0TEAM001"), branch="develop",
        setup="pip install -e '.[dev]'\nmake fixtures\n", schedule="0 2 * * 1-5",
        timezone="Europe/Paris",
        github=("pull_request.opened repo=example/app", "push repo=example/app branch=main"),
        payload_template="Look at {{ payload.ref }} first.", risk=RiskLevel.MEDIUM,
        approvers=("U0APPROVE1",), max_runs_per_day=10, max_concurrent=1,
        when_busy=BusyPolicy.SKIP, max_tokens_per_run=200000, retry_attempts=2,
        retry_backoff_seconds=60, retry_agent_failures=True, network="pypi.org, *.github.com")


def test_left_out_keys_take_the_bots_defaults_and_the_applier_owns_it() -> None:
    spec = spec_of(MINIMAL)
    assert (spec.model, spec.timeout_seconds, spec.owners, spec.branch, spec.risk) == (
        "claude-default", 600, ("U0APPLIER",), "main", RiskLevel.LOW)
    assert (spec.schedule, spec.github, spec.retry_attempts) == (None, (), 0)


def test_a_prompt_file_is_read_relative_to_its_yaml_file() -> None:
    text = MINIMAL.replace("prompt: Do it.\n", "prompt_file: prompts/tiny.md\n")
    assert spec_of(text, prompts={"prompts/tiny.md": "From the file.\n"}).prompt == (
        "From the file.\n")
    assert refusals(text) == [
        "r.yaml:2: prompt_file: cannot read it: No such file or directory"]


def test_each_problem_names_the_file_the_line_and_the_key() -> None:
    text = (MINIMAL.replace("name: tiny", "name: Tiny Routine")
            + "risk: extreme\nowners: [bob]\nbudgets:\n  max_concurrent: 0\n  colour: red\n"
            + "retries:\n  attempts: 99\ntriggers:\n  github:\n  - push\n  - nonsense.event\n"
            + "schedule:\n  expression: every 1s\n")
    assert refusals(text, "dir/bad.yaml") == [
        "dir/bad.yaml:9: budgets.colour: unknown key; use one of max_runs_per_day, "
        "max_concurrent, when_busy, max_tokens_per_run"]
    fixed = text.replace("  colour: red\n", "")
    found = refusals(fixed, "dir/bad.yaml")
    assert [p.split(": ", 2)[:2] for p in found] == [
        ["dir/bad.yaml:1", "name"], ["dir/bad.yaml:16", "schedule.expression"],
        ["dir/bad.yaml:5", "risk"], ["dir/bad.yaml:6", "owners"],
        ["dir/bad.yaml:8", "budgets.max_concurrent"], ["dir/bad.yaml:10", "retries.attempts"],
        ["dir/bad.yaml:14", "triggers.github[1]"]]
    assert found[2].endswith("risk: use low, medium or high")  # `/routine set`'s own words
    assert "`bob` is not a Slack user" in found[3]


def test_wrong_kinds_missing_keys_and_broken_yaml_are_refused_with_their_line() -> None:
    assert refusals("name: x\nprompt: [a]\nbranch: 3\n") == [
        "r.yaml:1: document: `repository` is required",
        "r.yaml:1: document: `channel` is required",
        "r.yaml:2: prompt: expected text", "r.yaml:3: branch: expected text"]
    assert refusals(MINIMAL + "prompt_file: p.md\n")[0] == (
        "r.yaml:2: prompt: give exactly one of `prompt` and `prompt_file`")
    with pytest.raises(RoutineFileInvalid) as broken:
        read_documents("name: x\nprompt: [unclosed\nchannel: C1\n", "b.yaml")
    [problem] = broken.value.problems
    assert (problem.source, problem.line, problem.key) == ("b.yaml", 3, "yaml")
    with pytest.raises(RoutineFileInvalid) as listed:
        read_documents("- a\n- b\n", "l.yaml")
    assert str(listed.value.problems[0]).startswith("l.yaml:1: document: a routine is a mapping")


def test_several_documents_in_one_file_and_their_lines() -> None:
    docs = read_documents(MINIMAL + "---\n" + MINIMAL.replace("tiny", "other"), "two.yaml")
    assert [d.data["name"] for d in docs] == ["tiny", "other"]
    assert [d.line("channel") for d in docs] == [4, 9]
    assert dump([spec_of(MINIMAL), spec_of(MINIMAL)]).startswith("---\nname: tiny\n")


def test_the_diff_lists_changed_fields_in_the_formats_order() -> None:
    before = spec_of(MINIMAL)
    after = spec_of(MINIMAL.replace("Do it.", "Do more.") + "risk: high\nretries:\n  attempts: 1\n")
    assert differences(before, after) == [
        FieldChange("prompt", "Do it.", "Do more."),
        FieldChange("risk", RiskLevel.LOW, RiskLevel.HIGH),
        FieldChange("retries.attempts", 0, 1)]
    assert differences(after, after) == []


def test_the_network_setting_is_read_by_the_slack_forms_rule_and_written_back() -> None:
    assert spec_of(MINIMAL).network == "trusted"
    custom = spec_of(MINIMAL + "network: pypi.org,  *.github.com\n")
    assert custom.network == "pypi.org, *.github.com"  # canonical, as /routine status says it
    assert differences(spec_of(MINIMAL), custom) == [
        FieldChange("network", "trusted", "pypi.org, *.github.com")]
    assert "network: pypi.org, *.github.com\n" in dump([custom])
    [problem] = refusals(MINIMAL + "risk: low\nnetwork: 'http://x y'\n")
    assert problem.startswith("r.yaml:6: network: Use trusted, none, full")


def test_the_engine_is_read_compared_and_written_like_slack_sets_it() -> None:
    spec = spec_of(MINIMAL + "engine: Claude-Code\n")
    assert spec.engine is Engine.CLAUDE_CODE
    assert differences(spec_of(MINIMAL), spec) == [
        FieldChange("engine", "builtin", "claude-code")]
    assert "engine: claude-code\n" in dump([spec])
    assert "engine" not in dump([spec_of(MINIMAL)])  # the default is left out
    [problem] = refusals(MINIMAL + "engine: claude\n")
    assert problem == "r.yaml:5: engine: Use one of builtin, claude-code."


def test_the_schema_names_exactly_the_keys_the_parser_reads() -> None:
    properties = SCHEMA["properties"]
    assert set(properties) == set(KEYS[""])
    for parent, children in KEYS.items():
        if parent:
            assert set(properties[parent]["properties"]) == set(children), parent


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_obey_the_schema(example: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(yaml.safe_load(example.read_text()))


def test_the_schema_refuses_what_the_parser_refuses() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for bad in ("colour: red\n", "risk: extreme\n", "budgets:\n  colour: red\n",
                "prompt_file: p.md\n"):
        assert not validator.is_valid(yaml.safe_load(MINIMAL + bad)), bad
        with pytest.raises(RoutineFileInvalid):
            spec_of(MINIMAL + bad, prompts={"p.md": "x"})
