"""The exception tree: one root, one branch per layer."""

from __future__ import annotations


class EdgeGwError(Exception):
    """Root of every error edgegw raises on purpose."""


class ConfigError(EdgeGwError):
    """The configuration is invalid; `issues` holds every problem found, already formatted."""

    def __init__(self, issues: list[str]) -> None:
        self.issues = issues
        super().__init__("\n".join(issues))


class SourceError(EdgeGwError):
    """A PLC connection or read failed; the source degrades its own tags and retries."""


class SinkError(EdgeGwError):
    """The broker refused us or could not be reached."""


class OutboxError(EdgeGwError):
    """The outbox database cannot be opened, written or trusted."""


class OutboxFull(OutboxError):
    """The disk (or the database's page limit) is full: nothing can be committed now."""
