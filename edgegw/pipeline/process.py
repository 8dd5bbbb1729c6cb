"""The pipeline: readings in; telemetry and business events for the outbox, violations for the
quarantine."""

from __future__ import annotations

import math
import os
import time

import orjson

from edgegw.config.model import GatewayConfig
from edgegw.outbox.quarantine import QuarantineRecord
from edgegw.outbox.store import PendingEvent
from edgegw.pipeline.events.detector import EventDetector
from edgegw.pipeline.keys import telemetry_key
from edgegw.pipeline.rules import TagRules, Violation
from edgegw.pipeline.telemetry import TelemetryBuilder
from edgegw.reading import Reading


class Pipeline:
    """Readings in; telemetry and business events for the outbox, violations for quarantine."""

    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = config.gateway.id
        self.rules = TagRules(config)
        self.telemetry = TelemetryBuilder(config)
        self.events = EventDetector(config)
        self.quarantined = 0  # quarantine records opened (telemetry and events), since start

    def carry_from(self, old: Pipeline) -> list[QuarantineRecord]:
        """After a reload: counters, last published values, and the last value of every tag
        (edge triggers compare with it). Sequence rules start afresh: the first value after a
        reload is accepted as a start, as after a restart; a violation still open goes on in
        its record. Returns the last updates of violations whose tag lost its rule."""
        self.quarantined = old.quarantined
        ended = self.rules.carry_from(old.rules)
        self.telemetry.carry_from(old.telemetry)
        self.events.carry_from(old.events)
        return [old._record(violation) for violation in ended]

    def flush(self) -> list[QuarantineRecord]:
        """At a stop: the counts of lasting violations not written yet, for the outbox."""
        return [self._record(violation) for violation in self.rules.flush()]

    def process(self, readings: list[Reading]) -> tuple[list[PendingEvent], list[QuarantineRecord]]:
        readings = _finite(readings)
        checked, violations = self.rules.apply(readings)
        out = self.telemetry.build(checked)
        records = [self._record(violation) for violation in violations]
        events, held = self.events.process(checked)
        out.extend(events)
        records.extend(held)
        self.quarantined += sum(1 for record in records if not record.continues)
        return out, records

    def _record(self, violation: Violation) -> QuarantineRecord:
        """A violation's record; a lasting one's updates carry the key and ts of the reading
        that opened it, so the outbox adds them to that record."""
        reading = violation.reading
        first = violation.opened or reading
        key = telemetry_key(
            self.gateway,
            first.source,
            first.tag,
            first.source_ts,
            "good",
            orjson.dumps(first.value).decode(),
        )
        return QuarantineRecord(
            key=key,
            kind="telemetry",
            subject=f"{reading.source}.{reading.tag}",
            rule=violation.rule,
            value=reading.value,
            reason=violation.reason,
            topic=self.telemetry.topic_of(reading.source, reading.tag),
            payload=None,
            trace=os.urandom(8).hex(),
            ts=first.source_ts,
            created=time.time(),
            count=violation.count,
            last_ts=reading.source_ts,
            continues=violation.opened is not None,
        )


def _finite(readings: list[Reading]) -> list[Reading]:
    """NaN and infinities are never good: not for telemetry, rules, nor event fields."""
    for index, reading in enumerate(readings):  # noqa: B007 - index is used after the loop
        value = reading.value
        if isinstance(value, float) and not math.isfinite(value):
            break
    else:
        return readings
    out = readings[:index]
    for reading in readings[index:]:
        value = reading.value
        if reading.quality != "bad" and isinstance(value, float) and not math.isfinite(value):
            reading = reading.as_bad(f"value is {value}")
        out.append(reading)
    return out
