"""The Claude models the installed `anthropic` SDK knows (its `Model` type), newest first.

The create form offers them; a model the SDK does not know stays allowed (models appear
before SDK upgrades) and the confirmation says so, so a typo does not go unnoticed."""

from __future__ import annotations

import typing
from functools import cache

from anthropic.types import Model


@cache
def known_models() -> tuple[str, ...]:
    names: list[str] = []
    for part in typing.get_args(Model):
        names.extend(arg for arg in typing.get_args(part) if isinstance(arg, str))
    return tuple(names)


def is_known(model: str) -> bool:
    return model in known_models()


def current_models(limit: int = 6) -> tuple[str, ...]:
    """The latest aliases of each family (no dated snapshots, no previews), as the SDK
    lists them: newest first."""
    aliases = [m for m in known_models() if not m[-8:].isdigit() and "preview" not in m]
    return tuple(aliases[:limit])
