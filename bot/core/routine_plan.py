"""`routines apply`'s plan: what applying the files changes, routine by routine and
field by field, and how the CLI prints it. Pure, like the files' reading
(`bot.core.routine_file`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

from bot.core.routine_file import FIELD_KEYS, RoutineSpec


@dataclass(frozen=True)
class FieldChange:
    key: str  # the YAML key
    old: object
    new: object


def differences(current: RoutineSpec, desired: RoutineSpec) -> list[FieldChange]:
    """What applying `desired` changes on `current`, field by field, in the format's order."""
    return [FieldChange(FIELD_KEYS[f.name], getattr(current, f.name), getattr(desired, f.name))
            for f in fields(RoutineSpec)
            if f.name in FIELD_KEYS and getattr(current, f.name) != getattr(desired, f.name)]


class PlanOutcome(StrEnum):
    """What applying the files does to one routine."""

    CREATED = "created"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    DELETED = "deleted"  # not in the files, and `--prune` asked
    KEPT = "kept"  # not in the files: left as it is


@dataclass(frozen=True)
class PlannedRoutine:
    name: str
    outcome: PlanOutcome
    source: str = ""  # the file that wants it ("" for one not in the files)
    changes: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The diff between the files and the database, routine by routine, in name order."""

    routines: tuple[PlannedRoutine, ...]
    applied: bool  # False: a dry run, nothing was written

    @property
    def changed(self) -> bool:
        return any(r.outcome not in {PlanOutcome.UNCHANGED, PlanOutcome.KEPT}
                   for r in self.routines)

    def lines(self) -> list[str]:
        """The diff as the CLI prints it: one line per routine, one per changed field."""
        out: list[str] = []
        for item in self.routines:
            where = f" ({item.source})" if item.source else ""
            if item.outcome is PlanOutcome.KEPT:
                out.append(f"{item.name}: not in the files, kept (--prune deletes it)")
                continue
            out.append(f"{item.name}: {item.outcome.value}{where}")
            out.extend(f"  {c.key}: {shown(c.old)} -> {shown(c.new)}" for c in item.changes)
        return out


def shown(value: object, width: int = 60) -> str:
    """A value on one line of a diff: lists comma-separated, long text cut."""
    if value is None or value == "" or value == ():
        return "(none)"
    if isinstance(value, tuple):
        value = ", ".join(str(v) for v in value)
    text = str(value.value if isinstance(value, StrEnum) else value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
