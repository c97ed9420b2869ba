"""A SQLite database takes one bot process: the lock beside it (bot.store.one_process)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.errors import DatabaseInUse
from bot.store.one_process import OneProcess, lock_path


def test_a_second_claim_is_refused_naming_the_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'routines.db'}"
    first, second = OneProcess(url), OneProcess(url)
    first.claim()
    with pytest.raises(DatabaseInUse) as refused:
        second.claim()
    assert refused.value.holder == str(os.getpid())
    assert str(refused.value) == (
        f"process {os.getpid()} already serves the SQLite database {tmp_path / 'routines.db'}"
        ": a SQLite database takes one bot process; stop that one, or use PostgreSQL "
        "(DATABASE_URL) to run several")
    first.release()
    second.claim()  # free again once released
    second.release()


def test_postgresql_and_memory_databases_take_no_lock(tmp_path: Path) -> None:
    assert lock_path("postgresql+psycopg://u:p@127.0.0.1/routines") is None
    assert lock_path("sqlite://") is None
    assert lock_path("sqlite:///:memory:") is None
    both = [OneProcess("postgresql+psycopg://u:p@127.0.0.1/routines") for _ in range(2)]
    for one in both:
        one.claim()  # several processes share PostgreSQL
    assert lock_path(f"sqlite:///{tmp_path}/x.db") == tmp_path / "x.db.serve-lock"
