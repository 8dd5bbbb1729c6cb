"""Deterministic idempotency keys, so a consumer can drop a message it has seen before.

A telemetry key is UUIDv5(TELEMETRY_NAMESPACE, NAME) with NAME the fields gateway, source,
tag, TS, quality and VALUE joined by U+001F, where TS is the source timestamp in whole
microseconds since the Unix epoch (UTC) and VALUE the value as compact JSON (`null` when bad).
The same reading stored twice yields the same key and the outbox refuses the second copy; two
different values that a server stamps with the same (coarse) source timestamp stay two events.
"""

from __future__ import annotations

import uuid

TELEMETRY_NAMESPACE = uuid.UUID("6f0c2a1e-5b7d-5d2e-9a43-2f6e1c0b7a10")
EVENT_NAMESPACE = uuid.UUID("3c9a7f52-8d4e-5b61-9f2a-7e0d4c1b8a93")


def telemetry_key(
    gateway: str, source: str, tag: str, source_ts: float, quality: str, value_json: str
) -> str:
    micros = round(source_ts * 1_000_000)
    name = f"{gateway}\x1f{source}\x1f{tag}\x1f{micros}\x1f{quality}\x1f{value_json}"
    return str(uuid.uuid5(TELEMETRY_NAMESPACE, name))


def event_key(gateway: str, event_type: str, key: list[tuple[str, str]]) -> str:
    """UUIDv5(EVENT_NAMESPACE, gateway␟type␟field=VALUE␟…) over the business key fields in
    the order of the config's `key:`, VALUE as compact JSON. No clock in it: the same batch
    detected again, even after a restart, gets the same id."""
    parts = [gateway, event_type, *(f"{name}={value_json}" for name, value_json in key)]
    return str(uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(parts)))
