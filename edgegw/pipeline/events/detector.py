"""Turn tag changes into business events: triggers, fields at the trigger instant, contracts."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import BaseModel

from edgegw.config.model import GatewayConfig
from edgegw.outbox.quarantine import QuarantineRecord
from edgegw.outbox.store import PendingEvent
from edgegw.pipeline.events.config import GATEWAY_FIELDS, EventConfig
from edgegw.pipeline.events.contract import build_contract, check_contract, normalise
from edgegw.pipeline.keys import event_key
from edgegw.reading import Reading, Value
from edgegw.timefmt import iso_utc

EVENT_SCHEMA: Final = "edgegw.event/1"
FIELD_WAIT: Final = 10.0
"""Seconds a fired event waits for a key or required field that has no value yet."""
_UNSEEN: Final = object()


@dataclass(slots=True)
class _Declared:
    config: EventConfig
    contract: type[BaseModel]
    topic: str
    condition_state: bool | None = None
    pending: tuple[float, float] | None = None  # (trigger instant, monotonic deadline)


class EventDetector:
    """Keeps the last good value of every tag and fires the declared events.

    A batch of readings is one instant (one poll, one notification): all its values are
    taken in first, then triggers are judged, so fields read in the same poll as the trigger
    are the values of that same poll. A bad or uncertain reading makes the tag's value
    unknown (None). State triggers (`changes_to`, `when`) also fire on the first value seen
    after a start: an event that happened while the gateway was down is not lost, and one
    already sent has the same id (the outbox refuses it). Edge triggers (`changes`, `rises`,
    `falls`) need a known previous value.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = config.gateway.id
        fields = config.topic_fields()
        self.gateway_fields: dict[str, Any] = {
            "gateway.id": config.gateway.id,
            "gateway.site": config.gateway.site,
            "gateway.area": config.gateway.area,
            "gateway.line": config.gateway.line,
        }
        self._declared = [
            _Declared(
                event,
                build_contract(event),
                config.mqtt.event_topic.format(**fields, type=event.type),
            )
            for event in config.events
        ]
        self._watched = {ref for d in self._declared for ref in d.config.tag_refs()}
        self.latest: dict[str, Value] = {}
        self.detected = 0
        self.quarantined = 0

    def carry_from(self, old: EventDetector) -> None:
        """After a reload: the last value of every tag still watched, and the counters."""
        self.latest = {ref: value for ref, value in old.latest.items() if ref in self._watched}
        self.detected = old.detected
        self.quarantined = old.quarantined

    def process(self, readings: list[Reading]) -> tuple[list[PendingEvent], list[QuarantineRecord]]:
        if not self._declared:
            return [], []
        events: list[PendingEvent] = []
        quarantined: list[QuarantineRecord] = []
        changed: dict[str, tuple[Any, Value, float]] = {}
        seen: set[str] = set()
        for reading in readings:
            ref = f"{reading.source}.{reading.tag}"
            if ref not in self._watched:
                continue
            if ref in seen:
                # A second sample of a tag (OPC UA queues, replayed messages) starts a new
                # instant: judge the one before, or a short pulse would go unseen.
                self._judge(changed, events, quarantined)
                changed, seen = {}, set()
            seen.add(ref)
            new = reading.value if reading.quality == "good" else None
            old = self.latest.get(ref, _UNSEEN)
            self.latest[ref] = new
            if old is _UNSEEN or old != new or type(old) is not type(new):
                changed[ref] = (old, new, reading.source_ts)
        self._judge(changed, events, quarantined)
        return events, quarantined

    def _judge(
        self,
        changed: dict[str, tuple[Any, Value, float]],
        events: list[PendingEvent],
        quarantined: list[QuarantineRecord],
    ) -> None:
        now = time.monotonic()
        for declared in self._declared:
            fired_at = self._fired(declared, changed) if changed else None
            if fired_at is not None:
                self.detected += 1
                declared.pending = (fired_at, now + FIELD_WAIT)
            if declared.pending is None:
                continue
            stamp, deadline = declared.pending
            if now < deadline and self._missing(declared):
                # Right after a start another source may not have been read yet.
                continue
            declared.pending = None
            event, record = self._build(declared, stamp)
            if event is not None:
                events.append(event)
            if record is not None:
                self.quarantined += 1
                quarantined.append(record)

    def _missing(self, declared: _Declared) -> bool:
        """A key or required field's tag has not been read at all since the start (another
        source not polled yet). A tag read bad at the trigger does not wait: its event goes
        to the quarantine saying so, rather than carrying values of a later instant."""
        config = declared.config
        for name, ref in config.fields.items():
            if ref in GATEWAY_FIELDS:
                continue
            rule = config.contract.get(name)
            required = name in config.key or (rule is not None and rule.required)
            if required and ref not in self.latest:
                return True
        return False

    def _fired(
        self, declared: _Declared, changed: dict[str, tuple[Any, Value, float]]
    ) -> float | None:
        """The trigger instant (source timestamp) when the event fires in this batch."""
        trigger = declared.config.trigger
        kind = trigger.kind
        if kind == "when":
            condition = trigger.condition
            assert condition is not None
            stamps = [changed[ref][2] for ref in condition.tags if ref in changed]
            if not stamps:
                return None
            holds = condition.evaluate(self.latest)
            before, declared.condition_state = declared.condition_state, holds
            return max(stamps) if holds is True and before is not True else None
        watched = trigger.watched
        assert watched is not None
        if watched not in changed:
            return None
        old, new, stamp = changed[watched]
        if new is None:
            return None
        if kind == "changes_to":
            return stamp if new == trigger.changes_to and old != new else None
        if old is _UNSEEN or old is None:
            return None
        if kind == "changes":
            return stamp
        if isinstance(new, bool) or isinstance(old, bool):
            rose = old is False and new is True
            fell = old is True and new is False
        elif isinstance(new, int | float) and isinstance(old, int | float):
            rose, fell = new > old, new < old
        else:
            return None
        return stamp if (rose if kind == "rises" else fell) else None

    def _build(
        self, declared: _Declared, stamp: float
    ) -> tuple[PendingEvent | None, QuarantineRecord | None]:
        config = declared.config
        raw = {
            name: self.gateway_fields[ref] if ref in GATEWAY_FIELDS else self.latest.get(ref)
            for name, ref in config.fields.items()
        }
        data, problems = check_contract(declared.contract, normalise(config, raw))
        key_values = [(name, orjson.dumps(data[name]).decode()) for name in config.key]
        key = event_key(self.gateway, config.type, key_values)
        trace = os.urandom(8).hex()
        now = time.time()
        payload: dict[str, Any] = {
            "schema": EVENT_SCHEMA,
            "id": key,
            "gateway": self.gateway,
            "type": config.type,
            "key": {name: data[name] for name in config.key},
            "data": {name: value for name, value in data.items() if name not in config.key},
            "ts": iso_utc(stamp),
            "seq": 0,
            "trace": trace,
        }
        if problems:
            record = QuarantineRecord(
                key=key,
                kind="event",
                subject=config.type,
                rule="contract",
                value={name: raw[name] for name in raw},
                reason="; ".join(problems),
                topic=declared.topic,
                payload=payload,
                trace=trace,
                ts=stamp,
                created=now,
            )
            return None, record
        return PendingEvent(key, EVENT_SCHEMA, declared.topic, payload, trace, now), None
