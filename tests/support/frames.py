"""Modbus RTU frames built by the tests themselves, independent of the simulators' and the
gateway's CRC code (which share our assumptions)."""

from __future__ import annotations


def crc(data: bytes) -> bytes:
    """Modbus CRC-16, low byte first: bit by bit, straight from the spec."""
    value = 0xFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return value.to_bytes(2, "little")


def frame(*body: int) -> bytes:
    """A frame of these bytes with its CRC appended."""
    raw = bytes(body)
    return raw + crc(raw)
