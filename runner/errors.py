"""The runner's errors: one root, a subclass per failure the host side can report."""

from __future__ import annotations

from runner.disk_limit import DISK_LIMIT_SETTING, describe_size
from runner.repo_policy import Refusal


class RunnerError(Exception):
    """Root of every error the runner raises on the host side."""


class WorkspaceError(RunnerError):
    """The repository could not be cloned, or the workspace could not be read back."""


class PublishError(RunnerError):
    """A run's kept commit could not be pushed, or there is none to push."""


class PublishRefused(PublishError, ValueError):
    """The requested destination breaks the branch-safety rules; nothing was pushed."""


class RepoRefused(RunnerError):
    """The repository's location breaks the host's fetch policy; nothing was contacted
    (but the resolver). `refusal` holds the facts: the reason, the host, the address."""

    operation = "fetch from"

    def __init__(self, url: str, refusal: Refusal) -> None:
        super().__init__(url, refusal)
        self.url, self.refusal = url, refusal

    def __str__(self) -> str:
        return f"{self.operation} {self.url} refused: {self.refusal.words()}"


class CloneRefused(RepoRefused, WorkspaceError):
    operation = "clone of"


class PushRefused(RepoRefused, PublishError):
    operation = "push to"


class GatewayUnavailable(RunnerError):
    """The run's model gateway could not listen on its socket (`path`), so the run
    cannot reach the model: nothing was started."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"could not open the run's model gateway at {self.path}: {self.reason}"


class DiskLimitUnavailable(WorkspaceError):
    """A run has a disk limit (`runner.disk_limit`) and this host cannot enforce it: the
    run does not start rather than run unlimited. `limit` in bytes; `why` in words."""

    def __init__(self, limit: int, why: str) -> None:
        super().__init__(limit, why)
        self.limit, self.why = limit, why

    def __str__(self) -> str:
        return (f"the run's disk limit of {describe_size(self.limit)} cannot be enforced: "
                f"{self.why} ({DISK_LIMIT_SETTING}=0 runs without a limit)")
