"""Several Modbus unit ids behind one TCP port, as plant Modbus gateways put them.

Two asyncio TCP servers, each backed by one :class:`ModbusPlc` per unit id (the PLCs are
not started as TCP servers; the gateway serves them through their transport-independent
:meth:`ModbusPlc.serve_pdu`, so their register map, simulation and ``Faults`` apply):

* :class:`TcpGateway` speaks Modbus TCP (MBAP) and routes every request by its unit id,
  as a Modbus TCP ↔ RTU gateway with serial devices behind it does. A unit id with no
  device gets exception 11 (gateway target device failed to respond) at once. Per unit,
  :class:`GatewayFaults` make the device behind the gateway ``silent`` (after the
  gateway's ``target_timeout``: no reply at all, or exception 11, by ``silent_mode``) or
  ``late`` (the reply comes that many seconds after the request, with its own MBAP
  transaction id, so a client that gave up on it can recognise it).
  Requests on one connection are served one at a time, in order: a client may pipeline
  several, the replies come back in request order, and a slow (``late``/``silent``)
  request holds up the ones behind it on that connection, as on the single serial line
  behind a real gateway. Connections are independent of each other.
* :class:`RtuOverTcpServer` carries raw RTU frames (``unit + PDU + CRC16``) over TCP, as a
  serial-to-Ethernet converter in transparent ("TCP server", raw socket) mode does. The
  framing, the CRC and the per-unit :class:`~simulators.modbus_rtu.LineFaults`
  (``silent``, ``late``, ``garble`` crc/truncate/noise, ``wrong_unit``) are those of
  :class:`~simulators.modbus_rtu.RtuLine`: bad CRC → silence (bytes dropped up to the next
  gap), unit not present → silence, broadcast writes executed by every unit without a
  reply, each unit serves its requests one at a time and units are independent (a late
  reply can arrive while the client waits for another unit). The CRC, the request-length
  rule, the fault and counter classes are imported from :mod:`simulators.modbus_rtu`;
  :class:`RtuLine` itself is bound to its pty (its byte transport is private), so the
  small receive/answer loop is written here.

Neither server emulates a baud rate: replies go out as soon as they are ready (plus
``late``). Both run the PLCs' simulation (one ``plc.step()`` every ``plc.tick`` seconds,
when > 0) between :meth:`start` and :meth:`stop`, except for PLCs already serving on their
own. See ``simulators/README.md`` for the API summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from simulators.modbus_plc import (
    EXC_GATEWAY_TARGET_NO_RESPONSE,
    MAX_MBAP_LENGTH_FIELD,
    MBAP_LEN,
    ModbusPlc,
    exception_pdu,
)
from simulators.modbus_rtu import (
    BROADCAST,
    MAX_FRAME,
    NOISE_BYTE,
    TRUNCATE_BYTES,
    LineFaults,
    LineStats,
    UnitStats,
    check_devices,
    crc_ok,
    request_length,
    simulate,
    with_crc,
)

__all__ = [
    "SILENT_MODES",
    "GatewayFaults",
    "GatewayStats",
    "GatewayUnitStats",
    "RtuOverTcpServer",
    "TcpGateway",
]

log = logging.getLogger("simulators.modbus_gateway")

SilentMode = Literal["none", "exception"]
SILENT_MODES = ("none", "exception")
#: Write function codes, executed by every unit when broadcast (unit 0) over RTU.
_WRITE_FUNCTIONS = frozenset((5, 6, 15, 16))


class _TcpServer:
    """Lifecycle shared by both servers: listen, track connections, run the PLCs' ticks."""

    _name = "gateway"

    def __init__(self, devices: Mapping[int, ModbusPlc], host: str, port: int) -> None:
        self.devices: dict[int, ModbusPlc] = check_devices(devices)
        self.host = host
        #: The listening port; after start() with port=0 it is the bound port, which a
        #: later start() reuses.
        self.port = port
        #: Client connections accepted since construction.
        self.connections_opened = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._sim_tasks: list[asyncio.Task[None]] = []

    @property
    def serving(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (returns once the port accepts connections) and run the simulations."""
        if self._server is not None:
            raise RuntimeError(f"the {self._name} is already running")
        # reuse_address: a restart binds the same port while old connections are in TIME_WAIT.
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sim_tasks = [
            asyncio.create_task(simulate(plc), name=f"modbus-gateway-sim-{unit}")
            for unit, plc in self.devices.items()
            if plc.tick > 0 and not plc.serving
        ]
        log.info(
            "Modbus %s listening on %s:%d (units %s)",
            self._name,
            self.host,
            self.port,
            ",".join(map(str, self.devices)),
        )

    async def stop(self) -> None:
        """Close the listener and every connection, cancel pending replies; start() may
        be called again (same port)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in self._connections.values():
            writer.close()
        tasks = [*self._connections, *self._sim_tasks, *self._pending_tasks()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sim_tasks = []
        await server.wait_closed()
        log.info("Modbus %s on port %d stopped", self._name, self.port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _pending_tasks(self) -> list[asyncio.Task[None]]:
        """Tasks besides the connection handlers that stop() must cancel."""
        return []

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self.connections_opened += 1
        peer = writer.get_extra_info("peername")
        log.debug("client %s connected", peer)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("client %s went away: %r", peer, exc)
        except asyncio.CancelledError:
            # stop() cancels handlers on purpose; not re-raised (Python 3.11's stream
            # server would log a traceback for a cancelled handler).
            log.debug("client %s: handler cancelled by stop()", peer)
        except Exception:
            log.exception("client %s: serving failed, closing", peer)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.debug("client %s closed", peer)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------
# Modbus TCP gateway


@dataclass
class GatewayFaults:
    """Fault switches of one unit behind a :class:`TcpGateway`, read at every request."""

    #: The serial device does not answer: the gateway waits its ``target_timeout``, then
    #: replies according to ``silent_mode``. The device executes nothing.
    silent: bool = False
    #: What the gateway does for a silent device: ``"none"`` sends no reply at all (the
    #: client times out), ``"exception"`` answers exception 11.
    silent_mode: SilentMode = "none"
    #: Seconds between the request and its reply (0 = at once). The reply keeps the
    #: request's MBAP transaction id, however late it is (the gateway never gives up on a
    #: device that does answer), and holds up later requests on the same connection.
    late: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an unknown silent mode or a negative delay."""
        if self.silent_mode not in SILENT_MODES:
            raise ValueError(f"silent_mode must be one of {SILENT_MODES}, not {self.silent_mode!r}")
        if self.late < 0:
            raise ValueError("late must be >= 0")

    def clear(self) -> None:
        """Switch every fault off (``silent_mode`` back to ``"none"``)."""
        self.silent = False
        self.silent_mode = "none"
        self.late = 0.0


@dataclass
class GatewayUnitStats:
    """Counters of one unit behind a :class:`TcpGateway`."""

    #: Requests routed to this unit.
    requests: int = 0
    #: Replies from the device (normal or its own exceptions), sent to the client.
    replies: int = 0
    #: Requests the device ignored because it is ``silent``.
    silenced: int = 0
    #: Exception 11 replies sent by the gateway for a silent device (mode "exception").
    gateway_exceptions: int = 0
    #: Replies sent with ``late`` > 0.
    late_replies_sent: int = 0


@dataclass
class GatewayStats:
    """Counters of a whole :class:`TcpGateway`."""

    #: Requests for a unit id with no device (answered with exception 11).
    unknown_unit: int = 0
    #: Broken MBAP headers (the connection is closed).
    malformed: int = 0
    #: Connections closed because a device's ``ModbusPlc.faults.drop_connections`` is set.
    connections_dropped: int = 0


class _Outcome(enum.Enum):
    NO_REPLY = enum.auto()
    HANG_UP = enum.auto()


class TcpGateway(_TcpServer):
    """A Modbus TCP gateway routing by unit id to one :class:`ModbusPlc` per unit.

    ``devices`` maps each unit id (1..247) to its PLC, whose ``unit`` must be that id.
    ``target_timeout`` is how long the gateway waits for a ``silent`` device before it
    gives up (settable at runtime). Unit ids without a device (0 and 248..255 included:
    no broadcast, no gateway-own unit) get exception 11 at once.
    """

    _name = "TCP gateway"

    def __init__(
        self,
        devices: Mapping[int, ModbusPlc],
        host: str = "127.0.0.1",
        port: int = 0,
        target_timeout: float = 0.5,
    ) -> None:
        super().__init__(devices, host, port)
        if target_timeout < 0:
            raise ValueError("target_timeout must be >= 0")
        self.target_timeout = target_timeout
        #: Per-unit fault switches, e.g. ``gateway.faults[2].silent = True``.
        self.faults: dict[int, GatewayFaults] = {unit: GatewayFaults() for unit in self.devices}
        #: Per-unit counters.
        self.stats: dict[int, GatewayUnitStats] = {
            unit: GatewayUnitStats() for unit in self.devices
        }
        #: Counters of the whole gateway.
        self.gateway_stats = GatewayStats()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve MBAP requests one at a time, in order, until the peer closes."""
        while True:
            header = await reader.readexactly(MBAP_LEN)
            transaction, protocol, length, unit = struct.unpack(">HHHB", header)
            if protocol != 0 or not 2 <= length <= MAX_MBAP_LENGTH_FIELD:
                self.gateway_stats.malformed += 1
                log.debug("bad MBAP header %s, closing", header.hex())
                return
            pdu = await reader.readexactly(length - 1)
            reply = await self._route(unit, pdu)
            if reply is _Outcome.HANG_UP:
                self.gateway_stats.connections_dropped += 1
                return
            if reply is _Outcome.NO_REPLY:
                continue
            writer.write(struct.pack(">HHHB", transaction, 0, len(reply) + 1, unit) + reply)
            await writer.drain()

    async def _route(self, unit: int, pdu: bytes) -> bytes | _Outcome:
        function_code = pdu[0] if pdu else 0
        plc = self.devices.get(unit)
        if plc is None:
            self.gateway_stats.unknown_unit += 1
            log.debug("request for unit %d, not behind the gateway: exception 11", unit)
            return exception_pdu(function_code, EXC_GATEWAY_TARGET_NO_RESPONSE)
        faults, stats = self.faults[unit], self.stats[unit]
        faults.validate()
        stats.requests += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        if faults.silent:
            stats.silenced += 1
            await asyncio.sleep(self.target_timeout)
            if faults.silent_mode == "exception":
                stats.gateway_exceptions += 1
                return exception_pdu(function_code, EXC_GATEWAY_TARGET_NO_RESPONSE)
            return _Outcome.NO_REPLY
        reply = await plc.serve_pdu(unit, pdu)
        if reply is None:
            return _Outcome.HANG_UP  # the PLC's drop_connections fault: as over plain TCP
        late = faults.late
        if late > 0:
            await asyncio.sleep(max(0.0, started + late - loop.time()))
            stats.late_replies_sent += 1
        stats.replies += 1
        return reply


# ---------------------------------------------------------------------------
# RTU over TCP (transparent serial-to-Ethernet converter)


class _RtuConnection:
    """One client of an RtuOverTcpServer: its writer and a lock so frames never overlap."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tx_lock = asyncio.Lock()

    async def send(self, frame: bytes) -> bool:
        """Write one frame; False when the connection is already gone."""
        async with self.tx_lock:
            if self.writer.is_closing():
                return False
            try:
                self.writer.write(frame)
                await self.writer.drain()
            except ConnectionError:
                return False
            return True


class RtuOverTcpServer(_TcpServer):
    """RTU frames over TCP, for one :class:`ModbusPlc` per unit id (1..247).

    A request ends when its function code gives its length (1..6: 8 bytes, 15/16:
    9 + byte count), else after ``frame_gap`` seconds without a byte on the connection
    (the converter's "packing interval", standing in for t3.5). Each connection has its
    own framing; the devices (and their one-request-at-a-time locks) are shared.
    ``line_stats.bytes_dropped`` counts reply bytes whose connection had closed.
    """

    _name = "RTU over TCP server"

    def __init__(
        self,
        devices: Mapping[int, ModbusPlc],
        host: str = "127.0.0.1",
        port: int = 0,
        frame_gap: float = 0.005,
    ) -> None:
        super().__init__(devices, host, port)
        if frame_gap <= 0:
            raise ValueError("frame_gap must be > 0")
        self.frame_gap = frame_gap
        #: Per-unit RTU fault switches, e.g. ``server.faults[2].garble = "noise"``.
        self.faults: dict[int, LineFaults] = {unit: LineFaults() for unit in self.devices}
        #: Per-unit counters (as on an RtuLine).
        self.stats: dict[int, UnitStats] = {unit: UnitStats() for unit in self.devices}
        #: Counters of all connections together.
        self.line_stats = LineStats()
        self._locks: dict[int, asyncio.Lock] = {unit: asyncio.Lock() for unit in self.devices}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # Fresh locks: the server may be restarted under another event loop.
        self._locks = {unit: asyncio.Lock() for unit in self.devices}
        await super().start()

    def _pending_tasks(self) -> list[asyncio.Task[None]]:
        tasks = list(self._tasks)
        self._tasks.clear()
        return tasks

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Split the byte stream into frames (by length, else by a gap) until EOF."""
        connection = _RtuConnection(writer)
        rx = bytearray()
        resync = False  # after a bad frame: drop bytes until the next gap
        while True:
            if rx or resync:
                try:
                    async with asyncio.timeout(self.frame_gap):
                        chunk = await reader.read(4096)
                except TimeoutError:
                    # A gap: whatever is buffered is a (probably bad) frame; resync point.
                    if rx:
                        frame = bytes(rx)
                        rx.clear()
                        self._on_frame(connection, frame)
                    resync = False
                    continue
            else:
                chunk = await reader.read(4096)
            if not chunk:
                return  # EOF; a partial frame is discarded
            self.line_stats.bytes_received += len(chunk)
            if resync:
                continue
            rx += chunk
            while not resync:
                length = request_length(rx)
                if len(rx) > MAX_FRAME and length is None:
                    # No gap and no recognisable request: a stream of garbage.
                    frame = bytes(rx)
                    rx.clear()
                    resync = not self._on_frame(connection, frame)
                    break
                if length is None or len(rx) < length:
                    break
                frame = bytes(rx[:length])
                del rx[:length]
                if not self._on_frame(connection, frame):
                    rx.clear()
                    resync = True

    def _on_frame(self, connection: _RtuConnection, frame: bytes) -> bool:
        """Dispatch one delimited frame; False when its CRC is bad (framing lost)."""
        self.line_stats.frames_received += 1
        unit = frame[0]
        if not crc_ok(frame):
            self.line_stats.crc_errors += 1
            if unit in self.stats:
                self.stats[unit].crc_errors_received += 1
            log.debug("bad CRC or short frame ignored: %s", frame.hex(" "))
            return False
        pdu = frame[1:-2]
        if unit == BROADCAST:
            self.line_stats.broadcasts += 1
            if pdu[0] in _WRITE_FUNCTIONS:
                for device in self.devices:
                    self._spawn(connection, device, pdu, broadcast=True)
            return True
        for other, stats in self.stats.items():
            if other != unit:
                stats.ignored_other_unit += 1
        if unit not in self.devices:
            self.line_stats.unknown_unit += 1
            log.debug("request for unit %d, not present: silence", unit)
            return True
        self.stats[unit].requests += 1
        self._spawn(connection, unit, pdu, broadcast=False)
        return True

    def _spawn(self, connection: _RtuConnection, unit: int, pdu: bytes, *, broadcast: bool) -> None:
        request_end = asyncio.get_running_loop().time()
        task = asyncio.create_task(
            self._serve(connection, unit, pdu, request_end, broadcast),
            name=f"modbus-rtu-tcp-unit-{unit}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("serving a request failed", exc_info=task.exception())

    async def _serve(
        self,
        connection: _RtuConnection,
        unit: int,
        pdu: bytes,
        request_end: float,
        broadcast: bool,
    ) -> None:
        plc, faults, stats = self.devices[unit], self.faults[unit], self.stats[unit]
        async with self._locks[unit]:  # a device handles one request at a time
            faults.validate()
            if faults.silent:
                stats.silenced += 1
                return
            if broadcast:
                stats.broadcasts += 1
            reply = await plc.serve_pdu(unit, pdu)  # honours plc.faults
            if broadcast or reply is None:  # drop_connections = no reply, as on RtuLine
                return
            late = faults.late
            if late > 0:
                loop = asyncio.get_running_loop()
                await asyncio.sleep(max(0.0, request_end + late - loop.time()))
            address = unit
            if faults.wrong_unit is not None:
                address = faults.wrong_unit
                stats.wrong_unit_sent += 1
            frame = with_crc(bytes((address,)) + reply)
            garble = faults.garble
            if garble == "crc":
                frame = frame[:-2] + bytes((frame[-2] ^ 0x01, frame[-1]))
            elif garble == "truncate":
                frame = frame[: max(1, len(frame) - TRUNCATE_BYTES)]
            elif garble == "noise":
                frame = bytes((NOISE_BYTE,)) + frame
            if not await connection.send(frame):
                self.line_stats.bytes_dropped += len(frame)
                return
            self.line_stats.bytes_sent += len(frame)
            stats.replies += 1
            if late > 0:
                stats.late_replies_sent += 1
            if garble is not None:
                stats.garbled_sent += 1
