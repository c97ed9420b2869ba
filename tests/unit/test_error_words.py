"""Errors carry facts; each door says them in its style: plain for the API, the CLI and the
logs, mrkdwn with mentions and `/routine` hints for Slack."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.core import budget
from bot.core.roles import Action, Roles, RoutineRoles
from bot.doors.slack.words import say
from bot.errors import (
    AlreadyDecided,
    Forbidden,
    KillSwitchEngaged,
    MayAct,
    RepoHostRefused,
    RoutineNotFound,
    RoutinePaused,
    RoutinesError,
)
from runner.repo_policy import AddressKind, Reason

CASES: list[tuple[RoutinesError, str, str]] = [
    (RoutineNotFound("nope"), "No routine named nope.",
     "No routine named `nope`. `/routine list` shows the routines."),
    (RoutinePaused("nightly", "U0ALICE01"), "Routine nightly is paused by U0ALICE01.",
     "Routine `nightly` is paused by U0ALICE01; `/routine resume nightly` restores its "
     "triggers."),
    (KillSwitchEngaged("bad deploy", "U0BOB0001"),
     "The kill switch is engaged (by U0BOB0001: bad deploy); no routine runs until an admin "
     "disengages it.",
     "The kill switch is engaged (by <@U0BOB0001>: bad deploy); no routine runs until an "
     "admin disengages it."),
    (Forbidden("pause", MayAct.OWNERS, ("U1", "subteam:S2"), "nightly"),
     "Only its owners (U1, subteam:S2) or an admin may pause nightly.",
     "Only its owners (<@U1>, <!subteam^S2>) or an admin may pause `nightly`."),
    (AlreadyDecided("approved", "U1", datetime(2026, 12, 2, 9, 30, tzinfo=UTC)),
     "Already approved by U1 at 09:30:00 UTC.", "Already approved by <@U1> at 09:30:00 UTC."),
    (RepoHostRefused("git.evil.example", Reason.NOT_ALLOWED),
     "Repository refused: git.evil.example is not one of the allowed repository hosts "
     "(ROUTINES_REPO_HOSTS).",
     "Repository refused: `git.evil.example` is not one of the allowed repository hosts "
     "(`ROUTINES_REPO_HOSTS`)."),
    (RepoHostRefused("github.com", Reason.PRIVATE_ADDRESS, "169.254.169.254",
                     AddressKind.METADATA),
     "Repository refused: github.com resolves to 169.254.169.254, the cloud metadata address.",
     "Repository refused: `github.com` resolves to `169.254.169.254`, the cloud metadata "
     "address."),
]


@pytest.mark.parametrize(("error", "plain", "slack"), CASES)
def test_each_door_words_the_same_facts(error: RoutinesError, plain: str, slack: str) -> None:
    assert str(error) == plain
    assert say(error) == slack


def test_a_budget_refusal_is_data_and_names_the_way_out_only_where_there_is_one() -> None:
    refusal = budget.Spend(1.11, 1.0).refusal()
    assert refusal is not None and (refusal.spent_usd, refusal.cap_usd) == (1.11, 1.0)
    assert "`/routine budget cap AMOUNT`" in say(refusal)
    assert str(refusal).endswith("until an admin raises it.")


def test_the_role_rule_raises_who_may_as_data() -> None:
    roles = Roles(("U0ADMIN01",), lambda _group: frozenset())
    with pytest.raises(Forbidden) as refused:
        roles.check("U0OTHER01", Action.APPROVE, RoutineRoles("nightly", ("U1",), ("U2",)))
    assert (refused.value.may, refused.value.principals, refused.value.routine) == (
        MayAct.APPROVERS, ("U2",), "nightly")
