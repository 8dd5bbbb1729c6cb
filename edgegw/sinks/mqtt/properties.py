"""MQTT PUBLISH packets and their MQTT 5 properties, encoded without paho (see client.py)."""

from __future__ import annotations

from collections.abc import Sequence

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def _utf8(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"MQTT string longer than 65535 bytes: {value[:40]!r}…")
    return len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# Property keys and content types repeat on every message ("id", "schema", "trace",
# "application/json"): their encoded form is cached. Values (ids, traces) are not.
_FIELD_CACHE: dict[tuple[bytes, str], bytes] = {}
_FIELD_CACHE_MAX = 1024


def _prefixed(prefix: bytes, value: str) -> bytes:
    cached = _FIELD_CACHE.get((prefix, value))
    if cached is None:
        cached = prefix + _utf8(value)
        if len(_FIELD_CACHE) < _FIELD_CACHE_MAX:
            _FIELD_CACHE[(prefix, value)] = cached
    return cached


def pack_publish_properties(
    user_properties: Sequence[tuple[str, str]], content_type: str | None
) -> bytes:
    """The property block of an MQTT 5 PUBLISH (length prefix included), as paho's
    `Properties.pack()` would produce it for ContentType (0x03) and UserProperty (0x26)."""
    parts = [] if content_type is None else [_prefixed(b"\x03", content_type)]
    for key, value in user_properties:
        parts.append(_prefixed(b"\x26", key))
        parts.append(_utf8(value))
    body = b"".join(parts)
    n = len(body)
    # One length byte up to 127 bytes of properties, the common case.
    return (bytes((n,)) if n < 0x80 else _varint(n)) + body


_MAX_REMAINING = 268_435_455  # the largest remaining length MQTT can encode (4 bytes)


def encode_publish(topic: str, mid: int, properties: bytes | None, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH packet (not retained, not a duplicate): `properties` is the MQTT 5
    property block from `pack_publish_properties` (None for MQTT 3.1.1)."""
    name = _utf8(topic)
    header = name + mid.to_bytes(2, "big") + (b"" if properties is None else properties)
    size = len(header) + len(payload)
    if size > _MAX_REMAINING:
        raise ValueError(f"an MQTT packet holds at most 256 MB; this one would be {size} bytes")
    return b"\x32" + _varint(size) + header + payload


class PackedProperties(Properties):
    """Properties whose wire form is already encoded.

    paho only calls `pack()` on the properties of an outgoing PUBLISH (and would `str()` them
    if paho's own logger were enabled, which we never do). `Properties.__init__` is skipped on
    purpose: it builds its lookup tables per instance, the largest per-message cost in paho.
    """

    _packed: bytes

    def __init__(self, packed: bytes) -> None:  # no super().__init__(): see the class docstring
        # object.__setattr__: Properties.__setattr__ accepts only MQTT property names.
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:
        return f"<packed PUBLISH properties, {len(self.pack())} bytes>"

    __repr__ = __str__
