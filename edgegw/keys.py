"""Deterministic idempotency keys, so a consumer can drop a message it has seen before.

A telemetry key is UUIDv5(TELEMETRY_NAMESPACE, "gateway\\x1fsource\\x1ftag\\x1fTS") where TS is the
source timestamp in whole microseconds since the Unix epoch (UTC). The same reading stored
twice yields the same key; the outbox refuses the second copy.
"""

from __future__ import annotations

import uuid

TELEMETRY_NAMESPACE = uuid.UUID("6f0c2a1e-5b7d-5d2e-9a43-2f6e1c0b7a10")


def telemetry_key(gateway: str, source: str, tag: str, source_ts: float) -> str:
    micros = round(source_ts * 1_000_000)
    return str(uuid.uuid5(TELEMETRY_NAMESPACE, f"{gateway}\x1f{source}\x1f{tag}\x1f{micros}"))
