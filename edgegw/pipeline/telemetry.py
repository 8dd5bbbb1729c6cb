"""Readings to telemetry messages: report-by-exception, heartbeat, envelope, key and trace."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

from edgegw.config.model import GatewayConfig
from edgegw.config.types import parse_deadband
from edgegw.outbox.store import PendingEvent
from edgegw.pipeline.keys import key_micros, telemetry_key_from_head, telemetry_key_name_head
from edgegw.reading import Reading, Value
from edgegw.timefmt import iso_utc

TELEMETRY_SCHEMA = "edgegw.telemetry/1"
_new = tuple.__new__


@dataclass(slots=True)
class _TagState:
    topic: str
    key_head: bytes  # keys.telemetry_key_name_head of the tag
    unit: str | None
    deadband: float | None
    deadband_percent: bool
    heartbeat: float | None
    published: bool = False
    value: Value = None
    quality: str = ""
    reason: str | None = None
    published_at: float = 0.0  # monotonic


class TelemetryBuilder:
    """Decides which readings become telemetry and builds their envelopes.

    A tag is published when it is first seen, when its quality or bad-reason changes, when its
    value moves beyond the deadband (any change without one), and again after `heartbeat`
    without a publish. The decision uses the monotonic clock, so a clock step cannot stop it.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = config.gateway.id
        self._tags: dict[tuple[str, str], _TagState] = {}
        # The same states by source, then tag: a batch holds one source's readings, so the
        # builder looks its source up once and each tag by its name (no key tuple per value).
        self._by_source: dict[str, dict[str, _TagState]] = {}
        fields = config.topic_fields()
        for source in config.data_sources():
            for tag in source.tags:
                size, percent = (None, False)
                if tag.deadband is not None:
                    size, percent = parse_deadband(tag.deadband)
                topic = config.mqtt.topic.format(**fields, source=source.name, tag=tag.name)
                state = _TagState(
                    topic=topic,
                    key_head=telemetry_key_name_head(self.gateway, source.name, tag.name),
                    unit=tag.unit,
                    deadband=size,
                    deadband_percent=percent,
                    heartbeat=tag.heartbeat if tag.heartbeat is not None else source.heartbeat,
                )
                self._tags[(source.name, tag.name)] = state
                self._by_source.setdefault(source.name, {})[tag.name] = state
        self.suppressed = 0  # readings not published: unchanged within deadband

    def carry_from(self, old: TelemetryBuilder) -> None:
        """Keep what was last published of the tags both configs have, so a reload does not
        publish every unchanged value again."""
        for key, state in self._tags.items():
            before = old._tags.get(key)
            if before is not None and before.published:
                state.published = True
                state.value, state.quality, state.reason = (
                    before.value,
                    before.quality,
                    before.reason,
                )
                state.published_at = before.published_at
        self.suppressed = old.suppressed

    def topic_of(self, source: str, tag: str) -> str:
        return self._tags[(source, tag)].topic

    def build(self, readings: list[Reading]) -> list[PendingEvent]:
        # The loop runs once per value read: what is the same for many values (the source's
        # tags, a timestamp's text and key stamp) is worked out once per change of it.
        events: list[PendingEvent] = []
        append = events.append
        dumps = orjson.dumps
        now = time.monotonic()
        gateway = self.gateway
        changed = self._changed
        suppressed = 0
        tags: dict[str, _TagState] = {}
        last_source: str | None = None
        last_ts = last_received = -1.0
        last_quality = ""
        ts_text = received_text = ""
        micros = 0
        stamp = b""
        # One random draw for the whole call: a syscall per value costs more than the rest of
        # its trace id.
        traces = os.urandom(8 * len(readings)).hex()
        for index, (source, tag, value, quality, source_ts, received_ts, reason) in enumerate(
            readings
        ):
            if source != last_source:
                last_source = source
                tags = self._by_source.get(source, {})
            state = tags.get(tag)
            if state is None:
                continue
            if quality == "good" and type(value) is float and not math.isfinite(value):
                # A non-finite number is never published as a good value.
                value, quality, reason = None, "bad", f"value is {value}"
            if not changed(state, value, quality, reason, now):
                suppressed += 1
                continue
            state.published = True
            state.value, state.quality, state.reason = value, quality, reason
            state.published_at = now
            if source_ts != last_ts or quality != last_quality:
                if source_ts != last_ts:
                    last_ts = source_ts
                    ts_text = iso_utc(source_ts)
                    micros = key_micros(source_ts)
                last_quality = quality
                stamp = f"{micros}\x1f{quality}\x1f".encode()
            if received_ts != last_received:
                last_received = received_ts
                received_text = iso_utc(received_ts)
            trace = traces[16 * index : 16 * index + 16]
            key = telemetry_key_from_head(state.key_head, stamp, dumps(value))
            payload: dict[str, Any] = {
                "schema": TELEMETRY_SCHEMA,
                "id": key,
                "gateway": gateway,
                "source": source,
                "tag": tag,
                "value": value,
                "unit": state.unit,
                "quality": quality,
                "ts": ts_text,
                "gw_ts": received_text,
                "seq": 0,  # assigned by the outbox at commit
                "trace": trace,
            }
            if reason is not None:
                payload["reason"] = reason
            # tuple.__new__: see Outbox.claim (a named tuple's __new__ doubles the cost).
            append(
                _new(
                    PendingEvent,
                    (key, TELEMETRY_SCHEMA, state.topic, payload, trace, received_ts, micros),
                )
            )
        self.suppressed += suppressed
        return events

    @staticmethod
    def _changed(
        state: _TagState, value: Value, quality: str, reason: str | None, now: float
    ) -> bool:
        if not state.published or quality != state.quality or reason != state.reason:
            return True
        if state.heartbeat is not None and now - state.published_at >= state.heartbeat:
            return True
        last = state.value
        if value == last and type(value) is type(last):
            return False
        if state.deadband is None or isinstance(value, bool) or isinstance(last, bool):
            return True
        if not isinstance(value, int | float) or not isinstance(last, int | float):
            return True
        band = abs(last) * state.deadband / 100.0 if state.deadband_percent else state.deadband
        return abs(value - last) > band
