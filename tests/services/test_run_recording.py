"""A run's events while the database is locked (a real SQLite file, `BEGIN IMMEDIATE` held
by another connection): held, not lost, and written in order once the lock is gone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits
from bot.core.trigger import manual
from bot.errors import DatabaseProblem, DatabaseUnavailable
from bot.execution.recording import RunRecorder
from bot.services import ServicePolicy, Services
from bot.store import schema
from bot.store.database import Database


def test_events_are_held_while_locked_then_written_in_order(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    db = Database(f"sqlite:///{path}")
    schema.upgrade(db)
    services = Services(db, ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5),
                        Redactor(()))
    services.routines.create(RoutineDraft(name="held", prompt="p", repo_url="file:///r",
                                          channel_id="C0123ABC"), "U1")
    run_id = services.triggers.trigger("held", manual("U1")).view.run.id
    assert run_id is not None
    recorder = RunRecorder(services.runs, run_id)
    recorder.event(1, {"type": "text", "text": "before"})

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        recorder.started("container-1")
        recorder.event(2, {"type": "text", "text": "during"})
        assert recorder.held == 2  # the container id and one event, kept in memory
        with pytest.raises(DatabaseUnavailable) as refused:
            recorder.flush()
        assert refused.value.problem is DatabaseProblem.LOCKED
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    recorder.event(3, {"type": "text", "text": "after"})
    recorder.flush()
    assert recorder.held == 0
    assert [e.get("text") for e in services.runs.events(run_id)] == [
        "before", "during", "after"]
    assert services.runs.get(run_id).run.container_id == "container-1"
    db.close()
