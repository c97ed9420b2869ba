"""The runner's errors: one root, a subclass per failure the host side can report."""

from __future__ import annotations


class RunnerError(Exception):
    """Root of every error the runner raises on the host side."""


class WorkspaceError(RunnerError):
    """The repository could not be cloned, or the workspace could not be read back."""


class PublishError(RunnerError):
    """A run's kept commit could not be pushed, or there is none to push."""


class PublishRefused(PublishError, ValueError):
    """The requested destination breaks the branch-safety rules; nothing was pushed."""
