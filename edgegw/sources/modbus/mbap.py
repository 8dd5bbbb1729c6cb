"""Modbus TCP (MBAP) master for lines of several unit ids behind one TCP-to-RTU gateway.

Same contract as the RTU master, over MBAP framing: a transaction id ties each reply to its
request, so a late reply is recognised and skipped while waiting for the right one.
"""

from __future__ import annotations

import struct
import time

from edgegw.sources.modbus.channel import Channel, ChannelClosed
from edgegw.sources.modbus.rtu import (
    FUNCTION_CODES,
    ExceptionReply,
    NoReply,
    Transaction,
    WrongReply,
    exception_reason,
    reply_bytes,
)

_HEADER = struct.Struct(">HHHB")  # transaction, protocol, length, unit
MAX_LENGTH = 254  # unit + PDU


class MbapMaster:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._transaction = 0
        self.discarded_bytes = 0  # late replies skipped

    async def read(
        self,
        unit: int,
        table: str,
        start: int,
        count: int,
        timeout: float,  # noqa: ASYNC109
    ) -> Transaction:
        self._transaction = (self._transaction + 1) & 0xFFFF
        tid = self._transaction
        function = FUNCTION_CODES[table]
        expected = reply_bytes(table, count)
        await self.channel.write(
            _HEADER.pack(tid, 0, 6, unit) + struct.pack(">BHH", function, start, count)
        )
        sent = time.monotonic()
        deadline = sent + timeout
        in_frame = False  # a header was read and its body not yet
        try:
            while True:
                header = await self.channel.read_exactly(_HEADER.size, deadline)
                in_frame = True
                reply_tid, protocol, length, reply_unit = _HEADER.unpack(header)
                if protocol != 0 or not 2 <= length <= MAX_LENGTH:
                    raise self._framing_lost(f"not a Modbus TCP reply (protocol {protocol})")
                pdu = await self.channel.read_exactly(length - 1, deadline)
                in_frame = False
                if reply_tid != tid:
                    self.discarded_bytes += len(header) + len(pdu)  # a late reply
                    continue
                break
        except TimeoutError:
            if in_frame:
                # The rest of this frame may still come and would read as the next header.
                raise self._framing_lost("a reply stopped halfway") from None
            raise NoReply(f"no reply within {timeout:g}s") from None
        if reply_unit != unit:
            raise WrongReply(f"reply from unit {reply_unit}, expected unit {unit}")
        if pdu[0] == function | 0x80 and len(pdu) >= 2:
            raise ExceptionReply(pdu[1], exception_reason(pdu[1]))
        if pdu[0] != function:
            raise WrongReply(f"reply with function {pdu[0]}, expected {function}")
        if len(pdu) < 2 or pdu[1] != expected or len(pdu) != expected + 2:
            raise WrongReply(f"reply carries {max(0, len(pdu) - 2)} bytes, expected {expected}")
        return Transaction(pdu[2:], time.monotonic() - sent)

    def _framing_lost(self, why: str) -> ChannelClosed:
        """Byte stream out of step: only a new connection brings MBAP framing back."""
        self.channel.close()
        return ChannelClosed(f"Modbus TCP framing lost: {why}; reconnecting")
