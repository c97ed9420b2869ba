"""The services over the database alone, for the commands that need no Slack or Docker."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from bot.core.redaction import Redactor
from bot.services import ServicePolicy, Services
from bot.settings import Settings
from bot.store import schema
from bot.store.database import Database


@contextmanager
def services(env: Mapping[str, str]) -> Iterator[Services]:
    """The same policy as `serve` (admins, limits, repository hosts), from the same settings,
    over a database at the newest migration (`routines db upgrade` brings it there)."""
    settings = Settings.from_env(env, serving=False)
    db = Database(settings.database_url)
    try:
        schema.require_head(db)
        yield Services(db, ServicePolicy.from_settings(settings), Redactor(settings.secrets))
    finally:
        db.close()
