"""What every source is and reports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from edgegw.reading import Reading


@dataclass(slots=True)
class SourceStatus:
    """Counters and state a source keeps about itself, read by metrics and `edgegw status`."""

    name: str
    connected: bool = False
    reads: int = 0  # requests answered
    errors: int = 0  # requests failed: timeouts, exceptions, disconnects
    polls: int = 0
    overruns: int = 0  # polls that started late because the previous one took too long
    last_error: str | None = None
    last_latency: float = 0.0  # seconds, last request


class Source(Protocol):
    """A connector to one PLC.

    Contract: `batches()` yields the readings of one poll (or one notification burst) at a time
    and owns the connection: it connects, reconnects with backoff, and turns every device fault
    into `bad` readings instead of raising. It stops when the task iterating it is cancelled,
    closing its connection; no reading is yielded after that.
    """

    name: str
    status: SourceStatus

    def batches(self) -> AsyncIterator[list[Reading]]: ...
