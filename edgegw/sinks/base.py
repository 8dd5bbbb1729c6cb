"""What a sink is, and what it reports about itself."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgegw.histogram import HistogramSnapshot
from edgegw.outbox.segments import StoredEvent


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """A sink and its forwarder at one moment, as /metrics, /healthz and `edgegw status` show
    it."""

    name: str
    address: str  # where it delivers: host:port, a directory
    up: bool
    connects: int  # successful connections (more than 1: reconnects)
    last_error: str | None
    published: int  # acknowledged and deleted
    refused: int  # refusals (MQTT: PUBACK >= 0x80): kept and retried
    last_refusal: str | None  # why, in the sink's words (MQTT: the PUBACK reason)
    intake_waits: int  # times intake waited for this forwarder (overload)
    latency: HistogramSnapshot  # source timestamp to acknowledgement, per value


OnResult = Callable[[Sequence[StoredEvent], str | None], None]
"""How a sink reports one message's fate: the rows it carried, and None when it was
acknowledged or the refusal in words (the rows stay in the outbox)."""


class Sink(Protocol):
    """Where the forwarder delivers outbox rows: one broker, one exchange, one directory.

    Contract (one generic forwarder drives every sink; see sinks/forwarder.py):

    * `connect()` opens a fresh connection (or raises SinkError with the reason in words);
      nothing sent on an earlier one is acknowledged after it.
    * `room()` is how many more messages may be in flight now; `send()` takes rows from the head
      of `ready` for at most that many messages and returns at once (or returns how long to wait
      for a fuller message when nothing was worth sending yet). How rows become messages
      (topics, routing keys, batch envelopes, file names) is the sink's business.
    * `on_result` (given at construction) runs on the event loop once per message: acknowledged
      (None) or refused (the reason in words). After a connection loss no result comes for
      what was in flight: `in_flight()` drops to 0 and the forwarder sends those rows again.
    * `wait_lost()` returns the reason when the connection drops; `close()` ends it cleanly.
    """

    name: str
    address: str  # where it delivers, for logs and health

    @property
    def connected(self) -> bool: ...

    @property
    def batching(self) -> int:
        """Rows the forwarder should hold ready so that a message can fill (1: no batching)."""
        ...

    def describe(self) -> str:
        """The connection in a few words for the log: address, TLS, user."""
        ...

    async def connect(self) -> None: ...

    def room(self) -> int: ...

    def in_flight(self) -> int: ...

    def send(self, ready: deque[StoredEvent], room: int) -> float | None: ...

    async def wait_lost(self) -> str: ...

    async def close(self) -> None: ...
