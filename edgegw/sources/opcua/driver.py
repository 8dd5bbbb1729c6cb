"""OPC UA source: monitored items or batched reads, and reconnects that survive restarts.

Each connection is a fresh asyncua client (its own auto-reconnect stays off): after a server
restart the namespace indexes may have moved, so every `nsu=` node id is resolved again
before anything is subscribed, and nothing is re-created from the old ids. When only the link
dropped, the server still holds our session's subscription for `session_timeout`; the next
session takes it over with TransferSubscriptions and fetches the notifications it missed
with Republish, so a short cut loses no sample. A takeover is tried only when the server is
the same instance (same start time and namespace array): after a restart a subscription id
may belong to another client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from edgegw.backoff import Backoff
from edgegw.reading import Reading
from edgegw.sources.base import SourceHealth, SourceStatus
from edgegw.sources.opcua.config import OpcUaSourceConfig
from edgegw.sources.opcua.nodeid import NamespaceMissing
from edgegw.sources.opcua.session import (
    SessionFactory,
    close_quietly,
    describe_error,
    drop_transport,
)
from edgegw.sources.opcua.values import reading_of

log = logging.getLogger(__name__)

ITEMS_PER_REQUEST: Final = 1000
"""Nodes per Read or CreateMonitoredItems call unless the server announces a lower limit."""
KEEPALIVE_SECONDS: Final = 5.0
"""How often an idle subscription proves it is alive."""
STABLE_SECONDS: Final = 30.0
"""A connection that lasted this long resets the reconnect backoff."""
_LOST: Final = None
UNREADABLE: Final = {
    StatusCodes.BadNodeIdUnknown: "the server has no node {node} ({code}); check the id "
    "with edgegw browse",
    StatusCodes.BadNodeIdInvalid: "{node} is not a valid node id on this server ({code})",
    StatusCodes.BadAttributeIdInvalid: "{node} has no value: is it a variable? ({code})",
    StatusCodes.BadNotReadable: "{node} is not readable ({code})",
    StatusCodes.BadUserAccessDenied: "{node} may not be read by this user ({code})",
}
"""Status codes that say a tag's node cannot be read at all (not that its value is bad)."""


class SessionLost(Exception):
    """The session or its subscription died; the message says why."""


class OpcUaSource:
    """One OPC UA server (one `sources:` entry with `protocol: opcua`)."""

    def __init__(self, config: OpcUaSourceConfig, *, client_name: str = "edgegw") -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)
        self.client_name = client_name
        self._factory: SessionFactory | None = None
        self._tag_names = [tag.name for tag in config.tags]
        self._node_text = {tag.name: str(tag.node) for tag in config.tags}
        self._endpoint = urlsplit(config.url).netloc or config.url
        # Handles start at a random base: notifications of a subscription that is not ours
        # (a takeover gone wrong) then match no tag instead of the same position in our list.
        base = random.randrange(1 << 20, 1 << 30)
        self._handles = {base + index: tag.name for index, tag in enumerate(config.tags)}
        self._handle_of = {tag: handle for handle, tag in self._handles.items()}
        self._nodes: dict[str, ua.NodeId] = {}
        self._failed: dict[str, str] = {}  # tag -> why it is not read
        self._reported: set[str] = set()  # tags _report_failed named in the books
        self._queue: asyncio.Queue[list[Reading] | None] = asyncio.Queue(maxsize=64)
        self._lost: str | None = None
        self._server_identity: tuple[object, list[str]] | None = None
        self._subscription_id: int | None = None
        self._last_sequence: int | None = None
        self._last_publish = 0.0
        self._stale_after = 0.0
        self._published = asyncio.Event()
        self._read_chunk = ITEMS_PER_REQUEST
        self._create_chunk = ITEMS_PER_REQUEST
        self._next_poll: float | None = None
        self._next_retry = 0.0
        self.retries = 0  # passes of _retry_failed: tags that failed, tried again
        self.transfers = 0  # subscriptions taken over after a link loss
        self.republished = 0  # notification messages fetched again after a takeover
        self.republish_failures = 0  # missed messages the server could not send again

    # --- the Source contract ------------------------------------------------------------

    def health(self, now: float) -> SourceHealth:
        return self.status.snapshot(now)

    async def batches(self) -> AsyncIterator[list[Reading]]:
        backoff = Backoff(initial=0.5, maximum=30.0)
        client: Client | None = None
        try:
            while True:
                transferred = self.transfers
                connecting = True
                try:
                    client = await self._open()
                    connecting = False
                    initial = await self._start(client)
                except Exception as exc:
                    if client is not None:
                        if self.transfers != transferred:
                            # Keep the taken-over subscription on the server for the next try.
                            drop_transport(client)
                        else:
                            await close_quietly(client)
                        client = None
                    reason = describe_error(exc)
                    if connecting:
                        reason = f"cannot connect to {self._endpoint}: {reason}"
                    else:
                        reason = f"{self._endpoint}: {reason}"
                    if self._mark_down(reason):
                        yield self._all_bad(reason)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                connected_at = time.monotonic()
                if initial:
                    yield initial
                try:
                    while True:
                        yield await self._next_batch(client)
                except (SessionLost, OSError, TimeoutError, UaError) as exc:
                    reason = f"connection to {self._endpoint} lost: {describe_error(exc)}"
                drop_transport(client)
                client = None
                # What arrived before the loss is real data: hand it on before the bad marks.
                pending = self._drain()
                if pending:
                    yield pending
                self._mark_down(reason)
                yield self._all_bad(reason)
                if time.monotonic() - connected_at >= STABLE_SECONDS:
                    backoff.reset()
                await asyncio.sleep(backoff.next_delay())
        finally:
            if client is not None:
                # A clean stop deletes the subscription: nobody will take it over.
                await close_quietly(client)
            self.status.stopped()

    # --- connecting -----------------------------------------------------------------------

    async def _open(self) -> Client:
        if self._factory is None:
            self._factory = SessionFactory(self.config, client_name=self.client_name)
        self._lost = None
        client = await self._factory.connect()
        client.connection_lost_callback = self._on_connection_lost
        return client

    def _drain(self) -> list[Reading]:
        readings: list[Reading] = []
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            if batch is not None:
                readings.extend(batch)
        return readings

    async def _start(self, client: Client) -> list[Reading]:
        """Resolve the nodes and start reading; first readings (missed ones, failed tags)."""
        namespaces, started = await self._read_server_facts(client)
        identity = (started, namespaces)
        same_server = identity == self._server_identity
        self._server_identity = identity
        item_failures = {t: r for t, r in self._failed.items() if t in self._nodes}
        self._resolve(namespaces)
        self._next_poll = None
        self._next_retry = time.monotonic() + self.config.retry
        initial: list[Reading] = []
        if self.config.mode == "subscribe":
            replayed = await self._take_over(client) if same_server else None
            if replayed is None:
                await self._subscribe(client)
            else:
                initial.extend(replayed)
                # The transferred items kept their own failures; the retry picks them up.
                for tag, reason in item_failures.items():
                    if tag in self._nodes:
                        self._failed.setdefault(tag, reason)
        self.status.connected = True
        self.status.last_error = None
        self._last_publish = time.monotonic()
        self._report_failed()
        log.log(
            logging.WARNING if self._failed else logging.INFO,
            "source connected source=%s url=%s mode=%s nodes=%d failed=%d",
            self.name,
            self.config.url,
            self.config.mode,
            len(self._nodes),
            len(self._failed),
        )
        now = time.time()
        initial.extend(
            Reading(self.name, tag, None, "bad", now, now, reason)
            for tag, reason in self._failed.items()
        )
        return initial

    async def _read_server_facts(self, client: Client) -> tuple[list[str], object]:
        """Namespace array and start time in one Read; request sizes from the server's limits
        (a limit that is 0 or unreadable means none)."""
        values = await client.uaclient.read_attributes(
            [
                _standard(ObjectIds.Server_NamespaceArray),
                _standard(ObjectIds.Server_ServerStatus_StartTime),
                _standard(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
                _standard(
                    ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall
                ),
            ],
            AttributeIds.Value,
        )
        namespaces_value, started_value = values[0], values[1]
        if namespaces_value.StatusCode is not None:
            namespaces_value.StatusCode.check()
        namespaces = list(namespaces_value.Value.Value if namespaces_value.Value else [])
        started = started_value.Value.Value if started_value.Value else None
        self._read_chunk, self._create_chunk = _limit(values[2]), _limit(values[3])
        return namespaces, started

    def _resolve(self, namespaces: list[str]) -> None:
        self._nodes.clear()
        self._failed.clear()
        for tag in self.config.tags:
            try:
                self._nodes[tag.name] = tag.node.resolve(namespaces)
            except NamespaceMissing as exc:
                self._failed[tag.name] = str(exc)

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._signal_lost(describe_error(exc))

    def _signal_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        # When the queue is full the consumer still sees `_lost` after the batch it takes.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_LOST)

    # --- subscribe mode -------------------------------------------------------------------

    def _subscription_parameters(self) -> ua.CreateSubscriptionParameters:
        interval_ms = self.config.interval * 1000
        keepalive = max(1, math.ceil(KEEPALIVE_SECONDS / self.config.interval))
        # The server keeps the subscription this many intervals without a Publish request:
        # long enough to take it over after a link loss of up to `session_timeout`.
        lifetime = max(3 * keepalive, math.ceil(self.config.session_timeout / self.config.interval))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = interval_ms
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = lifetime
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        return params

    async def _subscribe(self, client: Client) -> None:
        result = await client.uaclient.create_subscription(
            self._subscription_parameters(), self._on_publish
        )
        self._subscription_id = result.SubscriptionId
        self._last_sequence = None
        # The server may revise interval and keep-alive; silence is judged by what it chose.
        interval = (result.RevisedPublishingInterval or self.config.interval * 1000) / 1000
        keepalive = result.RevisedMaxKeepAliveCount or 1
        self._stale_after = interval * keepalive * 1.5 + self.config.timeout
        await self._create_items(client, list(self._nodes))

    async def _create_items(self, client: Client, tags: list[str]) -> None:
        interval_ms = self.config.interval * 1000
        chunk_size = self._create_chunk
        for start in range(0, len(tags), chunk_size):
            chunk = tags[start : start + chunk_size]
            params = ua.CreateMonitoredItemsParameters()
            params.SubscriptionId = self._subscription_id
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.ItemsToCreate = [
                _item_request(
                    self._nodes[tag], self._handle_of[tag], interval_ms, self.config.queue_size
                )
                for tag in chunk
            ]
            results = await client.uaclient.create_monitored_items(params)
            for tag, result in zip(chunk, results, strict=True):
                if result.StatusCode.is_good():
                    self._failed.pop(tag, None)
                else:
                    self._failed[tag] = self._words(tag, result.StatusCode)

    async def _take_over(self, client: Client) -> list[Reading] | None:
        """Transfer the old subscription and check that it really publishes to us.

        Returns the readings of the messages missed meanwhile, or None to subscribe anew.
        Some servers accept TransferSubscriptions yet keep publishing to the dead session
        (asyncua's own server up to 2.1 does): with SendInitialValues the first publish is
        due within an interval, so waiting a little longer tells the two apart.
        """
        old_id = self._subscription_id
        if old_id is None:
            return None
        self._published.clear()
        replayed = await self._transfer(client, old_id)
        if replayed is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * self.config.interval + 2.0):
                await self._published.wait()
                return replayed
        log.warning(
            "source=%s server accepted the subscription transfer but publishes nothing; "
            "subscribing anew",
            self.name,
        )
        client.uaclient.session._subscription_callbacks.pop(old_id, None)
        with contextlib.suppress(UaError, OSError, TimeoutError):
            await client.uaclient.delete_subscriptions([old_id])
        # The missed messages were real samples even though the takeover failed.
        self._queue_nowait(replayed)
        return None

    def _queue_nowait(self, readings: list[Reading]) -> None:
        if readings:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(readings)

    async def _transfer(self, client: Client, subscription_id: int) -> list[Reading] | None:
        params = ua.TransferSubscriptionsParameters()
        params.SubscriptionIds = [subscription_id]
        params.SendInitialValues = True
        try:
            results = await client.uaclient.transfer_subscriptions(params)
        except UaError as exc:
            log.info("source=%s transfer refused (%s); subscribing anew", self.name, exc)
            return None
        if not results or not results[0].StatusCode.is_good():
            status = results[0].StatusCode.name if results else "no result"
            log.info("source=%s transfer refused (%s); subscribing anew", self.name, status)
            return None
        session = client.uaclient.session
        missed = sorted(n for n in results[0].AvailableSequenceNumbers or [] if self._after(n))
        replayed: list[Reading] = []
        fetched = 0
        for number in missed:
            try:
                message = await session.republish(subscription_id, number)
            except UaError as exc:
                self.republish_failures += 1
                log.warning(
                    "source=%s message %d missed during the outage is gone (%s)",
                    self.name,
                    number,
                    exc,
                )
                continue
            self.republished += 1
            fetched += 1
            readings, _status = self._readings_of(message)
            replayed.extend(readings)
            self._last_sequence = message.SequenceNumber
        # asyncua has no public call to attach a callback to a transferred subscription.
        session._subscription_callbacks[subscription_id] = self._on_publish
        session.ensure_publish_loop()
        self.transfers += 1
        log.info(
            "source=%s took over subscription %d, republished %d of %d missed messages",
            self.name,
            subscription_id,
            fetched,
            len(missed),
        )
        return replayed

    def _after(self, number: int) -> bool:
        return self._last_sequence is None or number > self._last_sequence

    def _readings_of(self, message: ua.NotificationMessage) -> tuple[list[Reading], str | None]:
        readings: list[Reading] = []
        status: str | None = None
        now = time.time()
        handles = self._handles
        name = self.name
        for data in message.NotificationData or ():
            if isinstance(data, ua.DataChangeNotification):
                for item in data.MonitoredItems:
                    tag = handles.get(item.ClientHandle)
                    if tag is not None:
                        readings.append(reading_of(name, tag, item.Value, now))
            elif isinstance(data, ua.StatusChangeNotification):
                status = f"subscription status {data.Status.name}"
        return readings, status

    async def _on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish loop calls this with each Publish response."""
        self._last_publish = time.monotonic()
        self._published.set()
        message = result.NotificationMessage
        readings, status = self._readings_of(message)
        if readings:
            # Waiting here holds back asyncua's next Publish request: the server queues,
            # nothing is dropped on our side.
            await self._queue.put(readings)
        if message.NotificationData:
            # Only once the readings are queued: a message lost before that is fetched
            # again with Republish after a takeover.
            self._last_sequence = message.SequenceNumber
            self.status.reads += 1
        if status is not None:
            self._signal_lost(status)

    # --- the loop between reconnects ------------------------------------------------------

    async def _next_batch(self, client: Client) -> list[Reading]:
        if self.config.mode == "poll":
            polled = await self._poll(client)
            if self._failed and time.monotonic() >= self._next_retry:
                self._next_retry = time.monotonic() + self.config.retry
                polled.extend(await self._retry_failed(client))
            return polled
        while True:
            batch: list[Reading] | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    batch = await self._queue.get()
            if batch is not None:
                return batch
            if self._lost is not None:
                raise SessionLost(self._lost)
            now = time.monotonic()
            if now - self._last_publish > self._stale_after:
                raise SessionLost("no publish response from the server")
            if self._failed and now >= self._next_retry:
                self._next_retry = now + self.config.retry
                retried = await self._retry_failed(client)
                if retried:
                    return retried

    async def _retry_failed(self, client: Client) -> list[Reading]:
        """Try the tags that failed alone again; readings for those that still fail."""
        namespaces = await client.get_namespace_array()
        self.retries += 1
        retry = list(self._failed)
        for tag_config in self.config.tags:
            if tag_config.name in self._failed and tag_config.name not in self._nodes:
                try:
                    self._nodes[tag_config.name] = tag_config.node.resolve(namespaces)
                except NamespaceMissing as exc:
                    self._failed[tag_config.name] = str(exc)
        ready = [tag for tag in retry if tag in self._nodes]
        if self.config.mode == "subscribe" and ready:
            await self._create_items(client, ready)
        elif ready:
            # Poll mode reads them with the next poll; a node still unknown reports itself.
            for tag in ready:
                self._failed.pop(tag, None)
        self._report_failed()
        now = time.time()
        return [
            Reading(self.name, tag, None, "bad", now, now, self._failed[tag])
            for tag in retry
            if tag in self._failed
        ]

    # --- poll mode ------------------------------------------------------------------------

    async def _poll(self, client: Client) -> list[Reading]:
        interval = self.config.interval
        now = time.monotonic()
        due = now if self._next_poll is None else self._next_poll
        if due > now:
            await asyncio.sleep(due - now)
        if self._lost is not None:
            raise SessionLost(self._lost)
        started = time.monotonic()
        readings = await self._read_all(client)
        self.status.polls += 1
        self.status.last_latency = time.monotonic() - started
        next_poll = due + interval
        now = time.monotonic()
        if next_poll < now:
            missed = int((now - next_poll) // interval) + 1
            self.status.overruns += missed
            next_poll += missed * interval
        self._next_poll = next_poll
        return readings

    async def _read_all(self, client: Client) -> list[Reading]:
        tags = [tag for tag in self._tag_names if tag in self._nodes]
        readings: list[Reading] = []
        chunk_size = self._read_chunk
        for start in range(0, len(tags), chunk_size):
            chunk = tags[start : start + chunk_size]
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.NodesToRead = [_read_value_id(self._nodes[tag]) for tag in chunk]
            values = await client.uaclient.read(params)
            self.status.reads += 1
            now = time.time()
            readings.extend(self._polled_readings(chunk, values, now))
        now = time.time()
        readings.extend(
            Reading(self.name, tag, None, "bad", now, now, reason)
            for tag, reason in self._failed.items()
        )
        return readings

    # --- state ------------------------------------------------------------------------------

    def _words(self, tag: str, code: ua.StatusCode) -> str:
        node = self._node_text[tag]
        template = UNREADABLE.get(code.value)
        return template.format(node=node, code=code.name) if template else code.name

    def _report_failed(self) -> None:
        """Name each tag that cannot be read in the source's books (and the log, once)."""
        status = self.status
        for tag, reason in self._failed.items():
            status.tag_failed(tag, reason, self._node_text[tag])
        # Only what this books itself: a node that answers a poll with a bad code is named
        # (and cleared) by the poll, and is not read again here (it was said to flip-flop).
        for tag in [t for t in self._reported if t not in self._failed]:
            status.tag_read(tag)
        self._reported = set(self._failed)

    def _polled_readings(
        self, chunk: list[str], values: list[ua.DataValue], now: float
    ) -> list[Reading]:
        """Poll mode: a node the server cannot read for us answers each read with a code
        that names it in the source's books, in words."""
        status = self.status
        out: list[Reading] = []
        for tag, value in zip(chunk, values, strict=True):
            code = value.StatusCode
            if code is not None and code.value in UNREADABLE:
                reason = self._words(tag, code)
                status.tag_failed(tag, reason, self._node_text[tag])
                out.append(Reading(self.name, tag, None, "bad", now, now, reason))
                continue
            if status.bad_tags:
                status.tag_read(tag)
            out.append(reading_of(self.name, tag, value, now))
        return out

    def _mark_down(self, reason: str) -> bool:
        """Record a failure; True when it is news (state or reason changed)."""
        news = self.status.mark_down(reason)
        if news:
            log.warning("source down source=%s reason=%s", self.name, reason)
        return news

    def _all_bad(self, reason: str) -> list[Reading]:
        now = time.time()
        return [Reading(self.name, tag, None, "bad", now, now, reason) for tag in self._tag_names]


def _standard(identifier: int) -> ua.NodeId:
    """A node of namespace 0 (the standard address space)."""
    return ua.NodeId(identifier, 0)  # type: ignore[arg-type]  # asyncua's wire-type aliases


def _limit(value: ua.DataValue) -> int:
    if value.StatusCode is not None and not value.StatusCode.is_good():
        return ITEMS_PER_REQUEST
    number = value.Value.Value if value.Value is not None else None
    if isinstance(number, int) and not isinstance(number, bool) and number > 0:
        return min(number, ITEMS_PER_REQUEST)
    return ITEMS_PER_REQUEST


def _read_value_id(node: ua.NodeId) -> ua.ReadValueId:
    rv = ua.ReadValueId()
    rv.NodeId = node
    rv.AttributeId = AttributeIds.Value
    return rv


def _item_request(
    node: ua.NodeId, handle: int, interval_ms: float, queue_size: int
) -> ua.MonitoredItemCreateRequest:
    params = ua.MonitoringParameters()
    params.ClientHandle = handle
    params.SamplingInterval = interval_ms
    params.QueueSize = queue_size
    params.DiscardOldest = True
    request = ua.MonitoredItemCreateRequest()
    request.ItemToMonitor = _read_value_id(node)
    request.MonitoringMode = ua.MonitoringMode.Reporting
    request.RequestedParameters = params
    return request
