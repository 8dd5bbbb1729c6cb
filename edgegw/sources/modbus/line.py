"""A Modbus line: several unit ids behind one port, polled by one fair scheduler.

One request at a time (a serial bus is half duplex; a TCP-to-RTU converter is one too). The
next poll is always the device whose turn is earliest, so a device's interval is honoured and
no device can take the others' turns; devices start staggered over the shortest interval.

A device that stops answering opens its circuit breaker after `breaker.failures` timeouts in
a row: its tags go bad, and it is asked only every `breaker.retry` until it answers again, so
one dead device costs the bus one timeout per retry instead of one per poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from edgegw.backoff import Backoff
from edgegw.reading import Reading
from edgegw.sources.base import DeviceHealth, SourceHealth, SourceStatus
from edgegw.sources.modbus.channel import Channel, ChannelClosed, SerialChannel, TcpChannel
from edgegw.sources.modbus.config import BIT_TABLES, DeviceView, ModbusSourceConfig
from edgegw.sources.modbus.decode import DecodeError
from edgegw.sources.modbus.driver import (
    ILLEGAL_DATA_ADDRESS,
    TAG_EXCEPTIONS,
    PlannedBlock,
    plan_device,
    refused_tags,
    split_block,
    tags_read,
)
from edgegw.sources.modbus.mbap import MbapMaster
from edgegw.sources.modbus.rtu import ExceptionReply, NoReply, RtuError, RtuMaster

log = logging.getLogger(__name__)

GATEWAY_NO_TARGET = (10, 11)  # gateway path unavailable, target device failed to respond


@dataclass(slots=True)
class DeviceStatus:
    """One unit id's books, for metrics and `edgegw status`."""

    name: str
    unit: int
    reads: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind: timeout, crc, exception…
    polls: int = 0
    last_response: float = 0.0  # seconds, last answered request
    failures: int = 0  # timeouts in a row
    breaker_open: bool = False
    last_error: str | None = None

    def count_error(self, kind: str, reason: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = reason

    def snapshot(self) -> DeviceHealth:
        return DeviceHealth(
            name=self.name,
            unit=self.unit,
            reads=self.reads,
            errors=tuple(sorted(self.errors.items())),
            last_response=self.last_response,
            breaker_open=self.breaker_open,
            last_error=self.last_error,
        )


@dataclass(slots=True)
class _Device:
    view: DeviceView
    blocks: list[PlannedBlock]
    status: DeviceStatus
    due: float = 0.0  # monotonic time of its next poll


class ModbusLine:
    """One `protocol: modbus` source read through the line scheduler; its readings carry the
    device's name as their source."""

    def __init__(self, config: ModbusSourceConfig) -> None:
        self.config = config
        self.name = config.name
        self.status = SourceStatus(config.name)
        self.devices = [
            _Device(view, plan_device(view), DeviceStatus(view.name, view.unit))
            for view in config.device_views()
        ]
        self._channel: Channel | None = None
        self._master: RtuMaster | MbapMaster | None = None

    @property
    def device_statuses(self) -> list[DeviceStatus]:
        return [device.status for device in self.devices]

    def health(self, now: float) -> SourceHealth:
        return self.status.snapshot(now, [device.status.snapshot() for device in self.devices])

    async def batches(self) -> AsyncIterator[list[Reading]]:
        backoff = Backoff(initial=0.5, maximum=30.0)
        try:
            while True:
                if self._master is None:
                    error = await self._open()
                    if error is not None:
                        for device in self.devices:
                            yield self._all_bad(device, error)
                        await asyncio.sleep(backoff.next_delay())
                        continue
                    self._stagger()
                device = min(self.devices, key=lambda d: d.due)
                wait = device.due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                started = time.monotonic()
                try:
                    batch = await self._poll(device)
                except ChannelClosed as exc:
                    reason = f"line lost: {exc}"
                    self._close()
                    self._mark_down(reason)
                    for each in self.devices:
                        yield self._all_bad(each, reason)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                if device.status.failures == 0:
                    backoff.reset()  # only an answer proves the line works, not a connect
                self.status.polls += 1
                device.status.polls += 1
                yield batch
                self._reschedule(device, started)
        finally:
            self.status.stopped()
            self._close()

    # -- the line ------------------------------------------------------------------------------
    async def _open(self) -> str | None:
        config = self.config
        try:
            if config.transport == "rtu":
                serial = SerialChannel(config.serial)
                serial.open()
                channel: Channel = serial
                master: RtuMaster | MbapMaster = RtuMaster(
                    channel, config.frame_gap, config.serial.char_time()
                )
            else:
                tcp = TcpChannel(config.host, config.port)
                await tcp.open(config.timeout + 1.0)
                channel = tcp
                if config.transport == "rtu-over-tcp":
                    master = RtuMaster(channel, config.frame_gap)
                else:
                    master = MbapMaster(channel)
        except (OSError, TimeoutError) as exc:
            reason = self._open_failure(exc)
            self._mark_down(reason)
            return reason
        self._channel, self._master = channel, master
        self.status.connected = True
        self.status.last_error = None
        log.info("line open source=%s url=%s devices=%d", self.name, config.url, len(self.devices))
        return None

    def _open_failure(self, exc: OSError) -> str:
        config = self.config
        if config.transport == "rtu":
            path = config.serial.path
            if isinstance(exc, PermissionError):
                return (
                    f"cannot open {path}: permission denied (the service user needs the "
                    "serial group, e.g. SupplementaryGroups=dialout, and DeviceAllow= for it)"
                )
            if isinstance(exc, FileNotFoundError):
                return f"cannot open {path}: no such device (is the adapter plugged in?)"
            return f"cannot open {path}: {getattr(exc, 'strerror', None) or exc}"
        if isinstance(exc, TimeoutError):
            return f"cannot connect to {config.host}:{config.port}: timed out"
        return f"cannot connect to {config.host}:{config.port}: {exc.strerror or exc}"

    def _mark_down(self, reason: str) -> None:
        if self.status.mark_down(reason):
            log.warning("source down source=%s reason=%s", self.name, reason)

    def _close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._master = None
        self.status.connected = False

    def _stagger(self) -> None:
        """Spread the first polls over the shortest interval, so devices do not fire at once.
        A device whose breaker is open keeps its retry time across a reconnect."""
        now = time.monotonic()
        spacing = min(d.view.poll for d in self.devices) / len(self.devices)
        for index, device in enumerate(self.devices):
            if not device.status.breaker_open:
                device.due = now + index * spacing

    def _reschedule(self, device: _Device, started: float) -> None:
        status = device.status
        if status.breaker_open:
            device.due = started + self.config.breaker.retry
            return
        poll = device.view.poll
        device.due += poll
        now = time.monotonic()
        if device.due < now:
            # Skip the turns missed rather than firing a burst of catch-up polls.
            missed = int((now - device.due) // poll) + 1
            self.status.overruns += missed
            device.due += missed * poll

    # -- one poll of one device ----------------------------------------------------------------
    async def _poll(self, device: _Device) -> list[Reading]:
        master = self._master
        assert master is not None
        view, status = device.view, device.status
        readings: list[Reading] = []
        index = 0
        while index < len(device.blocks):
            planned = device.blocks[index]
            block = planned.block
            try:
                reply = await master.read(
                    view.unit, block.table, block.start, block.count, view.timeout
                )
            except ExceptionReply as exc:
                if exc.code in GATEWAY_NO_TARGET:
                    # A TCP gateway answering for a device behind it that did not answer.
                    self._failed(status, "timeout", str(exc))
                    if self._count_timeout(device, str(exc)):
                        return self._all_bad(device, self._breaker_reason(device))
                    readings.extend(self._bad(view, planned.tag_names, str(exc)))
                    index += 1
                    continue
                status.failures = 0
                self._answered(device)
                if exc.code == ILLEGAL_DATA_ADDRESS and len(planned.tag_names) > 1:
                    pieces = split_block(view, planned, self.name)
                    if len(pieces) > 1:  # tags sharing one register cannot be split apart
                        device.blocks[index : index + 1] = pieces
                        continue  # read the pieces now
                self._failed(status, exc.kind, str(exc))
                if exc.code in TAG_EXCEPTIONS:
                    self.status.last_error = refused_tags(
                        self.status, planned, str(exc), f"{view.name}/"
                    )
                readings.extend(self._bad(view, planned.tag_names, str(exc)))
            except RtuError as exc:
                self._failed(status, exc.kind, str(exc))
                if isinstance(exc, NoReply) and self._count_timeout(device, str(exc)):
                    return self._all_bad(device, self._breaker_reason(device))
                readings.extend(self._bad(view, planned.tag_names, str(exc)))
            else:
                status.failures = 0
                self._answered(device)
                status.reads += 1
                self.status.reads += 1
                status.last_response = reply.seconds
                self.status.last_latency = reply.seconds
                tags_read(self.status, planned, f"{view.name}/")
                readings.extend(self._decode(view, planned, reply.data))
            index += 1
        return readings

    def _count_timeout(self, device: _Device, reason: str) -> bool:
        """One more unanswered request; True when that opens the breaker."""
        device.status.failures += 1
        if device.status.failures < self.config.breaker.failures:
            return False
        self._open_breaker(device, reason)
        return True

    def _failed(self, status: DeviceStatus, kind: str, reason: str) -> None:
        status.count_error(kind, reason)
        self.status.errors += 1
        self.status.last_error = f"{status.name}: {reason}"

    def _answered(self, device: _Device) -> None:
        status = device.status
        if status.breaker_open:
            status.breaker_open = False
            log.warning(
                "device answers again; breaker closed source=%s device=%s unit=%d",
                self.name,
                status.name,
                status.unit,
            )

    def _open_breaker(self, device: _Device, reason: str) -> None:
        status = device.status
        if not status.breaker_open:
            status.breaker_open = True
            log.warning(
                "device not answering; breaker open, asking every %gs source=%s device=%s "
                "unit=%d reason=%s",
                self.config.breaker.retry,
                self.name,
                status.name,
                status.unit,
                reason,
            )

    def _breaker_reason(self, device: _Device) -> str:
        return (
            # The threshold, not the running count: a reason that changed at every retry would
            # publish every tag again each time.
            f"no reply to {self.config.breaker.failures} requests in a row "
            f"(unit {device.view.unit}); "
            f"asked every {self.config.breaker.retry:g}s until it answers"
        )

    # -- readings ------------------------------------------------------------------------------
    def _decode(self, view: DeviceView, planned: PlannedBlock, data: bytes) -> list[Reading]:
        now = time.time()
        source = view.name
        if planned.block.table in BIT_TABLES:
            return [
                Reading(source, tag, bool((data[i >> 3] >> (i & 7)) & 1), "good", now, now)
                for tag, i in planned.bit_indexes
            ]
        out: list[Reading] = []
        values = planned.decoder.decode(data)
        for (tag, _layout), value in zip(planned.layouts, values, strict=True):
            if isinstance(value, DecodeError):
                out.append(Reading(source, tag, None, "bad", now, now, str(value)))
            else:
                out.append(Reading(source, tag, value, "good", now, now))
        return out

    @staticmethod
    def _bad(view: DeviceView, names: tuple[str, ...], reason: str) -> list[Reading]:
        now = time.time()
        return [Reading(view.name, name, None, "bad", now, now, reason) for name in names]

    @staticmethod
    def _all_bad(device: _Device, reason: str) -> list[Reading]:
        now = time.time()
        view = device.view
        return [Reading(view.name, tag.name, None, "bad", now, now, reason) for tag in view.tags]
