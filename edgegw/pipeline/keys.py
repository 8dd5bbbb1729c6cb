"""Deterministic idempotency keys, so a consumer can drop a message it has seen before.

A telemetry key is UUIDv5(TELEMETRY_NAMESPACE, NAME) with NAME the fields gateway, source,
tag, TS, quality and VALUE joined by U+001F, where TS is the source timestamp in whole
microseconds since the Unix epoch (UTC) and VALUE the value as compact JSON (`null` when bad).
The same reading stored twice yields the same key and the outbox refuses the second copy; two
different values that a server stamps with the same (coarse) source timestamp stay two events.
"""

from __future__ import annotations

import hashlib
import uuid

TELEMETRY_NAMESPACE = uuid.UUID("6f0c2a1e-5b7d-5d2e-9a43-2f6e1c0b7a10")
EVENT_NAMESPACE = uuid.UUID("3c9a7f52-8d4e-5b61-9f2a-7e0d4c1b8a93")
# SHA-1 already fed with the namespace: every telemetry value needs a key, and copying this
# state is a third of the cost of `uuid.uuid5` (which also builds a UUID object to print it).
_TELEMETRY_SHA1 = hashlib.sha1(TELEMETRY_NAMESPACE.bytes, usedforsecurity=False)


# The RFC 4122 variant digit (10xx) for each hex digit a digest can hold there.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid5_hex(digest_hex: str) -> str:
    """The UUIDv5 text of a SHA-1 hex digest (of namespace bytes + name): its first 32 digits
    with the version and variant set. Text slicing: a third cheaper than setting bits in a
    bytearray and printing that (measured 1.11 vs 1.50 µs per key with the hash)."""
    h = digest_hex
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def uuid5_text(namespace_sha1: hashlib._Hash, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))` from a SHA-1 state holding `namespace.bytes`."""
    digest = namespace_sha1.copy()
    digest.update(name.encode())
    return uuid5_hex(digest.hexdigest())


def telemetry_key_name_head(gateway: str, source: str, tag: str) -> bytes:
    """The fixed start of a tag's telemetry key name (`gateway␟source␟tag␟`), made once per
    tag; per value only `TS␟quality␟VALUE` follows (`telemetry_key_from_head`). Bytes rather
    than a SHA-1 state fed with them: 10,000 such states held 2.2 MB, for 0.1 µs per value."""
    return f"{gateway}\x1f{source}\x1f{tag}\x1f".encode()


def telemetry_key_from_head(head: bytes, stamp: bytes, value_json: bytes) -> str:
    """The telemetry key of a tag's name head, `TS␟quality␟` as bytes, and the value's JSON."""
    digest = _TELEMETRY_SHA1.copy()
    digest.update(head + stamp + value_json)
    return uuid5_hex(digest.hexdigest())


def key_micros(source_ts: float) -> int:
    """The source timestamp as it enters a telemetry key: whole microseconds since the epoch."""
    return round(source_ts * 1_000_000)


def telemetry_key(
    gateway: str, source: str, tag: str, source_ts: float, quality: str, value_json: str
) -> str:
    return telemetry_key_at(gateway, source, tag, key_micros(source_ts), quality, value_json)


def telemetry_key_at(
    gateway: str, source: str, tag: str, micros: int, quality: str, value_json: str
) -> str:
    """`telemetry_key` with the timestamp already in microseconds (`key_micros`)."""
    name = f"{gateway}\x1f{source}\x1f{tag}\x1f{micros}\x1f{quality}\x1f{value_json}"
    return uuid5_text(_TELEMETRY_SHA1, name)


def event_key(gateway: str, event_type: str, key: list[tuple[str, str]]) -> str:
    """UUIDv5(EVENT_NAMESPACE, gateway␟type␟field=VALUE␟…) over the business key fields in
    the order of the config's `key:`, VALUE as compact JSON. No clock in it: the same batch
    detected again, even after a restart, gets the same id."""
    parts = [gateway, event_type, *(f"{name}={value_json}" for name, value_json in key)]
    return str(uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(parts)))
