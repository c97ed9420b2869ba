"""What a valid routine is. Pure functions: no I/O, so every rule is easy to test."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class RoutineLimits:
    min_timeout: int
    max_timeout: int
    allow_local_repos: bool


def normalized(draft: RoutineDraft) -> RoutineDraft:
    """Trim what users paste with stray spaces; the prompt and script keep their layout."""
    return replace(draft, name=draft.name.strip().lower(), repo_url=draft.repo_url.strip(),
                   channel_id=draft.channel_id.strip(), branch=draft.branch.strip() or "main",
                   model=draft.model.strip(), timeout_seconds=str(draft.timeout_seconds).strip())


def validate(draft: RoutineDraft, limits: RoutineLimits) -> dict[str, str]:
    """Every problem with the draft, by field name; empty when it is acceptable."""
    errors: dict[str, str] = {}
    if not NAME_RE.match(draft.name):
        errors["name"] = (
            "Use 2-40 characters: lowercase letters, digits and dashes, starting with a letter."
        )
    if not draft.prompt.strip():
        errors["prompt"] = "Say what the agent should do."
    elif len(draft.prompt) > MAX_PROMPT:
        errors["prompt"] = f"Keep the prompt under {MAX_PROMPT} characters."
    repo_error = _repo_url_error(draft.repo_url, limits.allow_local_repos)
    if repo_error:
        errors["repo_url"] = repo_error
    if not valid_branch(draft.branch):
        errors["branch"] = "Not a valid branch name."
    if len(draft.setup_script) > MAX_SETUP:
        errors["setup_script"] = f"Keep the setup script under {MAX_SETUP} characters."
    if not CHANNEL_RE.match(draft.channel_id):
        errors["channel_id"] = "Pick a channel for the results."
    if draft.model and not MODEL_RE.match(draft.model):
        errors["model"] = "Not a model id (for example claude-sonnet-4-5)."
    timeout_error = _timeout_error(draft.timeout_seconds, limits)
    if timeout_error:
        errors["timeout_seconds"] = timeout_error
    return errors


def valid_branch(branch: str) -> bool:
    """A conservative subset of git's ref-name rules (no option-like or traversal names)."""
    return bool(
        re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", branch)
        and not branch.startswith(("-", "/", "."))
        and not branch.endswith(("/", ".lock", "."))
        and ".." not in branch
        and "//" not in branch
    )


def _repo_url_error(url: str, allow_local: bool) -> str | None:
    if REMOTE_URL_RE.match(url):
        return None
    if LOCAL_URL_RE.match(url):
        return None if allow_local else "Local repositories are disabled on this bot."
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
