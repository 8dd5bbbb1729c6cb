"""Modbus RTU master: one request, one validated reply, on a serial line or RTU-over-TCP.

RTU has no transaction id, so a reply is accepted only if every part of it fits the request
it answers: unit id, function code, byte count, CRC. Anything else, and every timeout, leaves
the line to settle (input discarded until it has been quiet for the device's timeout), so a
late reply is dropped, never read as the answer to the next request. A reply later than twice
the timeout that also has the same unit, function and length as the next request would be
indistinguishable on any RTU line: set `timeout` above the device's worst response time.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass

from edgegw.sources.modbus.channel import Channel

FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

_CRC_TABLE: list[int] = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0xA001 if _crc & 1 else _crc >> 1
    _CRC_TABLE.append(_crc)


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    return frame + crc16(frame).to_bytes(2, "little")


def read_request(unit: int, table: str, start: int, count: int) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, FUNCTION_CODES[table], start, count))


def reply_bytes(table: str, count: int) -> int:
    """Data bytes in the reply to a read of `count` registers or bits."""
    return 2 * count if table in ("holding", "input") else (count + 7) // 8


class RtuError(Exception):
    """A failed transaction; `kind` is what the metrics count it as."""

    kind = "error"


class NoReply(RtuError):
    kind = "timeout"


class BadCrc(RtuError):
    kind = "crc"


class WrongReply(RtuError):
    """Another unit, another function, or the wrong length: not the answer to this request."""

    kind = "wrong_reply"


class ExceptionReply(RtuError):
    kind = "exception"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Transaction:
    """The data bytes of a validated reply and how long the device took."""

    data: bytes
    seconds: float


class RtuMaster:
    """Sends one request at a time on `channel`, with the line's inter-frame silence."""

    def __init__(self, channel: Channel, frame_gap: float, char_time: float = 0.0) -> None:
        self.channel = channel
        self.frame_gap = frame_gap
        self.char_time = char_time  # seconds per character on a serial line; 0 over TCP
        self._line_free_at = 0.0  # monotonic: the silence after the last frame has passed
        self.discarded_bytes = 0  # late or garbled input dropped while settling

    async def read(
        self,
        unit: int,
        table: str,
        start: int,
        count: int,
        timeout: float,  # noqa: ASYNC109
    ) -> Transaction:
        """Registers as big-endian bytes (2 per register) or packed bits (LSB first)."""
        request = read_request(unit, table, start, count)
        expected = reply_bytes(table, count)
        try:
            return await self._transact(request, expected, timeout)
        except ExceptionReply:
            self._line_free_at = time.monotonic() + self.frame_gap
            raise
        except RtuError:
            # Whatever is still coming belongs to no request we will send.
            self.discarded_bytes += await self.channel.settle(quiet=timeout, limit=4 * timeout)
            self._line_free_at = time.monotonic() + self.frame_gap
            raise

    async def _transact(
        self,
        request: bytes,
        expected: int,
        timeout: float,  # noqa: ASYNC109
    ) -> Transaction:
        channel = self.channel
        wait = self._line_free_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        # Bytes that arrived while the line was idle answer nothing we asked.
        self.discarded_bytes += channel.discard()
        unit, function = request[0], request[1]
        await channel.write(request)
        sent = time.monotonic()
        # The timeout is the device's; the frames' time on the wire comes on top (a 125-register
        # reply takes 2.3 s at 1200 baud).
        deadline = sent + timeout + (len(request) + expected + 5) * self.char_time
        try:
            head = await channel.read_exactly(2, deadline)
            if head[0] != unit:
                raise WrongReply(f"reply from unit {head[0]}, expected unit {unit}")
            if head[1] == function | 0x80:
                rest = await channel.read_exactly(3, deadline)
                if crc16(head + rest[:1]) != int.from_bytes(rest[1:], "little"):
                    raise BadCrc("CRC error in an exception reply")
                code = rest[0]
                raise ExceptionReply(code, exception_reason(code))
            if head[1] != function:
                raise WrongReply(f"reply with function {head[1]}, expected {function}")
            length = await channel.read_exactly(1, deadline)
            if length[0] != expected:
                raise WrongReply(f"reply carries {length[0]} bytes, expected {expected}")
            body = await channel.read_exactly(expected + 2, deadline)
        except TimeoutError:
            raise NoReply(f"no reply within {timeout:g}s") from None
        frame = head + length + body[:-2]
        if crc16(frame) != int.from_bytes(body[-2:], "little"):
            raise BadCrc("CRC error: the reply was garbled on the line")
        self._line_free_at = time.monotonic() + self.frame_gap
        return Transaction(body[:-2], time.monotonic() - sent)


EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (request accepted, still processing)",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_reason(code: int) -> str:
    name = EXCEPTION_NAMES.get(code, "unknown exception")
    return f"modbus exception {code}: {name}"
