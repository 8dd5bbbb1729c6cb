"""The exception tree: one root, one branch per layer."""

from __future__ import annotations

from collections.abc import Sequence

from edgegw.config.issues import NOT_STARTED, ConfigIssue, summary_line


class EdgeGwError(Exception):
    """Root of every error edgegw raises on purpose."""


class ConfigError(EdgeGwError):
    """The configuration is invalid; `issues` holds every problem found, in file order."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(self.lines()))

    def lines(self, outcome: str = NOT_STARTED) -> list[str]:
        """The report: one line per issue, then how many and `outcome` (what did not happen)."""
        return [*map(str, self.issues), summary_line(len(self.issues), outcome)]


class SourceError(EdgeGwError):
    """A PLC connection or read failed; the source degrades its own tags and retries."""


class SinkError(EdgeGwError):
    """The broker refused us or could not be reached."""


class OutboxError(EdgeGwError):
    """The outbox database cannot be opened, written or trusted."""


class OutboxFull(OutboxError):
    """The disk (or the database's page limit) is full: nothing can be committed now."""
