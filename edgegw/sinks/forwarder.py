"""Outbox to sink: claim rows in seq order, send them with a bounded window, delete what the sink
acknowledged. One generic forwarder per sink; the sink turns rows into messages."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgegw.backoff import Backoff
from edgegw.errors import OutboxError, SinkError
from edgegw.histogram import Histogram
from edgegw.outbox.segments import StoredEvent
from edgegw.outbox.store import Outbox
from edgegw.sinks.base import OnResult, Sink, SinkHealth

MakeSink = Callable[[OnResult], Sink]
"""Builds the sink, given the callback through which it reports each message's fate."""

log = logging.getLogger(__name__)

CLAIM_PAGE = 1000
STABLE_CONNECTION = 10.0
"""Seconds a broker connection must hold before its loss counts as an ordinary one, followed
by an immediate reconnect. A connection lost sooner (another client took the session over, an
ACL or quota that drops us at once) is followed by a growing delay instead: two gateways with
one client id reconnected about 1,700 times in 10 s, each taking the session from the other."""
FLAPPING_MAX_DELAY = 5.0
"""Cap of that delay: enough to turn a takeover fight into a few connects a minute, short
enough that a link which keeps dropping (a bad switch port) still gets data through."""
ACK_GATHER = 0.02
"""Seconds acknowledgements gather before they are written (see _delete_acked_forever)."""
INTAKE_LEAD = 5000
"""Rows intake may commit beyond what the forwarder sent, counted from the (re)connect, while
the broker is up. Past it, intake waits for the forwarder: on a saturated CPU, reading every
value only grows a backlog that no consumer receives (measured: 20,640 values/s committed,
8,250 forwarded). Reading slower is the graceful way down; while the broker is away nothing
waits, that is what the outbox is for."""


@dataclass(slots=True)
class ForwarderStatus:
    broker_up: bool = False
    published: int = 0  # acknowledged by the broker and deleted
    refused: int = 0  # PUBACK with a reason code >= 0x80: kept and retried after reconnect
    connects: int = 0
    last_error: str | None = None
    last_refusal: str | None = None  # the sink's words for the last message it refused
    last_ack_latency: float = 0.0  # seconds from source timestamp to PUBACK


class Forwarder:
    """Sends every outbox row to one sink, at least once.

    Contract: the outbox is the only queue. Nothing is handed to the sink while it is
    disconnected; after every (re)connect, sending starts again at the oldest unacknowledged
    row with its original key and seq. A row is deleted only after the sink acknowledged it.
    """

    def __init__(self, outbox: Outbox, make_sink: MakeSink, *, drain_grace: float = 5.0) -> None:
        self.outbox = outbox
        self._appended = outbox.appended_event()  # new messages committed (this sink's own)
        self.sink = make_sink(self._on_result)
        self._next_sink: Sink | None = None  # set by reconfigure(): used from the next connect
        self.drain_grace = drain_grace
        self.status = ForwarderStatus()
        self.latency = Histogram()  # source timestamp -> acknowledgement, per value
        self._acked: list[int] = []
        self._acked_pending: set[int] = set()  # acknowledged, delete not yet committed
        self._wake = asyncio.Event()
        self._acks_ready = asyncio.Event()
        # Held while acknowledgements are written: whoever waits for it finds every
        # acknowledgement received so far in the file (see _record_acks).
        self._flush_lock = asyncio.Lock()
        self._progress = asyncio.Event()  # set when rows were sent or the link went down
        self._seq_at_connect = 0
        self._sent_since_connect = 0  # rows handed to the sink on this connection
        self.intake_waits = 0  # times intake waited for the forwarder (overload)
        self.throttle_intake = True  # off at shutdown: what was read must be committed
        self.intake_lead_limit = INTAKE_LEAD
        self._reconnect = asyncio.Event()  # set by reconfigure(): new settings, new connection

    def reconfigure(self, make_sink: MakeSink) -> None:
        """Apply new sink settings: what is in flight is drained (bounded by the grace period),
        the connection closed cleanly, and a new one opened with the new settings.
        Unacknowledged rows are sent again on it, as after any reconnect."""
        self._next_sink = make_sink(self._on_result)
        self._reconnect.set()

    def health(self) -> SinkHealth:
        status = self.status
        return SinkHealth(
            name=self.sink.name,
            address=self.sink.address,
            up=status.broker_up,
            connects=status.connects,
            last_error=status.last_error,
            published=status.published,
            refused=status.refused,
            last_refusal=status.last_refusal,
            intake_waits=self.intake_waits,
            latency=self.latency.snapshot(),
        )

    def intake_lead(self) -> int:
        """Rows committed since the connect minus rows sent on it; 0 while the broker is down."""
        if not self.status.broker_up:
            return 0
        committed = self.outbox.last_seq - self._seq_at_connect
        return committed - self._sent_since_connect

    async def wait_for_room(self) -> None:
        """Return once intake may commit again (see INTAKE_LEAD)."""
        waited = False
        while self.throttle_intake and self.intake_lead() > self.intake_lead_limit:
            waited = True
            self._progress.clear()
            await self._progress.wait()
        self.intake_waits += waited

    def release_intake(self) -> None:
        """At shutdown: intake commits what was read without waiting for the broker."""
        self.throttle_intake = False
        self._progress.set()

    def _progressed(self) -> None:
        self._progress.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, pump, reconnect with backoff, until `stop` is set and in-flight drained."""
        backoff = Backoff(initial=0.2, maximum=15.0)
        flapping = Backoff(initial=0.2, maximum=FLAPPING_MAX_DELAY)
        short_lived = 0  # connections in a row lost within STABLE_CONNECTION
        deleter = asyncio.create_task(self._delete_acked_forever(), name="forwarder-deleter")
        try:
            while not stop.is_set():
                if self._next_sink is not None:
                    self.sink, self._next_sink = self._next_sink, None
                sink = self.sink
                try:
                    if not await self._connect_unless_stopped(sink, stop):
                        break
                except SinkError as exc:
                    # Said once per reason (see _set_down), also after a flapping period: a
                    # broker that then stays away must show in the log.
                    self._set_down(str(exc))
                    await self._pause(stop, backoff.next_delay())
                    continue
                self._seq_at_connect = self.outbox.last_seq
                self._sent_since_connect = 0
                self.status.broker_up = True
                self.status.connects += 1
                log.log(
                    logging.DEBUG if short_lived else logging.INFO,
                    "broker connected sink=%s %s",
                    sink.name,
                    sink.describe(),
                )
                connected_at = time.monotonic()
                reason = await self._pump(sink, stop)
                await self._record_acks()
                # A reconnect the gateway asked for (a reload) is no dropped connection.
                asked = self._reconnect.is_set()
                self._reconnect.clear()
                held = time.monotonic() - connected_at
                if reason is None or asked or held >= STABLE_CONNECTION:
                    if short_lived:
                        log.info(
                            "broker connection held again after %d short-lived connections",
                            short_lived,
                        )
                    short_lived = 0
                    backoff.reset()
                    flapping.reset()
                    if asked:
                        self.status.broker_up = False
                        log.info("reconnecting to apply new settings sink=%s", sink.name)
                    elif reason is not None:
                        self._set_down(reason)
                    self._progressed()
                    continue
                short_lived += 1
                delay = flapping.next_delay()
                if short_lived == 1:
                    log.warning(
                        "broker %s dropped the connection %.1f s after it was made; "
                        "reconnecting with growing delays (up to %g s) until a connection "
                        "holds %g s, said once reason=%s",
                        sink.address,
                        held,
                        flapping.maximum,
                        STABLE_CONNECTION,
                        reason,
                    )
                self._set_down(reason, quiet=True)
                await self._pause(stop, delay)
        finally:
            self.status.broker_up = False
            self._progressed()
            deleter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deleter
            await self._flush_acks()

    @staticmethod
    async def _connect_unless_stopped(sink: Sink, stop: asyncio.Event) -> bool:
        """Connect; False when stop came first (a shutdown must not wait for a dead broker)."""
        connecting = asyncio.create_task(sink.connect(), name=f"sink-connect:{sink.name}")
        stopped = asyncio.create_task(stop.wait(), name="forwarder-stop-watch")
        await asyncio.wait((connecting, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if connecting.done():
            connecting.result()
            return True
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, SinkError):
            await connecting
        await sink.close()
        return False

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    def _set_down(self, reason: str, *, quiet: bool = False) -> None:
        if not quiet and (self.status.broker_up or self.status.last_error != reason):
            log.warning("broker down reason=%s", reason)
        self.status.broker_up = False
        self.status.last_error = reason
        self._progressed()

    async def _pump(self, sink: Sink, stop: asyncio.Event) -> str | None:
        """Send until the connection drops (returns the reason) or stop is set (None)."""
        cursor = 0
        lost = asyncio.create_task(sink.wait_lost(), name=f"sink-loss-watch:{sink.name}")
        stopped = asyncio.create_task(self._stop_or_reconnect(stop), name="forwarder-stop-watch")
        try:
            # Rows are claimed in pages larger than the window: each claim waits for the
            # outbox lock behind a commit group, so one claim per window starves forwarding
            # when intake is busy (measured: 473 values/s forwarded at 23,000 commits/s).
            ready: deque[StoredEvent] = deque()
            # Batching claims ahead so that a batch can fill; otherwise only when empty.
            refill = sink.batching
            page = max(CLAIM_PAGE, sink.room(), 4 * refill if refill > 1 else 0)
            more = True  # rows may wait in the outbox beyond `ready`
            while not lost.done() and not stopped.done():
                self._wake.clear()
                more = more or self._appended.is_set()
                self._appended.clear()
                room = sink.room()
                if room > 0 and more and len(ready) < refill:
                    rows = await self.outbox.claim(cursor, page, sink.name)
                    more = len(rows) == page
                    if rows:
                        cursor = rows[-1].seq
                        pending = self._acked_pending
                        ready.extend(row for row in rows if row.seq not in pending)
                        continue
                delay: float | None = None
                if room > 0 and ready and sink.connected:
                    before = len(ready)
                    delay = sink.send(ready, room)
                    sent = before - len(ready)
                    if sent:
                        self._sent_since_connect += sent
                        self._progressed()
                    if delay is None:
                        continue
                waiters = [lost, stopped, asyncio.ensure_future(self._wake.wait())]
                if room > 0:
                    waiters.append(asyncio.ensure_future(self._appended.wait()))
                if delay is not None:
                    waiters.append(asyncio.ensure_future(asyncio.sleep(delay)))
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters[2:]:
                    waiter.cancel()
            if lost.done():
                return lost.result()
            await self._drain_in_flight(sink, lost)
            await sink.close()
            return None if stop.is_set() else "reconnecting with new settings (config reload)"
        finally:
            stopped.cancel()
            if not lost.done():
                lost.cancel()

    async def _stop_or_reconnect(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._reconnect.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _drain_in_flight(self, sink: Sink, lost: asyncio.Task[str]) -> None:
        """On shutdown: wait a bounded time for the acknowledgements of what is already sent."""
        deadline = time.monotonic() + self.drain_grace
        while sink.in_flight() and not lost.done() and time.monotonic() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())
        if sink.in_flight():
            log.warning(
                "shutdown with unacknowledged publishes count=%d; they stay in the outbox",
                sink.in_flight(),
            )

    def _on_result(self, rows: Sequence[StoredEvent], refusal: str | None) -> None:
        """One message's fate, from the sink: acknowledged rows are deleted (in batches, by
        the deleter task); refused rows stay and are sent again after the next connect."""
        if refusal is not None:
            self.status.refused += 1
            self.status.last_refusal = refusal
        else:
            seqs = [row.seq for row in rows]
            self._acked.extend(seqs)
            self._acked_pending.update(seqs)
            now = time.time()
            self.status.last_ack_latency = now - rows[0].source_time
            for source_time, same in itertools.groupby(row.source_time for row in rows):
                self.latency.observe_many(now - source_time, sum(1 for _ in same))
            if log.isEnabledFor(logging.DEBUG):
                for acked in rows:
                    log.debug(
                        "acknowledged seq=%d id=%s trace=%s",
                        acked.seq,
                        acked.id,
                        acked.trace,
                        extra={"trace": acked.trace},
                    )
            self._acks_ready.set()
        self._wake.set()

    async def _delete_acked_forever(self) -> None:
        while True:
            await self._acks_ready.wait()
            # Let acknowledgements gather: one transaction for hundreds of them. Writing each
            # handful as it came took a SELECT and a script on the SQLite thread every few
            # PUBACKs (15 % of the gateway's CPU at 13,000 messages/s, one per value).
            await asyncio.sleep(ACK_GATHER)
            self._acks_ready.clear()
            try:
                await self._flush_acks()
            except OutboxError as exc:
                # The rows stay; they will be sent again, which a deduplicating consumer absorbs.
                log.error("cannot delete acknowledged events; retrying error=%s", exc)
                await asyncio.sleep(1.0)
                self._acks_ready.set()

    async def _record_acks(self) -> None:
        """Once a connection ended: every acknowledgement it brought is in the file before the
        loss is reported (a consumer or an operator comparing the outbox with what arrived
        must not find acknowledged messages still counted as waiting)."""
        try:
            await self._flush_acks()
        except OutboxError as exc:
            log.error("cannot record acknowledged events; retrying error=%s", exc)
            self._acks_ready.set()

    async def _flush_acks(self) -> None:
        async with self._flush_lock:
            await self._flush_acks_locked()

    async def _flush_acks_locked(self) -> None:
        if not self._acked:
            return
        batch, self._acked = self._acked, []
        try:
            await self.outbox.delete_acknowledged(batch, self.sink.name)
        except BaseException:
            # Also on cancellation at shutdown: the final flush deletes them, so the next
            # start does not send them again.
            self._acked[:0] = batch
            raise
        self.status.published += len(batch)
        self._acked_pending.difference_update(batch)
