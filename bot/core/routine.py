"""What a valid routine is. Pure functions: no I/O, so every rule is easy to test."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.core import roles
from bot.core.payload import template_error
from bot.core.schedule import ScheduleError, parse_schedule
from bot.core.statuses import BusyPolicy, RiskLevel
from bot.errors import RepoHostRefused, ValidationFailed
from runner import repo_policy
from runner.contract import Engine, RepoConfig
from runner.egress_policy import EgressPolicy, NetworkMode, PolicyError, parse_network
from runner.repo_policy import DEFAULT_REPO_HOSTS, FetchPolicy, Refusal

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,39}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{1,99}$")
CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
REMOTE_URL_RE = re.compile(
    r"^(https://[\w.-]+(:\d+)?/[\w./~-]+|ssh://[\w.@-]+(:\d+)?/[\w./~-]+|[\w.-]+@[\w.-]+:[\w./~-]+)$"
)
LOCAL_URL_RE = re.compile(r"^(file://)?/[\w./~-]+$")
MAX_PROMPT = 20_000
MAX_SETUP = 10_000


@dataclass(frozen=True)
class RoutineDraft:
    """A routine as a user typed it, before it is accepted."""

    name: str
    prompt: str
    repo_url: str
    channel_id: str
    branch: str = "main"
    setup_script: str = ""
    model: str = ""
    timeout_seconds: int | str = ""
    payload_template: str = ""
    schedule: str = ""
    schedule_tz: str = ""
    network: str = ""  # `runner.egress_policy.parse_network`; empty: trusted
    engine: str = ""  # `runner.contract.Engine`; empty: builtin


@dataclass(frozen=True)
class RoutineLimits:
    min_timeout: int
    max_timeout: int
    allow_local_repos: bool
    min_schedule_interval: int = 60
    repo_hosts: tuple[str, ...] = DEFAULT_REPO_HOSTS  # `ROUTINES_REPO_HOSTS`

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(self.repo_hosts, self.allow_local_repos)


def normalized(draft: RoutineDraft) -> RoutineDraft:
    """Trim what users paste with stray spaces; the prompt and script keep their layout."""
    return replace(draft, name=draft.name.strip().lower(), repo_url=draft.repo_url.strip(),
                   channel_id=draft.channel_id.strip(), branch=draft.branch.strip() or "main",
                   model=draft.model.strip(), timeout_seconds=str(draft.timeout_seconds).strip(),
                   schedule=draft.schedule.strip(), schedule_tz=draft.schedule_tz.strip(),
                   network=draft.network.strip(), engine=draft.engine.strip().lower())


def validate(draft: RoutineDraft, limits: RoutineLimits) -> dict[str, str]:
    """Every problem with the draft, by field name; empty when it is acceptable."""
    problems = {
        "name": None if NAME_RE.match(draft.name) else (
            "Use 2-40 characters: lowercase letters, digits and dashes, starting with a letter."),
        "prompt": _prompt_error(draft.prompt),
        "repo_url": _repo_url_error(draft.repo_url, limits),
        "branch": None if valid_branch(draft.branch) else "Not a valid branch name.",
        "setup_script": None if len(draft.setup_script) <= MAX_SETUP else (
            f"Keep the setup script under {MAX_SETUP} characters."),
        "channel_id": None if CHANNEL_RE.match(draft.channel_id) else (
            "Pick a channel for the results."),
        "model": None if not draft.model or MODEL_RE.match(draft.model) else (
            "Not a model id (for example claude-sonnet-5-5)."),
        "timeout_seconds": _timeout_error(draft.timeout_seconds, limits),
        "payload_template": template_error(draft.payload_template),
        "network": _network_error(draft.network),
        "engine": None if draft.engine in ENGINES or not draft.engine else (
            f"Use one of {', '.join(ENGINES)}."),
        **_schedule_errors(draft, limits),
    }
    return {field: why for field, why in problems.items() if why}


def _schedule_errors(draft: RoutineDraft, limits: RoutineLimits) -> dict[str, str | None]:
    """A bad time zone is said on its own field, anything else on the schedule."""
    if not draft.schedule:
        return {}
    try:
        parse_schedule("every 1d", draft.schedule_tz or "UTC")
    except ScheduleError as exc:
        return {"schedule_tz": str(exc)}
    try:
        parse_schedule(draft.schedule, draft.schedule_tz or "UTC", limits.min_schedule_interval)
    except ScheduleError as exc:
        return {"schedule": str(exc)}
    return {}


ENGINES = tuple(e.value for e in Engine)
REPO_CONFIGS = tuple(c.value for c in RepoConfig)


def engine_of(typed: str) -> Engine:
    """A routine's engine as typed (empty: the built-in agent)."""
    return Engine(typed) if typed else Engine.BUILTIN


def network_policy(typed: str) -> EgressPolicy:
    """A routine's network setting as typed (empty: `trusted`, the default); raises
    `PolicyError` naming every bad entry. Who may set `full` is the service's rule."""
    return parse_network(typed) if typed.strip() else EgressPolicy(NetworkMode.TRUSTED)


def _network_error(typed: str) -> str | None:
    try:
        network_policy(typed)
    except PolicyError as exc:
        return f"Use trusted, none, full (admins only) or hosts and *.domain patterns: {exc}"
    return None


def network_columns(policy: EgressPolicy) -> dict[str, object]:
    """How a routine stores its network setting: the mode, and a custom list's patterns."""
    return {"network": policy.mode, "network_hosts": ",".join(policy.hosts)
            if policy.mode is NetworkMode.CUSTOM else ""}


def _prompt_error(prompt: str) -> str | None:
    if not prompt.strip():
        return "Say what the agent should do."
    if len(prompt) > MAX_PROMPT:
        return f"Keep the prompt under {MAX_PROMPT} characters."
    return None


def valid_branch(branch: str) -> bool:
    """A conservative subset of git's ref-name rules (no option-like or traversal names)."""
    return bool(
        re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", branch)
        and not branch.startswith(("-", "/", "."))
        and not branch.endswith(("/", ".lock", "."))
        and ".." not in branch
        and "//" not in branch
    )


def _repo_url_error(url: str, limits: RoutineLimits) -> str | None:
    """The URL's shape, then what the fetch policy can tell from the URL alone: its host
    is allowed and is a name, not an IP address. Resolving the name is left to the clone,
    which checks again (the answer could change by then, and the routine may outlive
    the settings): a lookup here would prove nothing and is a request of its own."""
    if REMOTE_URL_RE.match(url):
        checked = repo_policy.check(url, limits.fetch_policy)
        return str(RepoHostRefused.of(checked)) if isinstance(checked, Refusal) else None
    if LOCAL_URL_RE.match(url):
        return None if limits.allow_local_repos else "Local repositories are disabled on this bot."
    return "Use an https://, ssh:// or git@host:org/repo URL."


def _timeout_error(raw: int | str, limits: RoutineLimits) -> str | None:
    if raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        return "Use a whole number of seconds."
    if not limits.min_timeout <= value <= limits.max_timeout:
        return f"Use between {limits.min_timeout} and {limits.max_timeout} seconds."
    return None


# Changes to governance settings: `/routine set NAME key=value ...` ---------------------

SETTABLE = {
    "risk": "low | medium | high",
    "owners": "@users or @groups (replaces the list)",
    "approvers": "@users or @groups (replaces the list)",
    "max-runs-per-day": "a number, or off",
    "max-concurrent": "a number, or off",
    "when-busy": "queue | skip",
    "max-tokens": "a number of tokens per run, or off",
    "network": "trusted | none | full (admins only) | hosts and *.domain patterns",
    "engine": "builtin | claude-code",
    "repo-config": "untrusted | trusted (Claude Code may run the repository's hooks and "
                   "MCP servers; audited)",
}
_LIMITS = {"max-runs-per-day": (1, 10_000), "max-concurrent": (1, 100),
           "max-tokens": (1_000, 100_000_000)}


def parse_changes(words: list[str]) -> dict[str, object]:
    """`key=value` words into column values; every bad word is reported, nothing applied.

    Lists (`owners=@a,@b` or `owners=@a @b`) may span words: a word without `=` continues
    the previous key's value."""
    pairs: list[tuple[str, str]] = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq:
            pairs.append((key.strip().lower(), value))
        elif pairs:
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]} {word}")
        else:
            raise ValidationFailed({word: "expected key=value"})
    if not pairs:
        raise ValidationFailed({"set": "say what to change: " + ", ".join(SETTABLE)})
    changes: dict[str, object] = {}
    errors: dict[str, str] = {}
    for key, value in pairs:
        try:
            changes.update(_change(key, value.strip()))
        except ValueError as exc:
            errors[key] = str(exc)
    if errors:
        raise ValidationFailed(errors)
    return changes


def _change(key: str, value: str) -> dict[str, object]:
    if key == "risk":
        if value.lower() not in {r.value for r in RiskLevel}:
            raise ValueError("use low, medium or high")
        return {"risk": RiskLevel(value.lower())}
    if key in {"owners", "approvers"}:
        principals = roles.parse_principals(value)
        if key == "owners" and not principals:
            raise ValueError("a routine needs at least one owner")
        return {key: roles.join(principals)}
    if key in _PARSED_ALONE:
        return _PARSED_ALONE[key](value)
    if key in _LIMITS:
        column = {"max-runs-per-day": "max_runs_per_day", "max-concurrent": "max_concurrent",
                  "max-tokens": "max_tokens_per_run"}[key]
        if value.lower() in {"off", "none", ""}:
            return {column: None}
        low, high = _LIMITS[key]
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f"use a whole number from {low} to {high}, or off")
        return {column: int(value)}
    raise ValueError(f"unknown setting; you can set {', '.join(SETTABLE)}")


def _network_change(value: str) -> dict[str, object]:
    try:
        return network_columns(parse_network(value))
    except PolicyError as exc:
        raise ValueError(f"use trusted, none, full (admins only) or hosts and *.domain "
                         f"patterns: {exc}") from None


def _busy_change(value: str) -> dict[str, object]:
    if value.lower() not in {p.value for p in BusyPolicy}:
        raise ValueError("use queue or skip")
    return {"busy_policy": BusyPolicy(value.lower())}


def _engine_change(value: str) -> dict[str, object]:
    if value.lower() not in ENGINES:
        raise ValueError(f"use {' or '.join(ENGINES)}")
    return {"engine": Engine(value.lower())}


def _repo_config_change(value: str) -> dict[str, object]:
    if value.lower() not in REPO_CONFIGS:
        raise ValueError(f"use {' or '.join(REPO_CONFIGS)}")
    return {"repo_config": RepoConfig(value.lower())}


_PARSED_ALONE: dict[str, Callable[[str], dict[str, object]]] = {
    "when-busy": _busy_change, "network": _network_change, "engine": _engine_change,
    "repo-config": _repo_config_change}
