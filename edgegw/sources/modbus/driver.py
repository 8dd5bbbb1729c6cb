"""Modbus TCP source: polls a device with coalesced reads and reconnects by itself."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from edgegw.backoff import Backoff
from edgegw.reading import Reading
from edgegw.sources.base import SourceHealth, SourceStatus
from edgegw.sources.modbus.config import BIT_TABLES, DeviceView, ModbusSourceConfig
from edgegw.sources.modbus.decode import (
    BlockDecoder,
    DecodeError,
    RegisterLayout,
    registers_to_bytes,
)
from edgegw.sources.modbus.plan import ReadBlock, plan_reads
from edgegw.sources.modbus.rtu import exception_reason

log = logging.getLogger(__name__)
_new = tuple.__new__

ILLEGAL_DATA_ADDRESS = 2
# Exceptions that are about the request, not the device: the tags it named cannot be read.
TAG_EXCEPTIONS = (1, 2, 3)  # illegal function, data address, data value


@dataclass(frozen=True, slots=True)
class PlannedBlock:
    block: ReadBlock
    layouts: tuple[tuple[str, RegisterLayout], ...]  # register tables
    bit_indexes: tuple[tuple[str, int], ...]  # coil/discrete tables
    tag_names: tuple[str, ...]
    decoder: BlockDecoder


def plan_device(device: DeviceView) -> list[PlannedBlock]:
    """The device's read requests, each with how to decode its reply."""
    planned = []
    for block in plan_reads(device.tags, device.max_gap):
        layouts: list[tuple[str, RegisterLayout]] = []
        bits: list[tuple[str, int]] = []
        for tag in block.tags:
            index = tag.address.offset - block.start
            if block.table in BIT_TABLES:
                bits.append((tag.name, index))
                continue
            layout = RegisterLayout(
                type=tag.type,
                index=index,
                count=tag.register_count,
                byte_swap=(tag.byte_order or device.byte_order) == "little",
                word_swap=(tag.word_order or device.word_order) == "little",
                bit=tag.address.bit,
                scale=tag.scale,
                offset=tag.offset,
            )
            layouts.append((tag.name, layout))
        names = tuple(tag.name for tag in block.tags)
        decoder = BlockDecoder([layout for _, layout in layouts])
        planned.append(PlannedBlock(block, tuple(layouts), tuple(bits), names, decoder))
    return planned


def split_block(view: DeviceView, planned: PlannedBlock, source: str) -> list[PlannedBlock]:
    """Exception 2 on a coalesced block: one tag names an address the device lacks. Its tags
    are read apart from now on, so the others still read and the bad one is named."""
    pieces = plan_device(dataclasses.replace(view, tags=list(planned.block.tags), max_gap=-1))
    log.warning(
        "illegal data address in a coalesced read; reading its %d tags apart source=%s "
        "device=%s table=%s start=%d count=%d",
        len(planned.tag_names),
        source,
        view.name,
        planned.block.table,
        planned.block.start,
        planned.block.count,
    )
    return pieces


def refused_tags(status: SourceStatus, planned: PlannedBlock, reason: str, prefix: str = "") -> str:
    """The device refused a request for these tags: name each, and return the source's last
    error with the tags in it."""
    for tag in planned.block.tags:
        status.tag_failed(f"{prefix}{tag.name}", reason, str(tag.address))
    names = ", ".join(prefix + name for name in planned.tag_names)
    return f"{names}: {reason}"


def tags_read(status: SourceStatus, planned: PlannedBlock, prefix: str = "") -> None:
    if status.bad_tags:  # the common case costs one test per block
        for name in planned.tag_names:
            status.tag_read(prefix + name)


class ModbusSource:
    """One Modbus TCP device (one `sources:` entry with `protocol: modbus`)."""

    def __init__(self, config: ModbusSourceConfig) -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)
        self.device = config.device_views()[0]
        self.blocks = plan_device(self.device)
        self._client: AsyncModbusTcpClient | None = None

    @property
    def request_count(self) -> int:
        """Requests one poll costs."""
        return len(self.blocks)

    def health(self, now: float) -> SourceHealth:
        return self.status.snapshot(now)

    async def batches(self) -> AsyncIterator[list[Reading]]:
        config = self.config
        backoff = Backoff(initial=min(0.5, config.poll), maximum=30.0)
        next_poll = time.monotonic()
        try:
            while True:
                if self._client is None:
                    error = await self._connect()
                    if error is not None:
                        yield self._all_bad(error)
                        await asyncio.sleep(backoff.next_delay())
                        next_poll = time.monotonic()
                        continue
                    backoff.reset()
                batch = await self._poll_once()
                self.status.polls += 1
                yield batch
                next_poll += config.poll
                now = time.monotonic()
                if next_poll < now:
                    # Skip the slots we missed rather than firing a burst of catch-up polls.
                    missed = int((now - next_poll) // config.poll) + 1
                    self.status.overruns += missed
                    next_poll += missed * config.poll
                await asyncio.sleep(next_poll - now)
        finally:
            self.status.stopped()
            self._close()

    async def _connect(self) -> str | None:
        config = self.config
        # Our own backoff drives reconnects: pymodbus' reconnect_delay=0 turns its own off,
        # and retries=0 makes a timeout surface at once (the next poll is the retry).
        client = AsyncModbusTcpClient(
            config.host,
            port=config.port,
            timeout=config.timeout,
            retries=0,
            reconnect_delay=0,
            name=config.name,
        )
        try:
            connected = await asyncio.wait_for(client.connect(), config.timeout + 1.0)
        except (TimeoutError, OSError, ModbusException) as exc:
            connected = False
            cause = _cause(exc, config.timeout)
        else:
            # pymodbus returns False and keeps the cause to itself (it logs it): ask once more.
            cause = (
                "" if connected else await _connect_cause(config.host, config.port, config.timeout)
            )
        reason = f"cannot connect to {config.host}:{config.port}{cause}"
        if not connected:
            client.close()
            self._mark_down(reason)
            return reason
        self._client = client
        self.status.connected = True
        log.info("source connected source=%s url=%s", self.name, config.url)
        return None

    def _mark_down(self, reason: str) -> None:
        if self.status.mark_down(reason):
            log.warning("source down source=%s reason=%s", self.name, reason)

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.status.connected = False

    def _all_bad(self, reason: str) -> list[Reading]:
        now = time.time()
        return [
            Reading(self.name, tag.name, None, "bad", now, now, reason) for tag in self.device.tags
        ]

    async def _poll_once(self) -> list[Reading]:
        readings: list[Reading] = []
        index = 0
        while index < len(self.blocks):
            planned = self.blocks[index]
            index += 1
            client = self._client
            if client is None:
                readings.extend(self._bad_block(planned, self.status.last_error or "disconnected"))
                continue
            started = time.monotonic()
            try:
                response = await self._read(client, planned.block)
            except (ModbusException, TimeoutError, OSError) as exc:
                reason = self._describe_failure(exc)
                self.status.errors += 1
                self.status.last_error = reason
                readings.extend(self._bad_block(planned, reason))
                if not client.connected:
                    self._close()
                    self._mark_down(reason)
                continue
            self.status.last_latency = time.monotonic() - started
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                reason = exception_reason(code)
                if code == ILLEGAL_DATA_ADDRESS and len(planned.tag_names) > 1:
                    pieces = split_block(self.device, planned, self.name)
                    if len(pieces) > 1:  # tags sharing one register cannot be split apart
                        index -= 1
                        self.blocks[index : index + 1] = pieces
                        continue  # read the pieces now
                self.status.errors += 1
                self.status.last_error = (
                    refused_tags(self.status, planned, reason) if code in TAG_EXCEPTIONS else reason
                )
                readings.extend(self._bad_block(planned, reason))
                continue
            self.status.reads += 1
            tags_read(self.status, planned)
            readings.extend(self._decode(planned, response))
        return readings

    def _describe_failure(self, exc: BaseException) -> str:
        text = str(exc)
        if isinstance(exc, TimeoutError) or "No response" in text:
            return f"no reply within {self.config.timeout:g}s"
        return f"read failed: {text or type(exc).__name__}"

    async def _read(self, client: AsyncModbusTcpClient, block: ReadBlock) -> ModbusPDU:
        unit = self.device.unit
        call = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[block.table]
        # pymodbus has its own response timeout; ours is a backstop against a stuck transport.
        return await asyncio.wait_for(
            call(block.start, count=block.count, device_id=unit), self.config.timeout + 1.0
        )

    def _bad_block(self, planned: PlannedBlock, reason: str) -> list[Reading]:
        now = time.time()
        return [
            Reading(self.name, name, None, "bad", now, now, reason) for name in planned.tag_names
        ]

    def _decode(self, planned: PlannedBlock, response: ModbusPDU) -> list[Reading]:
        now = time.time()
        name_ = self.name
        out: list[Reading] = []
        if planned.bit_indexes:
            bits = response.bits
            out.extend(
                Reading(name_, tag, bool(bits[i]), "good", now, now)
                for tag, i in planned.bit_indexes
            )
            return out
        registers = response.registers
        if len(registers) < planned.block.count:
            reason = f"short reply: {len(registers)} of {planned.block.count} registers"
            return self._bad_block(planned, reason)
        values = planned.decoder.decode(registers_to_bytes(registers))
        for (tag, _layout), value in zip(planned.layouts, values, strict=True):
            if isinstance(value, DecodeError):
                out.append(Reading(name_, tag, None, "bad", now, now, str(value)))
            else:
                # tuple.__new__: a named tuple's own __new__ doubles the cost (Outbox.claim).
                out.append(_new(Reading, (name_, tag, value, "good", now, now, None)))
        return out


def _cause(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f": no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return ": connection refused (is the PLC's Modbus server on this port?)"
    if isinstance(exc, OSError) and exc.strerror:
        return f": {exc.strerror.lower()}"
    text = str(exc)
    return f": {text}" if text else f": {type(exc).__name__}"


async def _connect_cause(host: str, port: int, seconds: float) -> str:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), seconds)
    except (OSError, TimeoutError) as exc:
        return _cause(exc, seconds)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ": the connection was accepted, then closed"
