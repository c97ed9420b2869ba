"""Who may do what. Pure: the service asks, adapters only render the refusal.

Three roles: admins (the deployment's, from settings), a routine's owners (its creator
by default) and its approvers. A role is granted to Slack user ids or to a user group,
written `subteam:S0123`; group membership is looked up through a `Directory` the
service is given, so this module never talks to Slack.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from bot.errors import Forbidden, MayAct

Directory = Callable[[str], frozenset[str]]  # user group id -> its members' user ids

GROUP_PREFIX = "subteam:"
# `U123`, `<@U123>`, `<@U123|jo>`, `<!subteam^S123>`, `<!subteam^S123|@team>`, `subteam:S123`
_USER = re.compile(r"^<?@?([UW][A-Z0-9]{2,})(?:\|[^>]*)?>?$")
_GROUP = re.compile(r"^(?:<!subteam\^|subteam:)(S[A-Z0-9]{2,})(?:\|[^>]*)?>?$")


class Action(StrEnum):
    CHANGE = "change"
    PAUSE = "pause"
    RESUME = "resume"
    DELETE = "delete"
    CANCEL = "cancel"
    APPROVE = "approve"
    ENGAGE = "engage the kill switch"
    DISENGAGE = "disengage the kill switch"
    RAISE_CAP = "change the daily spend cap"
    FULL_NETWORK = "give a routine full network access"


OWNER_ACTIONS = {Action.CHANGE, Action.PAUSE, Action.RESUME, Action.DELETE, Action.CANCEL}


def parse_principals(text: str) -> tuple[str, ...]:
    """Read a list of users and groups as typed in Slack (mentions or ids), in order,
    without duplicates. Raises ValueError naming what it cannot read."""
    found: list[str] = []
    for word in re.split(r"[\s,]+", text.strip()):
        if not word:
            continue
        group, user = _GROUP.match(word), _USER.match(word)
        if group:
            principal = GROUP_PREFIX + group.group(1)
        elif user:
            principal = user.group(1)
        else:
            raise ValueError(f"`{word}` is not a Slack user or user group "
                             "(mention them: @someone, @team)")
        if principal not in found:
            found.append(principal)
    return tuple(found)


def format_principals(principals: Iterable[str]) -> str:
    """Slack mentions, for messages: `<@U1>, <!subteam^S1>`."""
    shown = [f"<!subteam^{p.removeprefix(GROUP_PREFIX)}>" if p.startswith(GROUP_PREFIX)
             else f"<@{p}>" for p in principals]
    return ", ".join(shown) or "nobody"


def split(stored: str) -> tuple[str, ...]:
    return tuple(p for p in stored.split(",") if p)


def join(principals: Iterable[str]) -> str:
    return ",".join(principals)


@dataclass(frozen=True)
class RoutineRoles:
    """The roles of one routine, as stored on it."""

    name: str
    owners: tuple[str, ...]
    approvers: tuple[str, ...]


@dataclass(frozen=True)
class Roles:
    """The deployment's admins and a way to expand user groups."""

    admins: tuple[str, ...]
    directory: Directory

    def holds(self, user: str, principals: Iterable[str]) -> bool:
        for principal in principals:
            if principal == user:
                return True
            if principal.startswith(GROUP_PREFIX) and user in self.directory(
                    principal.removeprefix(GROUP_PREFIX)):
                return True
        return False

    def is_admin(self, user: str) -> bool:
        return self.holds(user, self.admins)

    def check(self, user: str, action: Action, routine: RoutineRoles | None = None,
              requester: str | None = None, is_approver_anywhere: bool = False) -> None:
        """Raise `Forbidden`, saying who may, unless `user` may do `action`."""
        if self.is_admin(user):
            if action is Action.APPROVE and user == requester:
                raise Forbidden(action.value, MayAct.SOMEONE_ELSE, _approvers(routine),
                                _name(routine))
            return
        if action in OWNER_ACTIONS:
            assert routine is not None
            if self.holds(user, routine.owners):
                return
            if action is Action.CANCEL and user == requester:
                return  # whoever started a run may stop it
            raise Forbidden(action.value, MayAct.OWNERS, routine.owners, routine.name)
        if action is Action.APPROVE:
            assert routine is not None
            if user == requester:
                raise Forbidden(action.value, MayAct.SOMEONE_ELSE, routine.approvers,
                                routine.name)
            if self.holds(user, routine.approvers):
                return
            raise Forbidden(action.value, MayAct.APPROVERS, routine.approvers, routine.name)
        if action is Action.ENGAGE and is_approver_anywhere:
            return
        may = MayAct.ADMINS_OR_APPROVERS if action is Action.ENGAGE else MayAct.ADMINS
        raise Forbidden(action.value, may, self.admins)


def _approvers(routine: RoutineRoles | None) -> tuple[str, ...]:
    return routine.approvers if routine else ()


def _name(routine: RoutineRoles | None) -> str | None:
    return routine.name if routine else None
