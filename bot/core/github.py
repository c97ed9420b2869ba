"""GitHub webhook deliveries: are they genuine, what do they say, which routines they start.

Pure: the HTTP handler reads the raw body and the `X-GitHub-Event` and
`X-Hub-Signature-256` headers, then asks these functions. Nothing here touches the network,
the database or the clock, so every rule is a table-driven test away.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from bot.errors import RoutinesError

SIGNATURE_PREFIX = "sha256="
_HEX_DIGEST_RE = re.compile(r"[0-9a-fA-F]{64}")

# The webhook events a routine may listen for (GitHub's own names, as sent in
# `X-GitHub-Event`). A closed set, so a typo is refused when the routine is saved
# instead of silently never firing.
GITHUB_EVENTS = frozenset({
    "check_run", "check_suite", "create", "delete", "deployment", "deployment_status",
    "discussion", "discussion_comment", "issue_comment", "issues", "merge_group", "ping",
    "pull_request", "pull_request_review", "pull_request_review_comment",
    "pull_request_review_thread", "push", "release", "repository_dispatch", "status",
    "workflow_dispatch", "workflow_job", "workflow_run",
})
# Events whose payload has no `action`: `push.opened` could never match anything.
EVENTS_WITHOUT_ACTION = frozenset({"create", "delete", "ping", "push", "status",
                                   "workflow_dispatch"})
# Events that name a git ref: the only ones a branch or tag glob can apply to.
REF_EVENTS = frozenset({"push", "create", "delete"})
# Events whose payload carries a `pull_request` object (author, base branch, draft).
PULL_REQUEST_EVENTS = frozenset({"pull_request", "pull_request_review",
                                 "pull_request_review_comment", "pull_request_review_thread"})
# Events whose payload carries labels (the pull request's or the issue's).
LABEL_EVENTS = PULL_REQUEST_EVENTS | {"issues", "issue_comment"}

# Filter keys in the order `describe()` writes them; `repo` is the `repository` field.
FILTER_KEYS = ("repo", "branch", "tag", "label", "author", "base", "draft")
_EVENT_WORD_RE = re.compile(r"(?P<event>[A-Za-z_]+)(?:\.(?P<action>[A-Za-z0-9_-]+))?")
_REPO_RE = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_PLAIN_VALUE_RE = re.compile(r"[^\s'\"\\]+")


class EventFilterError(RoutinesError, ValueError):
    """A GitHub event filter a user typed cannot be used; the message says how to fix it."""


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True only when `header` is `sha256=<hex HMAC-SHA256 of body keyed by secret>`.

    An empty secret is refused outright: anyone can compute an HMAC with an empty key, so
    accepting it would let any caller start routines. The digest is compared in constant
    time so a caller cannot learn it byte by byte from response times.
    """
    if not secret or not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    given = header[len(SIGNATURE_PREFIX):]
    if not _HEX_DIGEST_RE.fullmatch(given):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.lower())


@dataclass(frozen=True)
class GitHubEvent:
    """The parts of one webhook delivery that filters look at.

    Fields absent from the payload are None (or an empty tuple): GitHub's payloads differ
    per event and change over time, and an odd delivery must not crash the handler.
    """

    name: str
    action: str | None = None
    repository: str | None = None
    sender: str | None = None
    ref_kind: str | None = None
    ref_name: str | None = None
    labels: tuple[str, ...] = ()
    pr_author: str | None = None
    base_branch: str | None = None
    draft: bool | None = None

    @classmethod
    def from_payload(cls, name: str, payload: object) -> GitHubEvent:
        """Read a decoded webhook body; `name` is the `X-GitHub-Event` header.

        `payload` is whatever `json.loads` returned: anything that is not a JSON object
        counts as an empty one, and fields of the wrong type count as absent.
        """
        body = payload if isinstance(payload, Mapping) else {}
        event = name.strip().lower()
        pull_request = _mapping(body.get("pull_request"))
        issue = _mapping(body.get("issue"))
        ref_kind, ref_name = _ref(event, body)
        draft = pull_request.get("draft")
        return cls(
            name=event,
            action=_text(body.get("action")),
            repository=_text(_mapping(body.get("repository")).get("full_name")),
            sender=_text(_mapping(body.get("sender")).get("login")),
            ref_kind=ref_kind,
            ref_name=ref_name,
            labels=_label_names(pull_request.get("labels", issue.get("labels"))),
            pr_author=_text(_mapping(pull_request.get("user")).get("login")),
            base_branch=_text(_mapping(pull_request.get("base")).get("ref")),
            draft=draft if isinstance(draft, bool) else None,
        )

    @property
    def kind(self) -> str:
        """`pull_request.opened`, or just `push` for events without an action."""
        return f"{self.name}.{self.action}" if self.action else self.name


@dataclass(frozen=True)
class EventFilter:
    """Which deliveries start a routine. Every field that is set must match; None is "any".

    `branch`, `tag` and `base` are shell-style globs (`release/*`; `*` also crosses `/`).
    `repository`, `author` and `label` compare case-insensitively, as GitHub does.
    """

    event: str
    action: str | None = None
    repository: str | None = None
    branch: str | None = None
    tag: str | None = None
    label: str | None = None
    author: str | None = None
    base: str | None = None
    draft: bool | None = None

    def describe(self) -> str:
        """The filter as a spec `parse_filter` reads back to an equal filter."""
        head = f"{self.event}.{self.action}" if self.action else self.event
        draft = None if self.draft is None else str(self.draft).lower()
        values = (self.repository, self.branch, self.tag, self.label, self.author, self.base,
                  draft)
        words = [f"{key}={_quote(value)}" for key, value in zip(FILTER_KEYS, values, strict=True)
                 if value is not None]
        return " ".join([head, *words])


def parse_filter(spec: str) -> EventFilter:
    """Read `event[.action] key=value ...`, e.g. `push branch=release/* repo=org/app`.

    Values with spaces are quoted as in a shell (`label="good first issue"`). Every
    refusal is an `EventFilterError` (a `ValueError`) whose message tells a Slack user
    what to type instead.
    """
    try:
        words = shlex.split(spec)
    except ValueError:
        raise EventFilterError("I could not read that filter (unbalanced quotes?).") from None
    if not words:
        raise EventFilterError("Say which GitHub event to listen for, for example "
                               "`pull_request.opened` or `push branch=main`.")
    event, action = _event_and_action(words[0])
    options = _options(words[1:])
    found = EventFilter(
        event=event, action=action, repository=_repository(options.get("repo")),
        branch=options.get("branch"), tag=options.get("tag"), label=options.get("label"),
        author=options.get("author"), base=options.get("base"),
        draft=_draft(options.get("draft")),
    )
    _check_applies(found)
    return found


def matches(filter: EventFilter, event: GitHubEvent) -> bool:
    """Whether the delivery passes every condition the filter sets."""
    return all((
        _same(filter.event, event.name),
        filter.action is None or _same(filter.action, event.action),
        filter.repository is None or _same(filter.repository, event.repository),
        filter.branch is None or _ref_matches("branch", filter.branch, event),
        filter.tag is None or _ref_matches("tag", filter.tag, event),
        filter.label is None or any(_same(filter.label, label) for label in event.labels),
        filter.author is None or _same(filter.author, event.pr_author),
        filter.base is None or _glob(filter.base, event.base_branch),
        filter.draft is None or filter.draft is event.draft,
    ))


def routines_to_fire(
    filters: Mapping[str, Sequence[EventFilter]], event: GitHubEvent,
) -> list[str]:
    """Names of the routines with at least one matching filter, sorted.

    `ping` is GitHub's test delivery when a webhook is set up: it never starts anything,
    whatever a filter says.
    """
    if event.name == "ping":
        return []
    return sorted(name for name, wanted in filters.items()
                  if any(matches(one, event) for one in wanted))


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _label_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    names = (_text(_mapping(label).get("name")) for label in value)
    return tuple(name for name in names if name is not None)


def _ref(event: str, body: Mapping[str, object]) -> tuple[str | None, str | None]:
    """(`branch` or `tag`, short name) of the ref a push, create or delete is about.

    A push names the full ref (`refs/heads/main`); create and delete name the short one
    and say which kind it is in `ref_type`. Other refs (notes, pull heads) are neither.
    """
    ref = _text(body.get("ref"))
    if ref is None or event not in REF_EVENTS:
        return None, None
    if event != "push":
        ref_type = _text(body.get("ref_type"))
        return (ref_type, ref) if ref_type in ("branch", "tag") else (None, None)
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            return kind, ref[len(prefix):]
    return None, None


def _same(wanted: str, actual: str | None) -> bool:
    return actual is not None and wanted.casefold() == actual.casefold()


def _glob(pattern: str, actual: str | None) -> bool:
    # fnmatchcase, not fnmatch: git refs are case-sensitive on every OS.
    return actual is not None and fnmatchcase(actual, pattern)


def _ref_matches(kind: str, pattern: str, event: GitHubEvent) -> bool:
    return event.ref_kind == kind and _glob(pattern, event.ref_name)


def _quote(value: str) -> str:
    return value if _PLAIN_VALUE_RE.fullmatch(value) else shlex.quote(value)


def _event_and_action(word: str) -> tuple[str, str | None]:
    found = _EVENT_WORD_RE.fullmatch(word)
    if found is None:
        raise EventFilterError(f"`{word}` is not an event: start with `event` or "
                               "`event.action`, for example `pull_request.opened`.")
    event = found["event"].lower()
    action = found["action"].lower() if found["action"] else None
    if event not in GITHUB_EVENTS:
        known = ", ".join(sorted(GITHUB_EVENTS - {"ping"}))
        raise EventFilterError(f"`{event}` is not a GitHub event I know. Use one of: {known}.")
    if event == "ping":
        raise EventFilterError("`ping` is GitHub's test delivery when a webhook is set up; "
                               "it never starts a routine.")
    if action is not None and event in EVENTS_WITHOUT_ACTION:
        raise EventFilterError(f"`{event}` events have no action: drop `.{action}`.")
    return event, action


def _options(words: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in words:
        key, equals, value = word.partition("=")
        if not equals or not key:
            raise EventFilterError(f"`{word}` is not a filter: use key=value, "
                                   "for example `branch=main`.")
        key = key.lower()
        if key not in FILTER_KEYS:
            raise EventFilterError(f"Unknown filter `{key}`. Use one of: "
                                   f"{', '.join(FILTER_KEYS)}.")
        if key in options:
            raise EventFilterError(f"`{key}=` is given twice: keep one.")
        if not value:
            raise EventFilterError(f"`{key}=` needs a value.")
        options[key] = value
    return options


def _repository(value: str | None) -> str | None:
    if value is not None and not _REPO_RE.fullmatch(value):
        raise EventFilterError(f"`repo={value}` is not a repository: use owner/name, "
                               "for example `repo=octo-org/octo-repo`.")
    return value


def _draft(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise EventFilterError(f"Use `draft=true` or `draft=false`, not `draft={value}`.")
    return value.lower() == "true"


def _check_applies(found: EventFilter) -> None:
    """Refuse conditions the event can never satisfy, rather than a routine that never runs."""
    event = found.event
    if found.branch is not None and found.tag is not None:
        raise EventFilterError("A ref is a branch or a tag: use `branch=` or `tag=`, not both.")
    for key, value in (("branch", found.branch), ("tag", found.tag)):
        if value is not None and event not in REF_EVENTS:
            hint = " (for a pull request's target branch use `base=`)" if key == "branch" else ""
            raise EventFilterError(f"`{key}=` only applies to push, create and delete events, "
                                   f"not `{event}`{hint}.")
    pull_request_only = {"author": found.author, "base": found.base, "draft": found.draft}
    for key, setting in pull_request_only.items():
        if setting is not None and event not in PULL_REQUEST_EVENTS:
            raise EventFilterError(f"`{key}=` only applies to pull request events "
                                   f"({', '.join(sorted(PULL_REQUEST_EVENTS))}), not `{event}`.")
    if found.label is not None and event not in LABEL_EVENTS:
        raise EventFilterError("`label=` only applies to pull request and issue events, "
                               f"not `{event}`.")
