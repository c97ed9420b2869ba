"""API tokens and the API door's rules: a routine's own live token, then a trigger.

The token is checked before the routine's name is even read: a missing, wrong or revoked
token, and a live token of another routine, are all `InvalidToken` whatever the name,
so the API says nothing about which routines exist to anyone but a routine's own token
(which already knows its routine exists). The name is compared with the token's own
routine, never looked up, so a refusal takes the same path for a name that exists and
one that does not. Tokens are found by their SHA-256 (the secret is hashed before any
comparison), so the lookup's timing says nothing about the secret either."""

from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core.roles import Action
from bot.core.routine import NAME_RE
from bot.errors import (
    InvalidToken,
    RunNotFound,
    TokenNotFound,
    ValidationFailed,
)
from bot.services.context import Service, Shared
from bot.services.routines import RoutineService
from bot.services.runs import RunService
from bot.services.triggers import TriggerService
from bot.services.views import (
    RunView,
)
from bot.store import audit, queries
from bot.store.queries import row_id
from bot.store.tables import (
    ApiToken,
    Routine,
    utcnow,
)

SEEN_LIVE_MAX = 10_000


class TokenService(Service):
    def __init__(self, shared: Shared, triggers: TriggerService, routines: RoutineService,
                 runs: RunService) -> None:
        super().__init__(shared)
        self.triggers = triggers
        self.routines = routines
        self.runs = runs
        # Token hash -> its routine's name, for tokens found live: the door's check before
        # it reads a body, without a query. Only a pre-check: every trigger checks its
        # token again in its own transaction, so a token revoked by another process is
        # refused from its next trigger on (and one revoked here at once).
        self._seen_live: dict[str, str] = {}

    def create(self, name: str, token_name: str, actor: str) -> str:
        """A new token for the routine's API door; the value is returned once, never stored."""
        if not NAME_RE.match(token_name):
            raise ValidationFailed({"token": "Name tokens with 2-40 lowercase letters, digits "
                                             "and dashes."})
        value = "rt_" + secrets.token_urlsafe(32)
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            session.add(ApiToken(routine_id=row_id(routine), name=token_name,
                                 token_hash=queries.token_hash(value), created_by=actor))
            try:
                session.flush()
            except IntegrityError:
                raise ValidationFailed({"token": f"Routine `{routine.name}` already has a "
                                                 f"token named `{token_name}`."}) from None
            audit.record(session, actor, "token_created", routine.name, token_name)
        return value

    def of_routine(self, name: str) -> list[ApiToken]:
        with self.db.session() as session:
            routine = self._require(session, name)
            return list(session.exec(select(ApiToken).where(ApiToken.routine_id == routine.id)
                                     .order_by(col(ApiToken.name))).all())

    def revoke(self, name: str, token_name: str, actor: str) -> None:
        with self.db.session() as session:
            routine = self._require(session, name)
            self._check(actor, Action.CHANGE, routine)
            token = session.exec(select(ApiToken).where(
                ApiToken.routine_id == routine.id, ApiToken.name == token_name,
                col(ApiToken.revoked_at).is_(None))).first()
            if token is None:
                raise TokenNotFound(routine.name, token_name)
            token.revoked_at, token.revoked_by = utcnow(), actor
            self._seen_live.pop(token.token_hash, None)
            audit.record(session, actor, "token_revoked", routine.name, token_name)

    def set_paused(self, name: str, bearer: str, paused: bool) -> Routine:
        """Pause or resume through the API, with the authority of the token's creator
        (so a token outlives nobody's role: a former owner's token is refused)."""
        with self.db.session() as session:
            _, token = self._authorized(session, name, bearer)
            creator = token.created_by
        return (self.routines.pause if paused else self.routines.resume)(name, creator)

    def authenticate(self, name: str, bearer: str) -> None:
        """`InvalidToken` unless `bearer` is a live token of routine `name` (see the
        module's docstring); the door asks this before it reads the request's body."""
        with self.db.session() as session:
            routine, token = self._authorized(session, name, bearer)
        if len(self._seen_live) >= SEEN_LIVE_MAX:
            self._seen_live.clear()  # bounded: a flood of tokens only costs queries again
        self._seen_live[token.token_hash] = routine.name

    def seen_live(self, name: str, bearer: str) -> bool:
        """True when `bearer` was lately found a live token of routine `name` (no query):
        the door may then read the body before `trigger` checks the token for good."""
        return bool(bearer) and self._seen_live.get(
            queries.token_hash(bearer)) == name.strip().lower()

    @staticmethod
    def _authorized(session: Session, name: str, bearer: str) -> tuple[Routine, ApiToken]:
        """The token first, then the name, compared with the token's own routine."""
        token = queries.live_token(session, bearer)
        routine = session.get(Routine, token.routine_id)
        if routine is None or routine.name != name.strip().lower():
            raise InvalidToken()
        return routine, token

    def run(self, run_id: int, bearer: str) -> RunView:
        """A run, for a token of its routine; another routine's run is simply not found."""
        with self.db.session() as session:
            token = queries.live_token(session, bearer)
        view = self.runs.get(run_id)
        if view.run.routine_id != token.routine_id:
            raise RunNotFound(run_id)
        return view
