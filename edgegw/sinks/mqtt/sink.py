"""The MQTT sink: outbox messages to MQTT messages (one per value, or telemetry batched per
source) on the topics of its templates, the retained schema announcements at every connect,
refusals in words."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from edgegw.errors import SinkError
from edgegw.outbox.segments import EVENT, TELEMETRY, StoredEvent
from edgegw.sinks.base import OnResult
from edgegw.sinks.mqtt.client import MqttClient
from edgegw.sinks.mqtt.reasons import reason_text
from edgegw.sinks.mqtt.settings import MqttSettings

log = logging.getLogger(__name__)

BATCH_SCHEMA = "edgegw.batch/1"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic templates with every placeholder filled but the per-message ones."""

    telemetry: str  # {source} and {tag} left
    event: str  # {type} left
    gap: str


def fill_except(template: str, fields: dict[str, str], *keep: str) -> str:
    """`template` with `fields` filled in and the placeholders named in `keep` left as they
    are (they are filled per message)."""
    for name in keep:
        template = template.replace("{" + name + "}", f"\x00{name}\x00")
    text = template.format(**fields)
    for name in keep:
        text = text.replace(f"\x00{name}\x00", "{" + name + "}")
    return text


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """`mqtt.batch`: telemetry as one message per source and flush."""

    max_values: int
    max_delay: float  # seconds a young batch may wait to fill
    topic: str  # template with {source}; the other placeholders already filled in
    gateway: str


@dataclass(frozen=True, slots=True)
class MqttSinkSettings:
    """Everything the MQTT sink needs; compared as a whole on a reload."""

    connection: MqttSettings
    qos: int
    window: int  # messages in flight at most
    topics: Topics
    announcements: tuple[tuple[str, bytes], ...] = ()  # (topic, payload), retained at connect
    batch: BatchSettings | None = None


class MqttSink:
    """One MQTT broker. A fresh client (and clean session) per `connect()`: the outbox stays the
    only queue, paho never re-sends anything by itself."""

    def __init__(self, settings: MqttSinkSettings, on_result: OnResult, name: str = "mqtt") -> None:
        self.name = name
        self.settings = settings
        self.address = settings.connection.address
        self._on_result = on_result
        self._client: MqttClient | None = None
        self._window = settings.window
        # token -> the rows of that message: a row's seq, or a batch's last seq
        self._in_flight: dict[int, list[StoredEvent]] = {}
        self._topics: dict[tuple[str, str], str] = {}  # (source, tag) or ("", type) -> topic

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def batching(self) -> int:
        """Rows the forwarder should hold ready so that a batch can fill (1: no batching)."""
        batch = self.settings.batch
        return 1 if batch is None else batch.max_values

    def describe(self) -> str:
        connection = self.settings.connection
        tls = "on" if connection.tls is not None else "off"
        return f"address={connection.address} tls={tls} user={connection.username or '-'}"

    async def connect(self) -> None:
        self._in_flight.clear()
        client = MqttClient(self.settings.connection, on_ack=self._on_ack)
        self._client = client
        await client.connect()
        # MQTT 5 forbids more unacknowledged QoS 1 publishes than the broker's Receive Maximum;
        # a strict broker disconnects a client that exceeds it (0x93).
        self._window = min(self.settings.window, client.receive_maximum)
        self._announce(client)

    def room(self) -> int:
        return self._window - len(self._in_flight) if self.connected else 0

    def in_flight(self) -> int:
        return len(self._in_flight)

    async def wait_lost(self) -> str:
        client = self._client
        if client is None:
            return "not connected"
        reason = await client.wait_disconnected()
        self._in_flight.clear()
        return reason

    async def close(self) -> None:
        client = self._client
        if client is not None:
            await client.close()
        self._in_flight.clear()

    def _announce(self, client: MqttClient) -> None:
        """Publish the retained schema messages; their acks carry negative tokens (ignored)."""
        for index, (topic, payload) in enumerate(self.settings.announcements):
            try:
                client.publish(topic, payload, qos=1, token=-1 - index, retain=True)
            except SinkError as exc:
                log.warning("cannot publish a schema topic=%s error=%s", topic, exc)
                return

    def send(self, ready: deque[StoredEvent], room: int) -> float | None:
        client = self._client
        if client is None or not client.connected:
            return None
        if self.settings.batch is None:
            self._publish(client, ready, room)
            return None
        return self._publish_batches(client, ready, room)

    def _publish(self, client: MqttClient, ready: deque[StoredEvent], count: int) -> None:
        in_flight = self._in_flight
        qos = self.settings.qos
        for _ in range(min(count, len(ready))):
            row = ready.popleft()
            message = row.fields()
            client.publish(
                self._topic(row, message),
                row.payload,
                qos=qos,
                token=row.seq,
                user_properties=(
                    ("id", message["id"]),
                    ("schema", message["schema"]),
                    ("trace", message.get("trace", "")),
                ),
            )
            in_flight[row.seq] = [row]

    def _topic(self, row: StoredEvent, message: dict[str, Any]) -> str:
        """The topic of one message, from its kind and fields (cached: a few hundred tags)."""
        topics = self.settings.topics
        if row.kind == TELEMETRY:
            key = (row.source, str(message["tag"]))
            topic = self._topics.get(key)
            if topic is None:
                topic = topics.telemetry.format(source=key[0], tag=key[1])
                self._topics[key] = topic
            return topic
        if row.kind == EVENT:
            key = ("", str(message["type"]))
            topic = self._topics.get(key)
            if topic is None:
                topic = topics.event.format(type=key[1])
                self._topics[key] = topic
            return topic
        return topics.gap

    def _publish_batches(
        self, client: MqttClient, ready: deque[StoredEvent], room: int
    ) -> float | None:
        """Publish up to `room` messages, telemetry as `edgegw.batch/1` per source; returns
        how long to wait for a fuller batch when nothing was worth sending yet."""
        batch = self.settings.batch
        assert batch is not None
        published = 0
        while room > 0 and ready:
            head = ready[0]
            if head.kind != TELEMETRY:
                self._publish(client, ready, 1)
                room -= 1
                published += 1
                continue
            source = head.source
            items = []
            for row in ready:
                if row.kind == TELEMETRY and row.source == source:
                    items.append(row)
                    if len(items) == batch.max_values:
                        break
            age = time.time() - head.created
            if len(items) < batch.max_values and age < batch.max_delay and not published:
                return batch.max_delay - age
            taken = {row.seq for row in items}
            kept = [row for row in ready if row.seq not in taken]
            ready.clear()
            ready.extend(kept)
            self._publish_batch(client, batch, source, items)
            room -= 1
            published += 1
        return None

    def _publish_batch(
        self, client: MqttClient, batch: BatchSettings, source: str, rows: list[StoredEvent]
    ) -> None:
        first, last = rows[0].seq, rows[-1].seq
        head = orjson.dumps({"schema": BATCH_SCHEMA, "gateway": batch.gateway, "source": source})[
            :-1
        ]
        payload = b"".join(
            (
                head,
                b',"seq_first":%d,"seq_last":%d,"items":[' % (first, last),
                b",".join(row.payload for row in rows),
                b"]}",
            )
        )
        client.publish(
            batch.topic.format(source=source),
            payload,
            qos=self.settings.qos,
            token=last,
            user_properties=(("schema", BATCH_SCHEMA), ("count", str(len(rows)))),
        )
        self._in_flight[last] = rows

    def _on_ack(self, token: int, reason_code: int) -> None:
        rows = self._in_flight.pop(token, None)
        if rows is None:
            return  # an announcement, or a message of a connection since lost
        if reason_code < 0x80:
            self._on_result(rows, None)
            return
        topic = self._topic_of(rows)
        for refused in rows:
            message = refused.fields()
            log.error(
                "broker refused a publish (%s); the event stays in the outbox topic=%s "
                "seq=%d id=%s reason_code=0x%02X trace=%s",
                reason_text(reason_code),
                topic,
                refused.seq,
                message.get("id"),
                reason_code,
                message.get("trace"),
                extra={"trace": message.get("trace")},
            )
        self._on_result(rows, reason_text(reason_code))

    def _topic_of(self, rows: Sequence[StoredEvent]) -> str:
        batch = self.settings.batch
        if len(rows) == 1 and (batch is None or rows[0].kind != TELEMETRY):
            return self._topic(rows[0], rows[0].fields())
        assert batch is not None
        return batch.topic.format(source=rows[0].source)
