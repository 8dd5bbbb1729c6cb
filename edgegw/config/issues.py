"""A problem found in a config file, as data: where (file, line, column, field path) and what.

Issues are objects from where they are found to where they are shown: sorted and merged by
their position, formatted once at the edge (the CLI's stderr, a log line). This module imports
nothing of edgegw, so the YAML reader, the diagnostics and the error type can all use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NOT_STARTED = "gateway not started."
"""What `edgegw run` says after the count; other commands say what they did not do."""

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u0085\u2028\u2029\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in the file; both numbers are counted from 1."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem: `FILE:LINE:COL path: message` once formatted (`str()`).

    Without a mark (an unreadable or empty file) it is `FILE path: message`; with an empty
    path (the top level, or the YAML text itself) the path is left out: `FILE:LINE:COL: message`.
    """

    file: str
    mark: Mark | None
    path: str
    message: str

    def __str__(self) -> str:
        mark = self.mark
        where = self.file if mark is None else f"{self.file}:{mark.line}:{mark.column}"
        issue = f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        # One issue, one line: a value quoted back with a line break must not split it.
        return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], issue)

    @property
    def position(self) -> tuple[int, int]:
        """(line, column); (0, 0) without a mark, so such issues sort first."""
        return (0, 0) if self.mark is None else (self.mark.line, self.mark.column)


def summary_line(count: int, outcome: str = NOT_STARTED) -> str:
    """The last line of every error report: how many, and what did not happen."""
    return f"{count} error{'' if count == 1 else 's'}; {outcome}"
