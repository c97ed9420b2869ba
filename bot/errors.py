"""One root error for everything the bot refuses or fails at.

Adapters catch `RoutinesError` and render its message; anything else is a bug and is
logged as one.
"""

from __future__ import annotations


class RoutinesError(Exception):
    """Root of every error the service layer raises on purpose."""


class SettingsError(RoutinesError, ValueError):
    """A required setting is missing or a value cannot be parsed."""


class RoutineNotFound(RoutinesError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No routine named `{name}`. `/routine list` shows the routines.")
        self.name = name


class RunNotFound(RoutinesError, LookupError):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"No run #{run_id}.")
        self.run_id = run_id


class ValidationFailed(RoutinesError, ValueError):
    """Input was rejected; `field_errors` maps each offending field to why."""

    def __init__(self, field_errors: dict[str, str]) -> None:
        self.field_errors = dict(field_errors)
        details = "; ".join(f"{field}: {why}" for field, why in self.field_errors.items())
        super().__init__(f"Invalid routine: {details}")


class RoutinePaused(RoutinesError):
    def __init__(self, name: str, paused_by: str | None) -> None:
        who = f" by {paused_by}" if paused_by else ""
        super().__init__(f"Routine `{name}` is paused{who}; `/routine resume {name}` "
                         "restores its triggers.")
        self.name = name


class InvalidToken(RoutinesError, PermissionError):
    def __init__(self) -> None:
        super().__init__("missing, wrong or revoked API token")


class RateLimited(RoutinesError):
    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(f"Routine `{name}` was triggered too often; retry in {retry_after}s.")
        self.retry_after = retry_after


class TokenNotFound(RoutinesError, LookupError):
    def __init__(self, routine: str, token_name: str) -> None:
        super().__init__(f"Routine `{routine}` has no token named `{token_name}`.")


class Forbidden(RoutinesError, PermissionError):
    """The actor's role does not allow the action; the message says who may."""


class KillSwitchEngaged(RoutinesError):
    def __init__(self, reason: str, by: str) -> None:
        super().__init__(f"The kill switch is engaged (by <@{by}>: {reason}); no routine "
                         "runs until an admin disengages it.")
        self.reason = reason


class BudgetExceeded(RoutinesError):
    """A run was refused by a budget: the routine's daily runs or the global spend cap."""


class RoutineBusy(RoutinesError):
    """The routine already runs its maximum and its busy policy is `skip`."""


class ApprovalNotFound(RoutinesError, LookupError):
    def __init__(self, approval_id: int) -> None:
        super().__init__(f"No approval request #{approval_id}.")


class AlreadyDecided(RoutinesError):
    """Someone else decided first; the message says who and what."""
