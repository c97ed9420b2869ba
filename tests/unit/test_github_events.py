"""Unit tests of the GitHub trigger's pure core.

Ordinary tests use payloads of the project's own (tests/support/payloads/github/). The
conformance tier (`@pytest.mark.conformance`) reads, signs and matches GitHub's real example
deliveries from the shared fixtures folder (tests/support/github_payloads.py says where).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from typing import Any

import pytest

from bot.core.github import (
    GITHUB_EVENTS,
    EventFilter,
    EventFilterError,
    GitHubEvent,
    matches,
    parse_filter,
    routines_to_fire,
    verify_signature,
)
from tests.support.github_payloads import REAL_NAMES, github_fixtures_dir, own, real

SECRET = "webhook-secret-for-tests"


def payload(name: str) -> Any:
    """One of the project's own payloads (tests/support/payloads/github/NAME.json)."""
    return json.loads(own(name))


def event(name: str) -> GitHubEvent:
    """The delivery as the handler sees it: the event name is the X-GitHub-Event header."""
    return GitHubEvent.from_payload(name.split(".")[0], payload(name))


def real_event(fixture: str) -> GitHubEvent:
    """GitHub's real example delivery, read the same way (conformance tests only)."""
    return GitHubEvent.from_payload(fixture.split(".")[0], json.loads(real(fixture)))


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.conformance
def test_every_fixture_is_covered() -> None:
    assert sorted(p.name.removesuffix(".json") for p in github_fixtures_dir().glob("*.json")) == (
        sorted(REAL_NAMES))


# --- signatures --------------------------------------------------------------------------

def test_githubs_documented_example_signature_verifies() -> None:
    # The worked example in GitHub's "Validating webhook deliveries" documentation.
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify_signature("It's a Secret to Everybody", b"Hello, World!", header)
    assert not verify_signature("It's a Secret to Everybody", b"Hello, World?", header)


@pytest.mark.conformance
@pytest.mark.parametrize("fixture", REAL_NAMES)
def test_a_signed_fixture_body_verifies(fixture: str) -> None:
    body = real(fixture)
    assert verify_signature(SECRET, body, sign(body))
    assert verify_signature(SECRET, body, sign(body).upper().replace("SHA256=", "sha256="))


GOOD = sign(b'{"zen": "x"}')


@pytest.mark.parametrize(("secret", "body", "header"), [
    (SECRET, b'{"zen": "y"}', GOOD),                           # body changed
    (SECRET, b'{"zen": "x"} ', GOOD),                          # one trailing byte
    ("another-secret", b'{"zen": "x"}', GOOD),                 # signed with another secret
    ("", b'{"zen": "x"}', sign(b'{"zen": "x"}', "")),          # empty secret never verifies
    (SECRET, b'{"zen": "x"}', None),                           # header missing
    (SECRET, b'{"zen": "x"}', ""),                             # header empty
    (SECRET, b'{"zen": "x"}', "sha256="),                      # no digest
    (SECRET, b'{"zen": "x"}', GOOD.removeprefix("sha256=")),   # no algorithm prefix
    (SECRET, b'{"zen": "x"}', GOOD.replace("sha256=", "sha1=")),
    (SECRET, b'{"zen": "x"}', GOOD.replace("sha256=", "SHA256=")),
    (SECRET, b'{"zen": "x"}', GOOD[:-1]),                      # truncated digest
    (SECRET, b'{"zen": "x"}', GOOD + "0"),                     # digest too long
    (SECRET, b'{"zen": "x"}', GOOD[:-1] + "g"),                # not hex
    (SECRET, b'{"zen": "x"}', GOOD[:-1] + "é"),                # non-ASCII must not raise
    (SECRET, b'{"zen": "x"}', " " + GOOD),
    (SECRET, b'{"zen": "x"}', GOOD + ",sha256=" + "0" * 64),
])
def test_bad_signatures_are_refused(secret: str, body: bytes, header: str | None) -> None:
    assert verify_signature(secret, body, header) is False


# --- reading payloads --------------------------------------------------------------------

# Values read from the fixture files themselves.
EXPECTED_EVENTS = {
    "check_suite.completed": GitHubEvent(
        "check_suite", "completed", "Codertocat/Hello-World", "Codertocat"),
    "issues.opened": GitHubEvent(
        "issues", "opened", "Codertocat/Hello-World", "Codertocat", labels=("bug",)),
    "ping": GitHubEvent("ping", None, "Octocoders/Hello-World", "Codertocat"),
    "pull_request.closed": GitHubEvent(
        "pull_request", "closed", "Codertocat/Hello-World", "Codertocat", labels=("bug",),
        pr_author="Codertocat", base_branch="master", draft=False),
    "pull_request.opened": GitHubEvent(
        "pull_request", "opened", "Codertocat/Hello-World", "Codertocat", labels=("bug",),
        pr_author="Codertocat", base_branch="master", draft=False),
    "push": GitHubEvent(
        "push", None, "Codertocat/Hello-World", "Codertocat", ref_kind="tag",
        ref_name="simple-tag"),
    "release.published": GitHubEvent(
        "release", "published", "Codertocat/Hello-World", "Codertocat"),
    "workflow_run.completed": GitHubEvent(
        "workflow_run", "completed", "octo-org/octo-repo", "Codertocat"),
}


@pytest.mark.conformance
@pytest.mark.parametrize("fixture", REAL_NAMES)
def test_each_fixture_reads_as_expected(fixture: str) -> None:
    assert real_event(fixture) == EXPECTED_EVENTS[fixture]
    assert real_event(fixture).kind == fixture
    assert real_event(fixture).name in GITHUB_EVENTS


OWN_EVENTS = {
    "issues.opened": GitHubEvent(
        "issues", "opened", "acme-corp/widgets", "lee-support",
        labels=("bug", "good first issue")),
    "ping": GitHubEvent("ping", None, "acme-corp/widgets", "sam-ops"),
    "pull_request.opened": GitHubEvent(
        "pull_request", "opened", "acme-corp/widgets", "mara-dev", labels=("bug", "auth"),
        pr_author="mara-dev", base_branch="main", draft=False),
    "push": GitHubEvent(
        "push", None, "acme-corp/widgets", "mara-dev", ref_kind="branch", ref_name="main"),
    "release.published": GitHubEvent(
        "release", "published", "acme-corp/widgets", "sam-ops"),
}


@pytest.mark.parametrize("name", sorted(OWN_EVENTS))
def test_each_own_payload_reads_as_expected(name: str) -> None:
    assert event(name) == OWN_EVENTS[name]
    assert event(name).kind == name
    assert verify_signature(SECRET, own(name), sign(own(name)))


def test_the_header_event_name_is_normalized() -> None:
    assert GitHubEvent.from_payload(" Pull_Request ", payload("pull_request.opened")).kind == (
        "pull_request.opened")


@pytest.mark.parametrize(("name", "body", "expected"), [
    ("push", {}, GitHubEvent("push")),
    ("push", [], GitHubEvent("push")),
    ("push", None, GitHubEvent("push")),
    ("issues", {"action": 7, "repository": None, "sender": "octocat"}, GitHubEvent("issues")),
    ("issues", {"action": "", "repository": {"full_name": ["x"]}}, GitHubEvent("issues")),
    ("pull_request", {"pull_request": []}, GitHubEvent("pull_request")),
    ("pull_request", {"pull_request": {"labels": None, "user": None, "base": "main",
                                       "draft": "yes"}}, GitHubEvent("pull_request")),
    ("pull_request", {"pull_request": {"labels": [None, {"name": 3}, {}, {"name": "ok"}],
                                       "draft": True}},
     GitHubEvent("pull_request", labels=("ok",), draft=True)),
    ("issues", {"issue": {"labels": "bug"}}, GitHubEvent("issues")),
    ("push", {"ref": 5}, GitHubEvent("push")),
    ("push", {"ref": "refs/heads/"}, GitHubEvent("push")),
    ("push", {"ref": "refs/notes/commits"}, GitHubEvent("push")),
    ("push", {"ref": "main"}, GitHubEvent("push")),
    ("push", {"ref": "refs/heads/release/1.x"},
     GitHubEvent("push", ref_kind="branch", ref_name="release/1.x")),
    ("push", {"ref": "refs/tags/v1.2"}, GitHubEvent("push", ref_kind="tag", ref_name="v1.2")),
    ("create", {"ref": "v1.2", "ref_type": "tag"},
     GitHubEvent("create", ref_kind="tag", ref_name="v1.2")),
    ("delete", {"ref": "feature/x", "ref_type": "branch"},
     GitHubEvent("delete", ref_kind="branch", ref_name="feature/x")),
    ("create", {"ref": "v1", "ref_type": "repository"}, GitHubEvent("create")),
    ("create", {"ref": "v1"}, GitHubEvent("create")),
    # A ref in another event's payload is not a git ref this trigger filters on.
    ("workflow_dispatch", {"ref": "refs/heads/main"}, GitHubEvent("workflow_dispatch")),
])
def test_odd_payloads_never_raise(name: str, body: object, expected: GitHubEvent) -> None:
    assert GitHubEvent.from_payload(name, body) == expected


def test_review_and_comment_events_carry_pr_and_issue_labels() -> None:
    pull = payload("pull_request.opened")
    review = GitHubEvent.from_payload("pull_request_review", {
        "action": "submitted", "pull_request": pull["pull_request"]})
    assert (review.labels, review.pr_author, review.base_branch) == (
        ("bug", "auth"), "mara-dev", "main")
    comment = GitHubEvent.from_payload("issue_comment", {
        "action": "created", "issue": payload("issues.opened")["issue"]})
    assert comment.labels == ("bug", "good first issue") and comment.pr_author is None


# --- parsing filters ---------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected", "canonical"), [
    ("pull_request.opened", EventFilter("pull_request", "opened"), "pull_request.opened"),
    ("  PULL_REQUEST.Opened   DRAFT=False ", EventFilter("pull_request", "opened", draft=False),
     "pull_request.opened draft=false"),
    ("push branch=release/* repo=Codertocat/Hello-World",
     EventFilter("push", repository="Codertocat/Hello-World", branch="release/*"),
     "push repo=Codertocat/Hello-World branch=release/*"),
    ("push tag=v[0-9]*", EventFilter("push", tag="v[0-9]*"), "push tag=v[0-9]*"),
    ("delete branch=feature/*", EventFilter("delete", branch="feature/*"),
     "delete branch=feature/*"),
    ('issues.labeled label="good first issue"',
     EventFilter("issues", "labeled", label="good first issue"),
     "issues.labeled label='good first issue'"),
    ("issue_comment label=won\\'t-fix", EventFilter("issue_comment", label="won't-fix"),
     "issue_comment label='won'\"'\"'t-fix'"),
    ("pull_request draft=true base=main author=dependabot[bot] label=deps",
     EventFilter("pull_request", label="deps", author="dependabot[bot]", base="main",
                 draft=True),
     "pull_request label=deps author=dependabot[bot] base=main draft=true"),
    ("pull_request_review.submitted author=octocat",
     EventFilter("pull_request_review", "submitted", author="octocat"),
     "pull_request_review.submitted author=octocat"),
    ("repository_dispatch.deploy-prod", EventFilter("repository_dispatch", "deploy-prod"),
     "repository_dispatch.deploy-prod"),
    ("workflow_run.completed repo=octo-org/octo-repo",
     EventFilter("workflow_run", "completed", repository="octo-org/octo-repo"),
     "workflow_run.completed repo=octo-org/octo-repo"),
])
def test_filters_parse_and_describe_round_trips(
    spec: str, expected: EventFilter, canonical: str,
) -> None:
    assert parse_filter(spec) == expected
    assert expected.describe() == canonical
    assert parse_filter(canonical) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("", r"Say which GitHub event to listen for"),
    ("   ", r"Say which GitHub event to listen for"),
    ('issues label="good first', r"unbalanced quotes"),
    ("pull_requests.opened", r"`pull_requests` is not a GitHub event I know\. Use one of: "
                             r"check_run, .*pull_request, "),
    ("pull_request.opened.now", r"`pull_request.opened.now` is not an event"),
    ("pull_request.", r"is not an event: start with `event` or `event.action`"),
    ("repo=org/app", r"`repo=org/app` is not an event"),
    ("ping", r"`ping` is GitHub's test delivery .* never starts a routine"),
    ("push.opened", r"`push` events have no action: drop `.opened`"),
    ("pull_request foo=bar", r"Unknown filter `foo`\. Use one of: repo, branch, tag, label, "
                             r"author, base, draft\."),
    ("pull_request label", r"`label` is not a filter: use key=value"),
    ("pull_request =bug", r"`=bug` is not a filter: use key=value"),
    ("pull_request label=", r"`label=` needs a value"),
    ("pull_request label=a LABEL=b", r"`label=` is given twice"),
    ("pull_request draft=maybe", r"Use `draft=true` or `draft=false`, not `draft=maybe`"),
    ("pull_request draft=", r"`draft=` needs a value"),
    ("push repo=hello-world", r"`repo=hello-world` is not a repository: use owner/name"),
    ("push repo=a/b/c", r"is not a repository"),
    ("pull_request branch=main", r"`branch=` only applies to push, create and delete events, "
                                 r"not `pull_request` \(for a pull request's target branch "
                                 r"use `base=`\)"),
    ("release.published tag=v*", r"`tag=` only applies to push, create and delete events, "
                                 r"not `release`\.$"),
    ("workflow_run branch=main", r"not `workflow_run`"),
    ("push branch=main tag=v*", r"use `branch=` or `tag=`, not both"),
    ("push author=octocat", r"`author=` only applies to pull request events"),
    ("issues.opened base=main", r"`base=` only applies to pull request events"),
    ("issues draft=false", r"`draft=` only applies to pull request events"),
    ("push label=bug", r"`label=` only applies to pull request and issue events, not `push`"),
])
def test_bad_filters_say_what_to_type(spec: str, message: str) -> None:
    with pytest.raises(EventFilterError, match=message) as refused:
        parse_filter(spec)
    assert isinstance(refused.value, ValueError)


# --- matching ----------------------------------------------------------------------------

def push_to(ref: str) -> GitHubEvent:
    """The project's push payload with another ref."""
    return GitHubEvent.from_payload("push", {**payload("push"), "ref": ref})


@pytest.mark.parametrize(("spec", "fixture", "fires"), [
    ("pull_request", "pull_request.opened", True),
    ("pull_request", "pull_request.closed", True),
    ("pull_request.opened", "pull_request.opened", True),
    ("pull_request.opened", "pull_request.closed", False),
    ("pull_request.OPENED", "pull_request.opened", True),
    ("issues", "pull_request.opened", False),
    ("pull_request repo=codertocat/hello-world", "pull_request.opened", True),
    ("pull_request repo=Codertocat/Hello-World-2", "pull_request.opened", False),
    ("pull_request repo=octo-org/octo-repo", "pull_request.opened", False),
    ("pull_request label=bug", "pull_request.opened", True),
    ("pull_request label=BUG", "pull_request.opened", True),
    ("pull_request label=bu", "pull_request.opened", False),
    ("pull_request label=enhancement", "pull_request.opened", False),
    ("pull_request author=codertocat", "pull_request.opened", True),
    # octocat is only the requested reviewer in that payload, not the author.
    ("pull_request author=octocat", "pull_request.opened", False),
    ("pull_request base=master", "pull_request.opened", True),
    ("pull_request base=mas*", "pull_request.opened", True),
    ("pull_request base=main", "pull_request.opened", False),
    ("pull_request base=MASTER", "pull_request.opened", False),
    ("pull_request draft=false", "pull_request.opened", True),
    ("pull_request draft=true", "pull_request.opened", False),
    ("pull_request.opened repo=Codertocat/Hello-World label=bug author=Codertocat "
     "base=master draft=false", "pull_request.opened", True),
    ("pull_request.opened repo=Codertocat/Hello-World label=bug author=Codertocat "
     "base=master draft=true", "pull_request.opened", False),
    ("issues.opened label=bug", "issues.opened", True),
    ("issues.opened label=wontfix", "issues.opened", False),
    ("issues.closed", "issues.opened", False),
    ("push", "push", True),
    ("push tag=simple-*", "push", True),
    ("push tag=*", "push", True),
    ("push tag=v*", "push", False),
    ("push branch=*", "push", False),
    ("push branch=simple-tag", "push", False),
    ("push repo=CODERTOCAT/HELLO-WORLD tag=simple-tag", "push", True),
    ("release.published repo=Codertocat/Hello-World", "release.published", True),
    ("release.created", "release.published", False),
    ("workflow_run.completed repo=octo-org/octo-repo", "workflow_run.completed", True),
    ("check_suite.completed", "check_suite.completed", True),
    ("check_run.completed", "check_suite.completed", False),
])
@pytest.mark.conformance
def test_filters_against_real_payloads(spec: str, fixture: str, fires: bool) -> None:
    assert matches(parse_filter(spec), real_event(fixture)) is fires


@pytest.mark.parametrize(("spec", "name", "fires"), [
    ("pull_request", "pull_request.opened", True),
    ("pull_request.opened", "pull_request.opened", True),
    ("pull_request.closed", "pull_request.opened", False),
    ("issues", "pull_request.opened", False),
    ("pull_request repo=ACME-CORP/Widgets", "pull_request.opened", True),
    ("pull_request repo=acme-corp/widgets-2", "pull_request.opened", False),
    ("pull_request label=AUTH", "pull_request.opened", True),
    ("pull_request label=au", "pull_request.opened", False),
    ("pull_request author=Mara-Dev", "pull_request.opened", True),
    # sam-ops is only the requested reviewer, not the author.
    ("pull_request author=sam-ops", "pull_request.opened", False),
    ("pull_request base=main", "pull_request.opened", True),
    ("pull_request base=ma*", "pull_request.opened", True),
    ("pull_request base=MAIN", "pull_request.opened", False),
    ("pull_request draft=false", "pull_request.opened", True),
    ("pull_request draft=true", "pull_request.opened", False),
    ("pull_request.opened repo=acme-corp/widgets label=bug author=mara-dev base=main "
     "draft=false", "pull_request.opened", True),
    ('issues.opened label="good first issue"', "issues.opened", True),
    ("issues.opened label=wontfix", "issues.opened", False),
    ("push branch=main", "push", True),
    ("push branch=release/*", "push", False),
    ("push tag=*", "push", False),
    ("push repo=acme-corp/widgets", "push", True),
    ("release.published repo=acme-corp/widgets", "release.published", True),
    ("release.created", "release.published", False),
])
def test_filters_against_own_payloads(spec: str, name: str, fires: bool) -> None:
    assert matches(parse_filter(spec), event(name)) is fires


@pytest.mark.parametrize(("spec", "ref", "fires"), [
    ("push branch=main", "refs/heads/main", True),
    ("push branch=main", "refs/heads/main-2", False),
    ("push branch=Main", "refs/heads/main", False),
    ("push branch=release/*", "refs/heads/release/1.2", True),
    ("push branch=release/*", "refs/heads/release/1.x/hotfix", True),
    ("push branch=release/*", "refs/heads/releases/1.2", False),
    ("push branch=release-?", "refs/heads/release-2", True),
    ("push branch=*", "refs/tags/v1.2", False),
    ("push tag=*", "refs/heads/main", False),
    ("push tag=v1.*", "refs/tags/v1.2", True),
    ("push tag=v[0-9]*", "refs/tags/v1.2", True),
    ("push tag=v[0-9]*", "refs/tags/vx", False),
    ("push branch=v1.2", "refs/tags/v1.2", False),
    ("push tag=main", "refs/heads/main", False),
    ("push branch=*", "refs/notes/commits", False),
    ("push", "refs/notes/commits", True),
])
def test_branch_and_tag_globs_never_cross(spec: str, ref: str, fires: bool) -> None:
    assert matches(parse_filter(spec), push_to(ref)) is fires


@pytest.mark.parametrize(("spec", "name", "body", "fires"), [
    ("create tag=v*", "create", {"ref": "v1.2", "ref_type": "tag"}, True),
    ("create branch=*", "create", {"ref": "v1.2", "ref_type": "tag"}, False),
    ("create branch=feature/*", "create", {"ref": "feature/x", "ref_type": "branch"}, True),
    ("delete branch=feature/*", "delete", {"ref": "feature/x", "ref_type": "branch"}, True),
    ("delete branch=feature/*", "create", {"ref": "feature/x", "ref_type": "branch"}, False),
])
def test_create_and_delete_name_short_refs(
    spec: str, name: str, body: dict[str, str], fires: bool,
) -> None:
    assert matches(parse_filter(spec), GitHubEvent.from_payload(name, body)) is fires


def test_a_draft_pull_request_matches_only_a_draft_filter() -> None:
    draft = replace(event("pull_request.opened"), draft=True)
    assert matches(parse_filter("pull_request draft=true"), draft)
    assert not matches(parse_filter("pull_request draft=false"), draft)
    assert matches(parse_filter("pull_request"), draft)


def test_conditions_the_event_cannot_carry_never_match() -> None:
    # Built directly, bypassing parse_filter's refusals: absence is not a match.
    assert not matches(EventFilter("push", label="bug"), event("push"))
    assert not matches(EventFilter("push", author="mara-dev"), event("push"))
    assert not matches(EventFilter("push", base="*"), event("push"))
    assert not matches(EventFilter("release", draft=False), event("release.published"))
    assert not matches(EventFilter("pull_request", branch="*"), event("pull_request.opened"))


# --- firing routines ---------------------------------------------------------------------

ROUTINE_FILTERS = {
    "review-bot": [parse_filter("pull_request.opened"),
                   parse_filter("pull_request.synchronize")],
    "bug-triage": [parse_filter("issues.opened label=bug"),
                   parse_filter("pull_request label=bug")],
    "release-notes": [parse_filter("release.published repo=codertocat/hello-world"),
                      parse_filter("push tag=v*")],
    "tag-cleanup": [parse_filter("push tag=simple-*")],
    "dependabot": [parse_filter("pull_request author=dependabot[bot]")],
    "ci-watch": [parse_filter("workflow_run.completed"), parse_filter("check_suite.completed")],
    "idle": [],
    "everything-here": [EventFilter(event) for event in sorted(GITHUB_EVENTS)],
}


@pytest.mark.parametrize(("fixture", "fired"), [
    ("pull_request.opened", ["bug-triage", "everything-here", "review-bot"]),
    ("pull_request.closed", ["bug-triage", "everything-here"]),
    ("issues.opened", ["bug-triage", "everything-here"]),
    ("release.published", ["everything-here", "release-notes"]),
    ("push", ["everything-here", "tag-cleanup"]),
    ("workflow_run.completed", ["ci-watch", "everything-here"]),
    ("check_suite.completed", ["ci-watch", "everything-here"]),
    ("ping", []),
])
@pytest.mark.conformance
def test_one_delivery_fires_every_matching_routine_sorted(
    fixture: str, fired: list[str],
) -> None:
    assert routines_to_fire(ROUTINE_FILTERS, real_event(fixture)) == fired


@pytest.mark.parametrize(("name", "fired"), [
    ("pull_request.opened", ["bug-triage", "everything-here", "review-bot"]),
    ("issues.opened", ["bug-triage", "everything-here"]),
    ("release.published", ["everything-here"]),
    ("push", ["everything-here"]),
    ("ping", []),
])
def test_one_own_delivery_fires_every_matching_routine_sorted(
    name: str, fired: list[str],
) -> None:
    assert routines_to_fire(ROUTINE_FILTERS, event(name)) == fired


def test_ping_never_fires_even_for_a_filter_that_names_it() -> None:
    filters = {"pinged": [EventFilter("ping")], "anything": [EventFilter("ping", None)]}
    assert matches(EventFilter("ping"), event("ping"))
    assert routines_to_fire(filters, event("ping")) == []


def test_a_routine_fires_once_however_many_of_its_filters_match() -> None:
    filters = {"twice": [parse_filter("pull_request"), parse_filter("pull_request.opened")]}
    assert routines_to_fire(filters, event("pull_request.opened")) == ["twice"]
