"""One root error for everything the bot refuses or fails at, each carrying its facts.

An error holds data (names, ids, who, limits), not a finished sentence: `words(style)`
says it in a door's style. `str(error)` is the plain sentence the HTTP API, the CLI and
the logs show; the Slack door passes its own style (`bot.doors.slack.words`), which adds
mrkdwn code spans, mentions and `/routine` hints. Doors catch `RoutinesError`; anything
else is a bug and is logged as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from runner.repo_policy import AddressKind, Reason, Refusal


class Style(Protocol):
    """How a door says the parts of a sentence that differ between doors."""

    def code(self, text: str) -> str:
        """A name or a value the user typed (`nightly`)."""
        ...

    def user(self, user_id: str) -> str:
        """Someone, by their id."""
        ...

    def users(self, principals: Iterable[str]) -> str:
        """People and user groups, comma-separated, or "nobody"."""
        ...

    def command(self, args: str) -> str | None:
        """How to do it from this door (`/routine resume nightly`), or None where there
        is no such command."""
        ...


class PlainStyle:
    """Plain text: for the HTTP API, the CLI and the logs."""

    def code(self, text: str) -> str:
        return text

    def user(self, user_id: str) -> str:
        return user_id

    def users(self, principals: Iterable[str]) -> str:
        return ", ".join(principals) or "nobody"

    def command(self, args: str) -> str | None:
        return None


PLAIN = PlainStyle()


class RoutinesError(Exception):
    """Root of every error the bot raises on purpose. A subclass with facts overrides
    `words`; one built from a sentence (input feedback) says that sentence."""

    def words(self, style: Style) -> str:
        return str(self.args[0]) if self.args else type(self).__name__

    def __str__(self) -> str:
        return self.words(PLAIN)


class SettingsError(RoutinesError, ValueError):
    """A required setting is missing or a value cannot be parsed."""


class RoutineNotFound(RoutinesError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def words(self, style: Style) -> str:
        hint = style.command("list")
        return f"No routine named {style.code(self.name)}." + (
            f" {hint} shows the routines." if hint else "")


class RunNotFound(RoutinesError, LookupError):
    def __init__(self, run_id: int) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def words(self, style: Style) -> str:
        return f"No run #{self.run_id}."


class ValidationFailed(RoutinesError, ValueError):
    """Input was rejected; `field_errors` maps each offending field to why."""

    def __init__(self, field_errors: dict[str, str]) -> None:
        self.field_errors = dict(field_errors)
        super().__init__(self.field_errors)

    def words(self, style: Style) -> str:
        details = "; ".join(f"{field}: {why}" for field, why in self.field_errors.items())
        return f"Invalid routine: {details}"


class RoutinePaused(RoutinesError):
    def __init__(self, name: str, paused_by: str | None) -> None:
        super().__init__(name, paused_by)
        self.name, self.paused_by = name, paused_by

    def words(self, style: Style) -> str:
        who = f" by {self.paused_by}" if self.paused_by else ""
        hint = style.command(f"resume {self.name}")
        return f"Routine {style.code(self.name)} is paused{who}" + (
            f"; {hint} restores its triggers." if hint else ".")


class AlreadyPaused(RoutinesError):
    def __init__(self, name: str, paused_by: str | None) -> None:
        super().__init__(name, paused_by)
        self.name, self.paused_by = name, paused_by

    def words(self, style: Style) -> str:
        return f"Routine {style.code(self.name)} is already paused (by {self.paused_by})."


class NotPaused(RoutinesError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def words(self, style: Style) -> str:
        return f"Routine {style.code(self.name)} is not paused."


class RunsPending(RoutinesError):
    """A routine with runs in progress or waiting cannot be deleted."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def words(self, style: Style) -> str:
        hint = style.command("history")
        return (f"Routine {style.code(self.name)} has runs in progress or waiting; cancel "
                "them first" + (f" ({hint} lists them)." if hint else "."))


class NoSchedule(RoutinesError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def words(self, style: Style) -> str:
        return f"Routine {style.code(self.name)} has no schedule."


class AlreadySubscribed(RoutinesError):
    def __init__(self, name: str, spec: str) -> None:
        super().__init__(name, spec)
        self.name, self.spec = name, spec

    def words(self, style: Style) -> str:
        return f"Routine {style.code(self.name)} already listens to {style.code(self.spec)}."


class RunAlreadyEnded(RoutinesError):
    def __init__(self, run_id: int, status: str) -> None:
        super().__init__(run_id, status)
        self.run_id, self.status = run_id, status

    def words(self, style: Style) -> str:
        return f"Run #{self.run_id} already ended ({self.status})."


class RunStillPending(RoutinesError):
    def __init__(self, run_id: int, status: str) -> None:
        super().__init__(run_id, status)
        self.run_id, self.status = run_id, status

    def words(self, style: Style) -> str:
        return f"Run #{self.run_id} is still {self.status}."


class NothingToRetry(RoutinesError):
    """The run succeeded: there is nothing to retry (running it again is another thing)."""

    def __init__(self, run_id: int, routine: str) -> None:
        super().__init__(run_id, routine)
        self.run_id, self.routine = run_id, routine

    def words(self, style: Style) -> str:
        hint = style.command(f"run {self.routine}")
        return f"Run #{self.run_id} succeeded: nothing to retry" + (
            f" ({hint} runs it again)." if hint else ".")


class InvalidToken(RoutinesError, PermissionError):
    def words(self, style: Style) -> str:
        return "missing, wrong or revoked API token"


class RateLimited(RoutinesError):
    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(name, retry_after)
        self.name, self.retry_after = name, retry_after

    def words(self, style: Style) -> str:
        return (f"Routine {style.code(self.name)} was triggered too often; "
                f"retry in {self.retry_after}s.")


class TokenNotFound(RoutinesError, LookupError):
    def __init__(self, routine: str, token_name: str) -> None:
        super().__init__(routine, token_name)
        self.routine, self.token_name = routine, token_name

    def words(self, style: Style) -> str:
        return (f"Routine {style.code(self.routine)} has no token named "
                f"{style.code(self.token_name)}.")


class MayAct(StrEnum):
    """Who may do what the actor was refused."""

    OWNERS = "owners"  # the routine's owners or an admin
    APPROVERS = "approvers"  # the routine's approvers or an admin
    SOMEONE_ELSE = "someone_else"  # an approver other than the run's requester
    ADMINS = "admins"
    ADMINS_OR_APPROVERS = "admins_or_approvers"


class Forbidden(RoutinesError, PermissionError):
    """The actor's role does not allow `action`; `may` and `principals` say who may."""

    def __init__(self, action: str, may: MayAct, principals: tuple[str, ...],
                 routine: str | None = None) -> None:
        super().__init__(action, may, principals, routine)
        self.action, self.may, self.principals, self.routine = action, may, principals, routine

    def words(self, style: Style) -> str:
        people = style.users(self.principals)
        if self.may is MayAct.SOMEONE_ELSE:
            return (f"You requested this run, so someone else must approve it: its approvers "
                    f"({people}) or an admin.")
        name = style.code(self.routine or "")
        if self.may is MayAct.OWNERS:
            return f"Only its owners ({people}) or an admin may {self.action} {name}."
        if self.may is MayAct.APPROVERS:
            return f"Only its approvers ({people}) or an admin may approve runs of {name}."
        who = "admins or approvers" if self.may is MayAct.ADMINS_OR_APPROVERS else "admins"
        return f"Only {who} may {self.action} (admins: {people})."


class KillSwitchEngaged(RoutinesError):
    def __init__(self, reason: str, by: str) -> None:
        super().__init__(reason, by)
        self.reason, self.by = reason, by

    def words(self, style: Style) -> str:
        return (f"The kill switch is engaged (by {style.user(self.by)}: {self.reason}); no "
                "routine runs until an admin disengages it.")


class KillSwitchAlreadyEngaged(KillSwitchEngaged):
    def words(self, style: Style) -> str:
        return f"The kill switch is already engaged (by {style.user(self.by)}: {self.reason})."


class KillSwitchNotEngaged(RoutinesError):
    def words(self, style: Style) -> str:
        return "The kill switch is not engaged."


class KillSwitchStillEngaged(RoutinesError):
    """Held runs are released only once the switch is disengaged."""

    def words(self, style: Style) -> str:
        return ("Disengage the kill switch first: held runs cannot start while it is "
                "engaged.")


class BudgetKind(StrEnum):
    RUNS_PER_DAY = "runs_per_day"
    SPEND_CAP = "spend_cap"


class BudgetExceeded(RoutinesError):
    """A run was refused by a budget: the routine's daily runs or the global spend cap."""

    def __init__(self, kind: BudgetKind, routine: str = "", limit: int = 0,
                 spent_usd: float = 0.0, cap_usd: float = 0.0) -> None:
        super().__init__(kind, routine, limit, spent_usd, cap_usd)
        self.kind, self.routine, self.limit = kind, routine, limit
        self.spent_usd, self.cap_usd = spent_usd, cap_usd

    def words(self, style: Style) -> str:
        if self.kind is BudgetKind.RUNS_PER_DAY:
            return (f"Routine {style.code(self.routine)} has used its {self.limit} run(s) for "
                    f"today; it can run again after 00:00 UTC (an owner can raise "
                    f"{style.code('max-runs-per-day')}).")
        hint = style.command("budget cap AMOUNT")
        return (f"The daily spend cap is reached (${self.spent_usd:.2f} of "
                f"${self.cap_usd:.2f} today): new runs are refused until 00:00 UTC or until "
                "an admin raises it" + (f" with {hint}." if hint else "."))


class RoutineBusy(RoutinesError):
    """The routine already runs its maximum and its busy policy is `skip`."""

    def __init__(self, routine: str, active: int, limit: int) -> None:
        super().__init__(routine, active, limit)
        self.routine, self.active, self.limit = routine, active, limit

    def words(self, style: Style) -> str:
        return (f"Routine {style.code(self.routine)} already has {self.active} run(s) in "
                f"progress (its limit is {self.limit}, policy {style.code('skip')}): this "
                "trigger was skipped.")


class ApprovalNotFound(RoutinesError, LookupError):
    def __init__(self, approval_id: int) -> None:
        super().__init__(approval_id)
        self.approval_id = approval_id

    def words(self, style: Style) -> str:
        return f"No approval request #{self.approval_id}."


class AlreadyDecided(RoutinesError):
    """Someone else decided first (or the request expired, or was withdrawn)."""

    def __init__(self, status: str, decided_by: str | None, decided_at: datetime) -> None:
        super().__init__(status, decided_by, decided_at)
        self.status, self.decided_by, self.decided_at = status, decided_by, decided_at

    def words(self, style: Style) -> str:
        if self.status == "expired":
            return "This request expired before anyone decided."
        if self.status == "withdrawn":
            return f"This request was withdrawn (the run was cancelled by {self.decided_by})."
        return (f"Already {self.status} by {style.user(self.decided_by or '')} at "
                f"{self.decided_at.strftime('%H:%M:%S UTC')}.")


class RepoHostRefused(RoutinesError, ValueError):
    """A routine's repository location breaks the fetch policy (`runner.repo_policy`):
    `reason` says which rule, `host` (and for a resolved address `address` and `kind`)
    the facts."""

    def __init__(self, host: str, reason: Reason, address: str = "",
                 kind: AddressKind | None = None) -> None:
        super().__init__(host, reason, address, kind)
        self.host, self.reason, self.address, self.kind = host, reason, address, kind

    @classmethod
    def of(cls, refusal: Refusal) -> RepoHostRefused:
        return cls(refusal.host, refusal.reason, refusal.address, refusal.kind)

    def words(self, style: Style) -> str:
        why = Refusal(self.reason, self.host, self.address, self.kind).words(style.code)
        return f"Repository refused: {why}."


class TryAgain(RoutinesError):
    """The same change was made at the same moment elsewhere; trying again settles it."""


class DatabaseNewer(RoutinesError):
    """The database is at a migration this version does not have: a newer version wrote
    it. Nothing is changed; running an older version over it would lose data."""

    def __init__(self, current: str, head: str) -> None:
        super().__init__(current, head)
        self.current = current
        self.head = head

    def words(self, style: Style) -> str:
        return (f"the database is at migration {style.code(self.current)}, which this version "
                f"does not know (its newest is {style.code(self.head)}): run the version that "
                "upgraded it, or restore a backup")


class DatabaseBehind(RoutinesError):
    """The database is not at this version's newest migration and the command only reads
    and changes rows: it does not upgrade behind the operator's back (`serve` does)."""

    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(current, head)
        self.current = current
        self.head = head

    def words(self, style: Style) -> str:
        at = style.code(self.current) if self.current else "no migration (an empty database)"
        return (f"the database is at {at}, this version's newest is {style.code(self.head)}: "
                "run `routines db upgrade` first")


class ChecksFailed(RoutinesError):
    """`routines doctor` found problems (each printed with its fix above this line)."""

    def __init__(self, failed: list[str]) -> None:
        super().__init__(failed)
        self.failed = failed

    def words(self, style: Style) -> str:
        return f"{len(self.failed)} check(s) failed: {', '.join(self.failed)}"


@dataclass(frozen=True)
class RoutineFileProblem:
    """One problem of a routine file: where it is, which key, and why."""

    source: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.key}: {self.message}"


class RoutineFileInvalid(RoutinesError, ValueError):
    """Routine files were refused; nothing was applied."""

    def __init__(self, problems: list[RoutineFileProblem]) -> None:
        super().__init__(problems)
        self.problems = list(problems)

    def words(self, style: Style) -> str:
        lines = "\n".join(str(p) for p in self.problems)
        return f"nothing applied; fix these first:\n{lines}"


class ManagedFromFiles(RoutinesError):
    """The routine is kept in a file (`routines apply`): edits elsewhere would be undone by
    the next apply, so they are refused unless an admin forces them."""

    def __init__(self, name: str, source: str) -> None:
        super().__init__(name, source)
        self.name, self.source = name, source

    def words(self, style: Style) -> str:
        hint = style.command(f"set {self.name} KEY=VALUE --force")
        forced = (f" An admin may still change it here by ending the command with "
                  f"{style.code('--force')} (e.g. {hint}); the next apply puts the file's "
                  "version back." if hint else "")
        return (f"Routine {style.code(self.name)} is managed from files "
                f"({style.code(self.source)}): change the file and run "
                f"{style.code('routines apply')}.{forced}")


class DatabaseProblem(StrEnum):
    """Why the database did not answer: another writer holds its lock (SQLite), or it
    cannot be reached at all (PostgreSQL stopped or restarting)."""

    LOCKED = "locked"
    UNREACHABLE = "unreachable"
    FAILED = "failed"  # it refused a statement: a group commit rolled back for every call


class DatabaseUnavailable(RoutinesError):
    """The database is down or locked for now: nothing was changed (the unit of work was
    rolled back), and the same request succeeds once it is back. The doors answer 503."""

    retry_after = 5  # seconds a client is told to wait

    def __init__(self, problem: DatabaseProblem) -> None:
        super().__init__(problem)
        self.problem = problem

    def words(self, style: Style) -> str:
        if self.problem is DatabaseProblem.LOCKED:
            return ("the database is busy (another process holds its write lock): nothing "
                    f"was changed; try again in {self.retry_after}s")
        if self.problem is DatabaseProblem.FAILED:
            return ("the database failed to record this request: nothing was changed; try "
                    f"again in {self.retry_after}s")
        return ("the database cannot be reached: nothing was changed; try again in "
                f"{self.retry_after}s")


class DatabaseInUse(RoutinesError):
    """Another bot process serves this SQLite database: SQLite is one process's database
    (`bot.store.one_process`); several processes share a PostgreSQL one."""

    def __init__(self, database: str, holder: str) -> None:
        super().__init__(database, holder)
        self.database, self.holder = database, holder

    def words(self, style: Style) -> str:
        who = f"process {self.holder}" if self.holder else "another process"
        return (f"{who} already serves the SQLite database {style.code(self.database)}: "
                "a SQLite database takes one bot process; stop that one, or use PostgreSQL "
                "(DATABASE_URL) to run several")


class SlackUnavailable(RoutinesError):
    """Slack refused or did not answer a post (down, 5xx, 429): the message is owed and is
    posted again later, not before `retry_after` seconds when Slack gave one."""

    def __init__(self, method: str, status: int | None, retry_after: float | None) -> None:
        super().__init__(method, status, retry_after)
        self.method, self.status, self.retry_after = method, status, retry_after

    def words(self, style: Style) -> str:
        answer = f"answered {self.status}" if self.status else "did not answer"
        wait = f"; retry after {self.retry_after:g}s" if self.retry_after is not None else ""
        return f"Slack {answer} to {style.code(self.method)}{wait}"


class WorkerIdInUse(RoutinesError):
    """A live process on this host already serves the database under this worker id: two
    processes with one id would adopt each other's containers (`bot.services.workers`)."""

    def __init__(self, worker_id: str, pid: int) -> None:
        super().__init__(worker_id, pid)
        self.worker_id, self.pid = worker_id, pid

    def words(self, style: Style) -> str:
        return (f"worker id {style.code(self.worker_id)} is in use by process {self.pid} on "
                "this host: give this process a name of its own (ROUTINES_WORKER_NAME)")
