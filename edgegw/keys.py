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


def telemetry_key(
    gateway: str, source: str, tag: str, source_ts: float, quality: str, value_json: str
) -> str:
    micros = round(source_ts * 1_000_000)
    name = f"{gateway}\x1f{source}\x1f{tag}\x1f{micros}\x1f{quality}\x1f{value_json}"
    return str(uuid.uuid5(TELEMETRY_NAMESPACE, name))
