"""SQLite serves one bot process: a second `routines serve` on the same file is refused.

Two bots on one SQLite file would both reconcile, schedule, announce and count the limits
in memory (README "Scale-out"); PostgreSQL is where several processes share a database.
The guard is an exclusive `flock` on a file beside the database, taken before anything
else at start and dropped by the kernel when the process ends however it ends (SIGKILL
included), so a crashed bot never leaves a stale lock behind. The file holds the
holder's pid, for the refusal's one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from bot.errors import DatabaseInUse


def lock_path(database_url: str) -> Path | None:
    """The lock file of a SQLite database file; None for PostgreSQL or an in-memory one."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).resolve().with_name(Path(url.database).name + ".serve-lock")


class OneProcess:
    """Held from `claim` to `release` by the one process serving a SQLite database."""

    def __init__(self, database_url: str) -> None:
        self.path = lock_path(database_url)
        self._file: IO[str] | None = None

    def claim(self) -> None:
        """Take the lock, or raise `DatabaseInUse` naming the process that holds it."""
        if self.path is None or self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        held = self.path.open("a+")
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.seek(0)
            holder = held.read().strip()
            held.close()
            raise DatabaseInUse(str(self.path.with_suffix("")), holder) from None
        held.seek(0)
        held.truncate()
        held.write(f"{os.getpid()}\n")
        held.flush()
        self._file = held

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
