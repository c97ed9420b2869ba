"""The publish gate's branch safety, pure: a refspec may only send a commit to a bot-owned
branch (refs/heads/routines/...), never forced, never a tag, a deletion, a pattern or the
default branch."""

from __future__ import annotations

import pytest

from runner.host.publish import PublishRefused, branch_ref, check_refspec

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("refspec", "why"), [
    (f"+{SHA}:refs/heads/routines/nightly/1", "forced"),
    (":refs/heads/routines/nightly/1", "deleting"),
    (f"{SHA}:refs/tags/v1.0", "tags"),
    (f"{SHA}:refs/tags/routines/nightly/1", "tags"),
    (f"{SHA}:refs/heads/main", "only branches under"),
    (f"{SHA}:refs/heads/master", "only branches under"),
    (f"{SHA}:refs/heads/release", "only branches under"),
    (f"{SHA}:main", "only branches under"),
    (f"{SHA}:refs/heads/routines/", "only branches under"),
    (f"{SHA}:refs/remotes/origin/routines/x", "only branches under"),
    (f"{SHA}:refs/heads/routines/main", "default branch"),
    (f"{SHA}:refs/heads/routines/nightly/master", "default branch"),
    (f"{SHA}:refs/heads/routines/HEAD", "default branch"),
    (f"{SHA}:refs/heads/routines/../main", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/a..b", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/x.lock", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/.hidden/1", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/a b", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/x@{{1}}", "not a valid ref"),
    (f"{SHA}:refs/heads/routines//x", "not a valid ref"),
    (f"{SHA}:refs/heads/routines/x/", "not a valid ref"),
    ("refs/heads/*:refs/heads/routines/*", "patterns"),
    ("refs/heads/routines/nightly/1", "SOURCE:DESTINATION"),
    (f"{SHA}:refs/heads/routines/x:refs/heads/main", "SOURCE:DESTINATION"),
])
def test_unsafe_refspecs_are_refused(refspec: str, why: str) -> None:
    with pytest.raises(PublishRefused, match=why):
        check_refspec(refspec)


def test_the_default_branch_is_refused_even_under_the_prefix() -> None:
    with pytest.raises(PublishRefused, match="default branch"):
        check_refspec(f"{SHA}:refs/heads/routines/trunk", default_branch="routines/trunk")


@pytest.mark.parametrize("refspec", [
    f"{SHA}:refs/heads/routines/nightly/1",
    f"{SHA}:refs/heads/routines/deps-check/42",
    "refs/routines/kept:refs/heads/routines/a/b/c",
])
def test_bot_owned_branches_are_allowed(refspec: str) -> None:
    assert check_refspec(refspec, default_branch="main") == refspec.split(":")[1]


def test_branch_ref_names_the_routine_and_the_run() -> None:
    assert branch_ref("deps-check", 42) == "refs/heads/routines/deps-check/42"
    assert check_refspec(f"{SHA}:{branch_ref('deps-check', 42)}")
