"""What every source is and reports."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgegw.reading import Reading

log = logging.getLogger("edgegw.sources")


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """One device (unit id) of a Modbus line at one moment."""

    name: str
    unit: int
    reads: int
    errors: tuple[tuple[str, int], ...]  # (kind, count), by kind: timeout, crc, exception…
    last_response: float  # seconds, last answered request
    breaker_open: bool
    last_error: str | None


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """A source at one moment, as /metrics, /healthz and `edgegw status` show it."""

    name: str
    up: bool
    reads: int
    errors: int
    availability: float
    outages: int
    mttr: float | None  # seconds; None until an outage has ended
    down_for: float  # seconds the current outage has lasted; 0 while up
    last_error: str | None
    bad_tags: tuple[tuple[str, str], ...]  # (tag, why), sorted by tag
    devices: tuple[DeviceHealth, ...] = ()


class SourceStatus:
    """Counters and state a source keeps about itself, read by metrics and `edgegw status`.

    Setting `connected` also keeps the availability books: time up, outages, and time to
    repair. An outage starts when a connected source goes down, or at the source's start when
    its first connection fails; it ends at the next connection."""

    __slots__ = (
        "_changed",
        "_connected",
        "_outage_since",
        "_seen_up",
        "_up_seconds",
        "bad_tags",
        "errors",
        "last_error",
        "last_latency",
        "name",
        "outages",
        "overruns",
        "polls",
        "reads",
        "repair_seconds",
        "repairs",
        "started",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.reads = 0  # requests answered
        self.errors = 0  # requests failed: timeouts, exceptions, disconnects
        self.polls = 0
        self.overruns = 0  # polls that started late because the previous one took too long
        self.last_error: str | None = None
        self.last_latency = 0.0  # seconds, last request
        self.started = time.monotonic()
        self.outages = 0  # outages begun
        self.repairs = 0  # outages ended by a connection
        self.repair_seconds = 0.0  # summed length of the ended outages
        self._connected = False
        self._changed = self.started  # when `connected` last changed
        self._up_seconds = 0.0  # summed length of the ended up periods
        self._outage_since: float | None = None
        self._seen_up = False  # connected at least once
        # Tags that cannot be read while the source itself is up (an address the PLC lacks,
        # a node the server does not know), with why: a source with such tags is not "ok".
        self.bad_tags: dict[str, str] = {}

    @property
    def connected(self) -> bool:
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        now = time.monotonic()
        if value == self._connected:
            if not value and self._outage_since is None and not self._seen_up:
                # The first connection failed: down since the start.
                self._outage_since = self._changed
                self.outages += 1
            return
        if value:
            if not self._seen_up and self._outage_since is None:
                # A first connection that succeeds: the time it took is no downtime, so the
                # books start now (else 1 s of connecting read as 95 % after 20 s).
                self.started = now
            self._seen_up = True
            if self._outage_since is not None:
                self.repairs += 1
                self.repair_seconds += now - self._outage_since
                self._outage_since = None
        else:
            self._up_seconds += now - self._changed
            self._outage_since = now
            self.outages += 1
        self._connected = value
        self._changed = now

    def stopped(self) -> None:
        """The source was stopped on purpose (shutdown, reload): not an outage."""
        now = time.monotonic()
        if self._connected:
            self._up_seconds += now - self._changed
        self._connected = False
        self._changed = now

    def mark_down(self, reason: str) -> bool:
        """Record a failed connection or a lost one; True when it is news (state or reason
        changed), i.e. worth a log line."""
        news = self._connected or self.last_error != reason
        self.connected = False
        self.errors += 1
        self.last_error = reason
        return news

    def tag_failed(self, tag: str, reason: str, address: str) -> None:
        """A tag that cannot be read; a warning names it the first time (and when the reason
        changes), never at every poll."""
        if self.bad_tags.get(tag) == reason:
            return
        self.bad_tags[tag] = reason
        log.warning(
            "tag cannot be read source=%s tag=%s address=%s reason=%s",
            self.name,
            tag,
            address,
            reason,
        )

    def tag_read(self, tag: str) -> None:
        """A tag that failed reads again."""
        if self.bad_tags.pop(tag, None) is not None:
            log.info("tag reads again source=%s tag=%s", self.name, tag)

    def availability(self, now: float | None = None) -> float:
        """Share of the time since the source's first connection (or, when that failed, since
        its start) that it was connected (1.0 at start)."""
        now = time.monotonic() if now is None else now
        observed = now - self.started
        if observed <= 0:
            return 1.0 if self._connected else 0.0
        up = self._up_seconds + (now - self._changed if self._connected else 0.0)
        return min(1.0, up / observed)

    def mttr(self) -> float | None:
        """Mean seconds from going down to connecting again, over ended outages; None until
        an outage has ended (a source down since its start has no repair time yet)."""
        return self.repair_seconds / self.repairs if self.repairs else None

    def down_for(self, now: float | None = None) -> float:
        """Seconds the current outage has lasted; 0 while connected."""
        if self._outage_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self._outage_since

    def snapshot(self, now: float, devices: Sequence[DeviceHealth] = ()) -> SourceHealth:
        return SourceHealth(
            name=self.name,
            up=self._connected,
            reads=self.reads,
            errors=self.errors,
            availability=self.availability(now),
            outages=self.outages,
            mttr=self.mttr(),
            down_for=self.down_for(now),
            last_error=self.last_error,
            bad_tags=tuple(sorted(self.bad_tags.items())),
            devices=tuple(devices),
        )


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

    def health(self, now: float) -> SourceHealth:
        """The source's state at monotonic time `now` (for metrics, health and status)."""
        ...
