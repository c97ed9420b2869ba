"""Routines as code: a YAML document read into a `RoutineSpec`, and a spec written back.

Pure: the text comes in from the door that read the file, prompt files through a reader it
gives. Every rule a routine obeys is the one the Slack form and `/routine set` apply
(`bot.core.routine.validate`, `parse_changes`, `bot.core.retry.validate_policy`,
`bot.core.github.parse_filter`, `bot.core.schedule.parse_schedule`): this module only maps
their field errors back to the line of the YAML key that caused them. API tokens are
secrets and never in a file: `/routine token` makes them.

The format (see `docs/routine.schema.json`)::

    name: nightly
    prompt: |            # or prompt_file: nightly.md (relative to this file)
      Fix the flaky tests.
    repository: https://github.com/org/app
    branch: main
    setup: pip install -e .
    channel: C0123456
    model: claude-sonnet-4-5
    timeout_seconds: 1800
    schedule: {expression: "0 9 * * 1-5", timezone: Europe/Paris}
    triggers: {github: ["push branch=main"], payload_template: "{{ payload.ref }}"}
    risk: medium
    owners: [U0123456, subteam:S0123456]
    approvers: [U0654321]
    budgets: {max_runs_per_day: 10, max_concurrent: 1, when_busy: skip,
              max_tokens_per_run: 200000}
    retries: {attempts: 2, backoff_seconds: 60, agent_failures: false}
    network: pypi.org, *.github.com   # trusted (left out), none, full (admins), or hosts
    engine: claude-code  # builtin (left out) or claude-code, as `/routine set engine=`
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import yaml

from bot.core import github, retry, roles
from bot.core.routine import (
    RoutineDraft,
    RoutineLimits,
    engine_of,
    network_policy,
    normalized,
    parse_changes,
    validate,
)
from bot.core.schedule import ScheduleError, parse_schedule
from bot.core.statuses import BusyPolicy, RiskLevel
from bot.errors import RoutineFileInvalid, RoutineFileProblem, ValidationFailed
from runner.contract import Engine

PromptReader = Callable[[str, str], str]  # (the YAML file, a prompt file as written) -> text

# Every key of the format, nested ones under their parent: the JSON Schema lists the same.
KEYS: dict[str, tuple[str, ...]] = {
    "": ("name", "prompt", "prompt_file", "repository", "branch", "setup", "channel", "model",
         "timeout_seconds", "schedule", "triggers", "risk", "owners", "approvers", "budgets",
         "retries", "network", "engine"),
    "schedule": ("expression", "timezone"),
    "triggers": ("github", "payload_template"),
    "budgets": ("max_runs_per_day", "max_concurrent", "when_busy", "max_tokens_per_run"),
    "retries": ("attempts", "backoff_seconds", "agent_failures"),
}
REQUIRED = ("name", "repository", "channel")

# The draft's fields and `/routine set` keys, by the YAML key that carries them.
_DRAFT_KEYS = {"name": "name", "prompt": "prompt", "repo_url": "repository", "branch": "branch",
               "setup_script": "setup", "channel_id": "channel", "model": "model",
               "timeout_seconds": "timeout_seconds",
               "payload_template": "triggers.payload_template",
               "schedule": "schedule.expression", "schedule_tz": "schedule.timezone",
               "network": "network", "engine": "engine"}
_SET_KEYS = {"risk": "risk", "owners": "owners", "approvers": "approvers",
             "max-runs-per-day": "budgets.max_runs_per_day",
             "max-concurrent": "budgets.max_concurrent", "when-busy": "budgets.when_busy",
             "max-tokens": "budgets.max_tokens_per_run"}


@dataclass(frozen=True)
class RoutineDocument:
    """One YAML document as read: its data, the line of every key, and where it came from."""

    source: str
    data: dict[str, Any]
    lines: dict[str, int]  # "budgets.max_concurrent" -> 1-based line; "" -> the document

    def line(self, key: str) -> int:
        """The line of `key`, else of its nearest parent that is present."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition("[")[0] if key.endswith("]") else key.rpartition(".")[0]
        return self.lines.get("", 1)

    def problem(self, key: str, message: str) -> RoutineFileProblem:
        return RoutineFileProblem(self.source, self.line(key), key or "document", message)


@dataclass(frozen=True)
class Defaults:
    """What a key left out of a file means on this bot."""

    model: str
    timeout_seconds: int
    owner: str  # who applies it: the owner of a routine whose file names none


@dataclass(frozen=True)
class RoutineSpec:
    """A routine as its file wants it, every value in the form the database keeps."""

    name: str
    prompt: str
    repository: str
    channel: str
    model: str
    timeout_seconds: int
    owners: tuple[str, ...]
    branch: str = "main"
    setup: str = ""
    schedule: str | None = None
    timezone: str = "UTC"
    github: tuple[str, ...] = ()
    payload_template: str = ""
    risk: RiskLevel = RiskLevel.LOW
    approvers: tuple[str, ...] = ()
    max_runs_per_day: int | None = None
    max_concurrent: int | None = None
    when_busy: BusyPolicy = BusyPolicy.QUEUE
    max_tokens_per_run: int | None = None
    retry_attempts: int = 0
    retry_backoff_seconds: int = 30
    retry_agent_failures: bool = False
    network: str = "trusted"  # as typed in Slack: `EgressPolicy.describe()`
    engine: Engine = Engine.BUILTIN


# The YAML key of each compared field of a spec, in the order a diff lists them.
FIELD_KEYS = {"prompt": "prompt", "repository": "repository", "branch": "branch",
              "setup": "setup", "channel": "channel", "model": "model",
              "timeout_seconds": "timeout_seconds", "schedule": "schedule.expression",
              "timezone": "schedule.timezone", "github": "triggers.github",
              "payload_template": "triggers.payload_template", "risk": "risk",
              "owners": "owners", "approvers": "approvers",
              "max_runs_per_day": "budgets.max_runs_per_day",
              "max_concurrent": "budgets.max_concurrent", "when_busy": "budgets.when_busy",
              "max_tokens_per_run": "budgets.max_tokens_per_run",
              "retry_attempts": "retries.attempts",
              "retry_backoff_seconds": "retries.backoff_seconds",
              "retry_agent_failures": "retries.agent_failures", "network": "network",
              "engine": "engine"}


# Reading ------------------------------------------------------------------------------

def read_documents(text: str, source: str) -> list[RoutineDocument]:
    """Every YAML document of a file, with the line of each key; a file that is not YAML,
    or a document that is not a mapping, is refused naming its line."""
    loader = yaml.SafeLoader(text)
    documents: list[RoutineDocument] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[str, int] = {"": node.start_mark.line + 1}
            _lines(node, "", lines)
            data = loader.construct_document(node)
            if not isinstance(data, dict):
                raise RoutineFileInvalid([RoutineFileProblem(
                    source, node.start_mark.line + 1, "document",
                    "a routine is a mapping of keys (name: ..., prompt: ...)")])
            documents.append(RoutineDocument(source, data, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RoutineFileInvalid([RoutineFileProblem(
            source, line, "yaml", str(exc.problem or exc.context or "not YAML"))]) from None
    except yaml.YAMLError as exc:
        raise RoutineFileInvalid([RoutineFileProblem(source, 1, "yaml", str(exc))]) from None
    finally:
        loader.dispose()
    return documents


def _lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines.setdefault(key, key_node.start_mark.line + 1)
            _lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault(f"{prefix}[{index}]", item.start_mark.line + 1)


def to_spec(doc: RoutineDocument, defaults: Defaults, limits: RoutineLimits,
            retry_limits: retry.RetryLimits, read_prompt: PromptReader) -> RoutineSpec:
    """The document as a spec, checked by the rules every door applies; every problem is
    raised at once, each with its file, line and key."""
    problems = list(_shape_problems(doc))
    if problems:
        raise RoutineFileInvalid(problems)
    data = doc.data
    prompt_key = "prompt_file" if "prompt_file" in data else "prompt"
    try:
        prompt = (read_prompt(doc.source, data["prompt_file"]) if "prompt_file" in data
                  else data["prompt"])
    except OSError as exc:
        raise RoutineFileInvalid([doc.problem("prompt_file", f"cannot read it: "
                                              f"{exc.strerror or exc}")]) from None
    errors: dict[str, str] = {}
    spec = _draft_spec(doc, prompt, defaults, limits, errors)
    if prompt_key == "prompt_file" and "prompt" in errors:
        errors["prompt_file"] = errors.pop("prompt")
    spec = _governed(doc, spec, errors)
    spec = _retried(doc, spec, retry_limits, errors)
    spec = _listening(doc, spec, errors)
    if errors:
        raise RoutineFileInvalid([doc.problem(key, why) for key, why in errors.items()])
    return spec


def _shape_problems(doc: RoutineDocument) -> Iterator[RoutineFileProblem]:
    """Unknown keys, missing ones, and values of the wrong kind."""
    data = doc.data
    for parent, allowed in KEYS.items():
        section = data if not parent else data.get(parent)
        if parent and section is None:
            continue
        if not isinstance(section, dict):
            yield doc.problem(parent, "expected a mapping of keys")
            continue
        for key in section:
            if key not in allowed:
                path = f"{parent}.{key}" if parent else str(key)
                yield doc.problem(path, f"unknown key; use one of {', '.join(allowed)}")
    for key in REQUIRED:
        if key not in data:
            yield doc.problem("", f"`{key}` is required")
    if ("prompt" in data) == ("prompt_file" in data):
        yield doc.problem("prompt" if "prompt" in data else "",
                          "give exactly one of `prompt` and `prompt_file`")
    yield from _type_problems(doc)


_STRINGS = ("name", "prompt", "prompt_file", "repository", "branch", "setup", "channel",
            "model", "risk", "network", "engine", "schedule.expression", "schedule.timezone",
            "triggers.payload_template", "budgets.when_busy")
_INTEGERS = ("timeout_seconds", "budgets.max_runs_per_day", "budgets.max_concurrent",
             "budgets.max_tokens_per_run", "retries.attempts", "retries.backoff_seconds")
_LISTS = ("owners", "approvers", "triggers.github")


def _type_problems(doc: RoutineDocument) -> Iterator[RoutineFileProblem]:
    for key in (*_STRINGS, *_INTEGERS, *_LISTS, "retries.agent_failures"):
        present, value = _get(doc.data, key)
        if not present or (value is None and key.startswith("budgets.max")):
            continue
        if key in _STRINGS and not isinstance(value, str):
            yield doc.problem(key, "expected text")
        elif key in _INTEGERS and (isinstance(value, bool) or not isinstance(value, int)):
            yield doc.problem(key, "expected a whole number")
        elif key in _LISTS and not (isinstance(value, list)
                                    and all(isinstance(v, str) for v in value)):
            yield doc.problem(key, "expected a list of text")
        elif key == "retries.agent_failures" and not isinstance(value, bool):
            yield doc.problem(key, "expected true or false")


def _get(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    parent, _, child = key.rpartition(".")
    section = data.get(parent) if parent else data
    if not isinstance(section, dict) or child not in section:
        return False, None
    return True, section[child]


def _draft_spec(doc: RoutineDocument, prompt: str, defaults: Defaults, limits: RoutineLimits,
                errors: dict[str, str]) -> RoutineSpec:
    """The fields the Slack form has, checked by `bot.core.routine.validate`."""
    data = doc.data
    when = data.get("schedule") or {}
    triggers = data.get("triggers") or {}
    draft = normalized(RoutineDraft(
        name=data["name"], prompt=prompt, repo_url=data["repository"],
        channel_id=data["channel"], branch=data.get("branch", "main"),
        setup_script=data.get("setup", ""), model=data.get("model", ""),
        timeout_seconds=data.get("timeout_seconds", ""),
        payload_template=triggers.get("payload_template", ""),
        schedule=when.get("expression", ""), schedule_tz=when.get("timezone", ""),
        network=data.get("network", ""), engine=data.get("engine", "")))
    for draft_field, why in validate(draft, limits).items():
        errors[_DRAFT_KEYS.get(draft_field, draft_field)] = why
    if when and not draft.schedule:
        errors["schedule.expression"] = "say when it runs (cron or `every 1h`)"
    expression, timezone = None, "UTC"
    if draft.schedule and not {"schedule.expression", "schedule.timezone"} & errors.keys():
        try:
            parsed = parse_schedule(draft.schedule, draft.schedule_tz or "UTC",
                                    limits.min_schedule_interval)
            expression, timezone = parsed.expression, parsed.timezone
        except ScheduleError as exc:
            errors["schedule.expression"] = str(exc)
    return RoutineSpec(
        name=draft.name, prompt=draft.prompt, repository=draft.repo_url, channel=draft.channel_id,
        model=draft.model or defaults.model,
        timeout_seconds=int(draft.timeout_seconds or defaults.timeout_seconds)
        if "timeout_seconds" not in errors else 0,
        owners=(defaults.owner,), branch=draft.branch, setup=draft.setup_script,
        schedule=expression, timezone=timezone, payload_template=draft.payload_template,
        network=network_policy(draft.network).describe() if "network" not in errors
        else "trusted", engine=engine_of(draft.engine) if "engine" not in errors
        else Engine.BUILTIN)


def _governed(doc: RoutineDocument, spec: RoutineSpec, errors: dict[str, str]) -> RoutineSpec:
    """Risk, roles and budgets, through `/routine set`'s own parser."""
    data, budgets = doc.data, doc.data.get("budgets") or {}
    words = [f"risk={data.get('risk', RiskLevel.LOW.value)}",
             f"when-busy={budgets.get('when_busy', BusyPolicy.QUEUE.value)}"]
    if "owners" in data:
        words.append(f"owners={','.join(data['owners'])}")
    words.append(f"approvers={','.join(data.get('approvers', []))}")
    for set_key, budget_key in (("max-runs-per-day", "max_runs_per_day"),
                                ("max-concurrent", "max_concurrent"),
                                ("max-tokens", "max_tokens_per_run")):
        value = budgets.get(budget_key)
        words.append(f"{set_key}={'off' if value is None else value}")
    try:
        changes = parse_changes(words)
    except ValidationFailed as exc:
        errors.update({_SET_KEYS.get(k, k): why for k, why in exc.field_errors.items()})
        return spec
    return replace(
        spec, risk=RiskLevel(str(changes["risk"])),
        when_busy=BusyPolicy(str(changes["busy_policy"])),
        owners=roles.split(str(changes["owners"])) if "owners" in changes else spec.owners,
        approvers=roles.split(str(changes["approvers"])),
        max_runs_per_day=_limit(changes["max_runs_per_day"]),
        max_concurrent=_limit(changes["max_concurrent"]),
        max_tokens_per_run=_limit(changes["max_tokens_per_run"]))


def _limit(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _retried(doc: RoutineDocument, spec: RoutineSpec, limits: retry.RetryLimits,
             errors: dict[str, str]) -> RoutineSpec:
    given = doc.data.get("retries") or {}
    policy = retry.RetryPolicy(given.get("attempts", 0), given.get("backoff_seconds", 30),
                               given.get("agent_failures", False))
    try:
        retry.validate_policy(policy, limits)
    except ValidationFailed as exc:
        key = "retries.attempts" if "attempts" in exc.field_errors["retries"] \
            else "retries.backoff_seconds"
        errors[key] = exc.field_errors["retries"].removesuffix(" nothing changed.").rstrip(";")
        return spec
    return replace(spec, retry_attempts=policy.attempts,
                   retry_backoff_seconds=policy.backoff_seconds,
                   retry_agent_failures=policy.agent_failures)


def _listening(doc: RoutineDocument, spec: RoutineSpec, errors: dict[str, str]) -> RoutineSpec:
    """GitHub filters in their canonical form, as `/routine github` stores them."""
    found: list[str] = []
    for index, typed in enumerate((doc.data.get("triggers") or {}).get("github", [])):
        try:
            canonical = github.parse_filter(typed).describe()
        except github.EventFilterError as exc:
            errors[f"triggers.github[{index}]"] = str(exc)
            continue
        if canonical in found:
            errors[f"triggers.github[{index}]"] = f"listed twice: {canonical}"
        found.append(canonical)
    return replace(spec, github=tuple(sorted(found)))  # kept as a set: order is no change


# Writing ------------------------------------------------------------------------------

def to_document(spec: RoutineSpec) -> dict[str, Any]:
    """The spec as a YAML mapping, keys in the format's order; unset values left out."""
    doc: dict[str, Any] = {"name": spec.name, "prompt": spec.prompt,
                           "repository": spec.repository, "branch": spec.branch}
    if spec.setup:
        doc["setup"] = spec.setup
    doc |= {"channel": spec.channel, "model": spec.model,
            "timeout_seconds": spec.timeout_seconds}
    if spec.schedule:
        doc["schedule"] = {"expression": spec.schedule, "timezone": spec.timezone}
    triggers: dict[str, Any] = {}
    if spec.github:
        triggers["github"] = list(spec.github)
    if spec.payload_template:
        triggers["payload_template"] = spec.payload_template
    if triggers:
        doc["triggers"] = triggers
    doc |= {"risk": spec.risk.value, "owners": list(spec.owners)}
    if spec.approvers:
        doc["approvers"] = list(spec.approvers)
    budgets: dict[str, Any] = {k: getattr(spec, k) for k in (
        "max_runs_per_day", "max_concurrent") if getattr(spec, k) is not None}
    budgets["when_busy"] = spec.when_busy.value
    if spec.max_tokens_per_run is not None:
        budgets["max_tokens_per_run"] = spec.max_tokens_per_run
    doc["budgets"] = budgets
    doc["retries"] = {"attempts": spec.retry_attempts,
                      "backoff_seconds": spec.retry_backoff_seconds,
                      "agent_failures": spec.retry_agent_failures}
    doc["network"] = spec.network
    if spec.engine is not Engine.BUILTIN:
        doc["engine"] = spec.engine.value
    return doc


class _Dumper(yaml.SafeDumper):
    """Multi-line text as `|` blocks, so a prompt reads as it was typed."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump(specs: list[RoutineSpec]) -> str:
    """The YAML of one or more routines (documents separated by `---`)."""
    return yaml.dump_all([to_document(s) for s in specs], Dumper=_Dumper, sort_keys=False,
                         allow_unicode=True, width=100, explicit_start=len(specs) > 1)
