"""Modbus RTU over a pseudo-terminal: several simulated PLCs on one RS-485 line.

There is no serial hardware in the test rig, so :class:`RtuLine` opens a pty pair itself
and plays every slave device of one half-duplex line on the master side; the client (the
gateway, through pymodbus and pyserial) opens the slave side, :attr:`RtuLine.path`, like
a USB-RS485 adapter. Each unit id is backed by its own :class:`ModbusPlc` (never started
as a TCP server): the line only uses its transport-independent
:meth:`ModbusPlc.serve_pdu`, so the PLC's register map, simulation and ``Faults``
(``delay``, ``exception_code``; ``drop_connections`` means "no reply" here) work as over
TCP. On top, :class:`LineFaults` per unit inject what a serial line does: silence, late
replies, garbled frames, a reply from the wrong address.

Framing (RTU): ``unit(1) + PDU + CRC16`` (polynomial 0xA001, reflected, init 0xFFFF,
low CRC byte first). A request ends

* as soon as its length is known from the function code: 1..6 → 8 bytes, 15/16 →
  ``9 + byte count`` (a pty delivers a whole write() at once, so waiting for silence is
  not needed and back-to-back frames are split correctly); or
* after the inter-frame gap t3.5 without a byte (3.5 character times, 1.75 ms above
  19200 baud) for anything else (other function codes, garbage, truncated frames).

A real slave then behaves as follows, and so does the line: bad CRC → ignored (silence),
counted, and every byte up to the next gap is dropped (resynchronisation on silence);
a unit id not on the line → silence; broadcast (unit 0) → function codes 5, 6, 15 and 16
are executed by every device, nobody replies. Each device handles its own requests one at
a time, in order; devices are independent of each other (a slow device does not hold up
the others: its reply comes late, possibly while the client waits for another device,
which is the hazard the gateway must survive). Frames never overlap on the line.

pty behaviour (Linux, verified by hand and in the tests):

* The simulator keeps its own slave fd open. Without it, the master reports POLLHUP and
  read() fails with EIO whenever no client has the slave open (before the first open and
  after every close), which would make an ``add_reader`` callback spin. With it, a client
  can open, close and reopen :attr:`RtuLine.path` at will.
* Opening the slave path the way pyserial does (``O_RDWR | O_NOCTTY | O_NONBLOCK``,
  ``flock(LOCK_EX | LOCK_NB)`` for pymodbus's ``exclusive=True``, tcsetattr, DTR/RTS
  ioctls) works while the simulator holds its slave fd: the simulator takes no lock, and
  the modem-control ioctls fail with ENOTTY, which pyserial ignores. A second exclusive
  opener gets EAGAIN, as with a real port.
* Baud rate settings are stored but have no effect; the pty driver forces CS8 and clears
  PARENB, so parity cannot be represented (the line's ``parity`` only sets the timing).
* Bytes written while no client has the port open stay in the pty's buffer (~20 KiB) and
  reach the next opener, unlike on a real line; pyserial's open() flushes its input
  (TCIFLUSH), and :meth:`RtuLine.flush_client_input` does the same from this side.

See ``simulators/README.md`` for the command line and the in-process API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import termios
import tty
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from simulators.modbus_plc import (
    FC_READ_COILS,
    FC_READ_DISCRETE,
    FC_READ_HOLDING,
    FC_READ_INPUT,
    FC_WRITE_COIL,
    FC_WRITE_COILS,
    FC_WRITE_REGISTER,
    FC_WRITE_REGISTERS,
    MAX_BENCH_REGISTERS,
    ModbusPlc,
)

__all__ = [
    "BROADCAST",
    "GARBLE_MODES",
    "MAX_FRAME",
    "NOISE_BYTE",
    "LineFaults",
    "LineStats",
    "RtuLine",
    "UnitStats",
    "crc16",
    "main",
    "with_crc",
]

log = logging.getLogger("simulators.modbus_rtu")

#: Unit id 0: every device executes writes, none replies.
BROADCAST = 0
#: Largest RTU frame: address + 253-byte PDU + CRC.
MAX_FRAME = 256
#: The garbage byte that ``garble="noise"`` sends before a reply (never a valid address).
NOISE_BYTE = 0xFF
GARBLE_MODES = ("crc", "truncate", "noise")
#: Bytes the ``truncate`` mode cuts off the end of a reply (at least one byte is sent).
TRUNCATE_BYTES = 3
#: How long a write to the master may wait for room in the pty buffer before the rest of
#: the frame is dropped (only when nobody reads the port for a long time).
WRITE_STALL_TIMEOUT = 1.0

_FIXED_LENGTH_REQUESTS = frozenset(
    (
        FC_READ_COILS,
        FC_READ_DISCRETE,
        FC_READ_HOLDING,
        FC_READ_INPUT,
        FC_WRITE_COIL,
        FC_WRITE_REGISTER,
    )
)
_WRITE_FUNCTIONS = frozenset((FC_WRITE_COIL, FC_WRITE_REGISTER, FC_WRITE_COILS, FC_WRITE_REGISTERS))

Parity = Literal["N", "E", "O"]
GarbleMode = Literal["crc", "truncate", "noise"]


# ---------------------------------------------------------------------------
# CRC


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF) of ``data``."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` + its CRC, low byte first (as sent on the line)."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """True when the last two bytes of ``frame`` are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def request_length(buffer: bytes | bytearray) -> int | None:
    """Length of the request at the start of ``buffer`` when its function code tells it,
    else None (not enough bytes yet, or a function whose end only silence can tell)."""
    if len(buffer) < 2:
        return None
    function_code = buffer[1]
    if function_code in _FIXED_LENGTH_REQUESTS:
        return 8
    if function_code in (FC_WRITE_COILS, FC_WRITE_REGISTERS) and len(buffer) >= 7:
        length = 9 + buffer[6]
        return length if length <= MAX_FRAME else None
    return None


# ---------------------------------------------------------------------------
# Faults and counters


@dataclass
class LineFaults:
    """RTU fault switches of one unit, read at every request (settable at runtime).

    Only faults a real line or device produces; a reply is never corrupted in a way that
    keeps its CRC valid (``wrong_unit`` aside, which is a misconfigured device, not noise).
    """

    #: The device is off the line: it neither replies nor executes anything (broadcasts
    #: included). Requests to it are counted in ``UnitStats.silenced``.
    silent: bool = False
    #: Seconds between the end of a request and the start of its reply (0 = at once). Set
    #: it above the client's timeout to get a *late reply*: it arrives while the client
    #: already waits for its next request (possibly to another unit) and must never be
    #: taken for that one's answer. The device stays busy meanwhile: later requests to the
    #: same unit queue behind it; other units answer normally.
    late: float = 0.0
    #: Corrupt every reply (None = off):
    #: ``"crc"`` one bit error in the CRC: whole frame, right length, CRC does not verify;
    #: ``"truncate"`` the last 3 bytes never come (the frame stops short, the client waits
    #: for the rest until its timeout or the next gap);
    #: ``"noise"`` one garbage byte (0xFF, never a valid address) right before the intact
    #: frame, as a transceiver glitch at driver enable produces.
    garble: GarbleMode | None = None
    #: Reply with this unit id instead of the addressed one, with a valid CRC (address
    #: conflict or misconfigured device). None = off.
    wrong_unit: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an unknown garble mode, a negative delay or a bad unit."""
        if self.garble is not None and self.garble not in GARBLE_MODES:
            raise ValueError(f"garble must be one of {GARBLE_MODES} or None, not {self.garble!r}")
        if self.late < 0:
            raise ValueError("late must be >= 0")
        if self.wrong_unit is not None and not 0 <= self.wrong_unit <= 255:
            raise ValueError("wrong_unit must be within 0..255")

    def clear(self) -> None:
        """Switch every fault off."""
        self.silent = False
        self.late = 0.0
        self.garble = None
        self.wrong_unit = None


def check_devices(devices: Mapping[int, ModbusPlc]) -> dict[int, ModbusPlc]:
    """Several PLCs on one line or gateway: unit ids 1..247, each PLC answering its own id."""
    if not devices:
        raise ValueError("no devices: a line or gateway needs at least one")
    for unit, plc in devices.items():
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id {unit} is outside 1..247")
        if plc.unit != unit:
            raise ValueError(f"the ModbusPlc on unit {unit} has unit={plc.unit}")
    return dict(devices)


async def simulate(plc: ModbusPlc) -> None:
    """Step a PLC that serves no TCP port of its own at its tick."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at += plc.tick
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        plc.step()


@dataclass
class UnitStats:
    """Counters of one unit on the line."""

    #: Requests with a valid CRC addressed to this unit (broadcasts not included).
    requests: int = 0
    #: Frames sent by this unit, garbled or not.
    replies: int = 0
    #: Frames with a bad CRC (or too short) whose address byte is this unit's.
    crc_errors_received: int = 0
    #: Valid frames addressed to another unit (or to a unit not on the line), ignored.
    ignored_other_unit: int = 0
    #: Replies sent with ``LineFaults.late`` > 0.
    late_replies_sent: int = 0
    #: Replies corrupted by ``LineFaults.garble``.
    garbled_sent: int = 0
    #: Replies sent with ``LineFaults.wrong_unit``.
    wrong_unit_sent: int = 0
    #: Requests (and broadcasts) dropped because the unit is ``silent``.
    silenced: int = 0
    #: Broadcast writes this unit received (executed unless its ``ModbusPlc.faults`` say
    #: otherwise; a ``silent`` unit counts them in ``silenced`` instead).
    broadcasts: int = 0


@dataclass
class LineStats:
    """Counters of the whole line."""

    bytes_received: int = 0
    bytes_sent: int = 0
    #: Frames delimited (by length or by silence), valid or not.
    frames_received: int = 0
    #: Frames with a bad CRC or shorter than 4 bytes, whatever their address byte.
    crc_errors: int = 0
    #: Valid frames for a unit id that no device on the line has.
    unknown_unit: int = 0
    #: Valid broadcast frames (unit 0), write or not.
    broadcasts: int = 0
    #: Bytes dropped because the pty buffer stayed full (nobody reading the port).
    bytes_dropped: int = 0


# ---------------------------------------------------------------------------
# The line


class RtuLine:
    """One RS-485 line with several Modbus RTU slaves, served on a pseudo-terminal.

    ``devices`` maps each unit id (1..247) to its :class:`ModbusPlc`, whose ``unit`` must
    be that id (``serve_pdu`` checks it). The PLCs are not started; the line runs their
    simulation (every ``plc.tick`` seconds, when > 0) between :meth:`start` and
    :meth:`stop`. ``emulate_timing`` makes every reply reach the client when its last
    byte would on a real line at ``baudrate``: after the request's own transmission time,
    the t3.5 gap and the reply's transmission time, one frame at a time.
    """

    def __init__(
        self,
        devices: Mapping[int, ModbusPlc],
        baudrate: int = 19200,
        parity: Parity = "E",
        stopbits: int = 1,
        bytesize: int = 8,
        emulate_timing: bool = True,
    ) -> None:
        self.devices: dict[int, ModbusPlc] = check_devices(devices)
        if baudrate <= 0:
            raise ValueError("baudrate must be > 0")
        if parity not in ("N", "E", "O"):
            raise ValueError("parity must be 'N', 'E' or 'O'")
        if stopbits not in (1, 2) or bytesize not in (7, 8):
            raise ValueError("stopbits must be 1 or 2 and bytesize 7 or 8")
        self.baudrate = baudrate
        self.parity: Parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self.emulate_timing = emulate_timing
        #: Per-unit RTU fault switches, e.g. ``line.faults[2].silent = True``.
        self.faults: dict[int, LineFaults] = {unit: LineFaults() for unit in self.devices}
        #: Per-unit counters.
        self.stats: dict[int, UnitStats] = {unit: UnitStats() for unit in self.devices}
        #: Counters of the whole line.
        self.line_stats = LineStats()
        #: The slave device path clients open (e.g. ``/dev/pts/3``); None when stopped.
        self.path: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx = bytearray()
        self._resync = False  # after a bad frame: drop bytes until the next gap
        self._gap_timer: asyncio.TimerHandle | None = None
        self._line_busy_until = 0.0  # loop time the last frame on the line ends
        self._tx_lock = asyncio.Lock()
        self._locks: dict[int, asyncio.Lock] = {unit: asyncio.Lock() for unit in self.devices}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sim_tasks: list[asyncio.Task[None]] = []

    @classmethod
    def with_units(
        cls,
        units: Sequence[int],
        *,
        bench_registers: int = 0,
        tick: float = 0.1,
        seed: int | None = None,
        baudrate: int = 19200,
        parity: Parity = "E",
        stopbits: int = 1,
        bytesize: int = 8,
        emulate_timing: bool = True,
    ) -> RtuLine:
        """A line with a fresh ModbusPlc per unit (seeded ``seed + unit`` when given)."""
        devices = {
            unit: ModbusPlc(
                unit=unit,
                bench_registers=bench_registers,
                tick=tick,
                seed=None if seed is None else seed + unit,
            )
            for unit in units
        }
        return cls(
            devices,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            emulate_timing=emulate_timing,
        )

    # -- timing --------------------------------------------------------------

    @property
    def char_time(self) -> float:
        """Seconds per character: start bit + data bits + parity bit + stop bits."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate

    @property
    def frame_gap(self) -> float:
        """t3.5: the silence that ends a frame (fixed 1.75 ms above 19200 baud)."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time

    # -- lifecycle -----------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._master is not None

    async def start(self) -> None:
        """Open the pty, put both ends in raw mode and serve; :attr:`path` is then set."""
        if self._master is not None:
            raise RuntimeError("the line is already running")
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            # Raw on both ends (they share one termios on Linux): no echo (a reply would
            # come back as a request), no CR/LF mapping, no XON/XOFF (0x11/0x13 are data),
            # no signals for 0x03. A client (pyserial) configures raw mode itself too.
            tty.setraw(master, termios.TCSANOW)
            tty.setraw(slave, termios.TCSANOW)
            self._set_speed(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._loop = loop
        self._master, self._slave, self.path = master, slave, path
        self._rx.clear()
        self._resync = False
        self._line_busy_until = loop.time()
        # Fresh locks: a line may be restarted under another event loop (one per test).
        self._tx_lock = asyncio.Lock()
        self._locks = {unit: asyncio.Lock() for unit in self.devices}
        loop.add_reader(master, self._on_readable)
        self._sim_tasks = [
            asyncio.create_task(simulate(plc), name=f"modbus-rtu-sim-{unit}")
            for unit, plc in self.devices.items()
            if plc.tick > 0
        ]
        log.info(
            "Modbus RTU line on %s: units %s, %d baud %d%s%d%s",
            path,
            ",".join(map(str, self.devices)),
            self.baudrate,
            self.bytesize,
            self.parity,
            self.stopbits,
            "" if self.emulate_timing else " (no timing emulation)",
        )

    async def stop(self) -> None:
        """Stop reading, cancel pending replies, close both fds. start() opens a new pty."""
        master, self._master = self._master, None
        if master is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(master)
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        tasks = [*self._tasks, *self._sim_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._sim_tasks = []
        os.close(master)
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        log.info("Modbus RTU line on %s stopped", self.path)
        self.path = None

    async def __aenter__(self) -> RtuLine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def flush_client_input(self) -> None:
        """Discard bytes sent to the client that it has not read yet (as pyserial's
        reset_input_buffer does on its side)."""
        if self._slave is not None:
            termios.tcflush(self._slave, termios.TCIFLUSH)

    def _set_speed(self, fd: int) -> None:
        """Store the baud rate in the pty's termios (informative only)."""
        speed = getattr(termios, f"B{self.baudrate}", None)
        if speed is None:
            return
        attrs = termios.tcgetattr(fd)
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)

    # -- receiving -------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._master is not None
        assert self._loop is not None
        try:
            chunk = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # EIO would mean no slave fd is open; ours is, so this is unexpected. Stop
            # reading rather than spin on a descriptor that is always "ready".
            log.error("reading the pty master failed (%s); the line stops receiving", exc)
            self._loop.remove_reader(self._master)
            return
        if not chunk:
            return
        self.line_stats.bytes_received += len(chunk)
        if self._gap_timer is not None:
            self._gap_timer.cancel()
        self._gap_timer = self._loop.call_later(self.frame_gap, self._on_gap)
        if self._resync:
            return
        self._rx += chunk
        while not self._resync:
            if len(self._rx) > MAX_FRAME and request_length(self._rx) is None:
                # No gap and no recognisable request: a stream of garbage.
                self._on_frame(bytes(self._rx))
                break
            length = request_length(self._rx)
            if length is None or len(self._rx) < length:
                break
            frame = bytes(self._rx[:length])
            del self._rx[:length]
            self._on_frame(frame)

    def _on_gap(self) -> None:
        """t3.5 of silence: whatever is buffered is a (probably bad) frame."""
        self._gap_timer = None
        if self._rx:
            frame = bytes(self._rx)
            self._rx.clear()
            self._on_frame(frame)
        self._resync = False  # the silence is the resynchronisation point

    def _on_frame(self, frame: bytes) -> None:
        assert self._loop is not None
        self.line_stats.frames_received += 1
        unit = frame[0]
        if not crc_ok(frame):
            self.line_stats.crc_errors += 1
            if unit in self.stats:
                self.stats[unit].crc_errors_received += 1
            log.debug("bad CRC or short frame ignored: %s", frame.hex(" "))
            # Framing is uncertain until the line goes quiet again.
            self._rx.clear()
            self._resync = True
            return
        pdu = frame[1:-2]
        request_end = self._request_end(len(frame))
        if unit == BROADCAST:
            self.line_stats.broadcasts += 1
            if pdu[0] in _WRITE_FUNCTIONS:
                for device in self.devices:
                    self._spawn(device, pdu, request_end, broadcast=True)
            return
        for other, stats in self.stats.items():
            if other != unit:
                stats.ignored_other_unit += 1
        if unit not in self.devices:
            self.line_stats.unknown_unit += 1
            log.debug("request for unit %d, not on the line: silence", unit)
            return
        self.stats[unit].requests += 1
        self._spawn(unit, pdu, request_end, broadcast=False)

    def _request_end(self, length: int) -> float:
        """Loop time the request ends on the (emulated) line."""
        assert self._loop is not None
        now = self._loop.time()
        if not self.emulate_timing:
            return now
        # The request took its transmission time on the line; the pty delivered it at once.
        self._line_busy_until = max(now, self._line_busy_until) + length * self.char_time
        return self._line_busy_until

    def _spawn(self, unit: int, pdu: bytes, request_end: float, *, broadcast: bool) -> None:
        task = asyncio.create_task(
            self._serve(unit, pdu, request_end, broadcast), name=f"modbus-rtu-unit-{unit}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("serving a request failed", exc_info=task.exception())

    # -- answering -------------------------------------------------------------

    async def _serve(self, unit: int, pdu: bytes, request_end: float, broadcast: bool) -> None:
        plc, faults, stats = self.devices[unit], self.faults[unit], self.stats[unit]
        async with self._locks[unit]:  # a device handles one request at a time
            faults.validate()  # switches set at runtime; a bad one is logged, no reply
            if faults.silent:
                stats.silenced += 1
                return
            if broadcast:
                stats.broadcasts += 1
            reply = await plc.serve_pdu(unit, pdu)  # honours plc.faults
            if broadcast or reply is None:
                return
            late = faults.late
            if late > 0:
                assert self._loop is not None
                await asyncio.sleep(max(0.0, request_end + late - self._loop.time()))
            frame = with_crc(bytes((unit,)) + reply)
            if faults.wrong_unit is not None:
                frame = with_crc(bytes((faults.wrong_unit,)) + reply)
                stats.wrong_unit_sent += 1
            garble = faults.garble
            if garble == "crc":
                frame = frame[:-2] + bytes((frame[-2] ^ 0x01, frame[-1]))
            elif garble == "truncate":
                frame = frame[: max(1, len(frame) - TRUNCATE_BYTES)]
            elif garble == "noise":
                frame = bytes((NOISE_BYTE,)) + frame
            await self._transmit(frame, request_end)
            stats.replies += 1
            if late > 0:
                stats.late_replies_sent += 1
            if garble is not None:
                stats.garbled_sent += 1

    async def _transmit(self, frame: bytes, request_end: float) -> None:
        """Put one frame on the line: frames never overlap; with timing emulation it is
        written when its last byte would arrive."""
        assert self._loop is not None
        async with self._tx_lock:
            if self.emulate_timing:
                loop = self._loop
                start = max(
                    loop.time(),
                    request_end + self.frame_gap,
                    self._line_busy_until + self.frame_gap,
                )
                end = start + len(frame) * self.char_time
                self._line_busy_until = end
                await asyncio.sleep(max(0.0, end - loop.time()))
            await self._write(frame)

    async def _write(self, data: bytes) -> None:
        assert self._loop is not None
        view = memoryview(data)
        while view:
            master = self._master
            if master is None:
                return
            try:
                written = os.write(master, view)
            except BlockingIOError:
                written = 0
            self.line_stats.bytes_sent += written
            view = view[written:]
            if view and not await self._writable(master):
                self.line_stats.bytes_dropped += len(view)
                log.warning("pty buffer full (nobody reads the port): %d bytes dropped", len(view))
                return

    async def _writable(self, fd: int) -> bool:
        assert self._loop is not None
        ready = self._loop.create_future()
        self._loop.add_writer(fd, ready.set_result, None)
        try:
            async with asyncio.timeout(WRITE_STALL_TIMEOUT):
                await ready
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(fd)


# ---------------------------------------------------------------------------
# Command line


def _unit_list(text: str) -> list[int]:
    try:
        units = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of unit ids: {text!r}") from None
    if not units or any(not 1 <= u <= 247 for u in units) or len(set(units)) != len(units):
        raise argparse.ArgumentTypeError("unit ids must be distinct, within 1..247")
    return units


def _unit_value(text: str) -> tuple[int, str]:
    unit, sep, value = text.partition(":")
    if not sep or not unit.isdigit() or not value:
        raise argparse.ArgumentTypeError(f"expected UNIT:VALUE, got {text!r}")
    return int(unit), value


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.modbus_rtu",
        description=(
            "Modbus RTU simulator: several simulated PLCs (the production line of "
            "simulators.modbus_plc, one per unit id) on one serial line, served on a "
            "pseudo-terminal. Prints the pty path (open it as the serial port), then serves "
            "until Ctrl-C or SIGTERM. Fault options inject serial-line trouble per unit."
        ),
    )
    parser.add_argument(
        "--units",
        type=_unit_list,
        default=[1],
        metavar="LIST",
        help="comma-separated unit ids on the line, e.g. 1,2,3 (default 1)",
    )
    parser.add_argument(
        "--link",
        metavar="PATH",
        default=None,
        help="also create a symlink PATH to the pty (a stable name for configs); removed on exit",
    )
    parser.add_argument("--baudrate", type=int, default=19200, help="(default %(default)s)")
    parser.add_argument("--parity", choices=["N", "E", "O"], default="E", help="(default E)")
    parser.add_argument("--stopbits", type=int, choices=[1, 2], default=1, help="(default 1)")
    parser.add_argument(
        "--no-timing",
        action="store_true",
        help="answer at once instead of emulating the transmission time at the baud rate",
    )
    parser.add_argument(
        "--bench-registers",
        type=int,
        default=0,
        metavar="N",
        help=(
            "bench mode on every unit: holding registers 1000..1000+N-1 increment at every "
            f"read (0..{MAX_BENCH_REGISTERS}, default 0 = off)"
        ),
    )
    parser.add_argument(
        "--tick",
        type=float,
        default=0.1,
        help="seconds between simulation steps; 0 freezes the simulation (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed; unit u uses seed+u",
    )
    parser.add_argument(
        "--fault-silent",
        type=_unit_list,
        default=[],
        metavar="LIST",
        help="these units never reply (and execute nothing)",
    )
    parser.add_argument(
        "--fault-late",
        type=_unit_value,
        action="append",
        default=[],
        metavar="UNIT:SECONDS",
        help="this unit replies SECONDS after each request (repeatable)",
    )
    parser.add_argument(
        "--fault-garble",
        type=_unit_value,
        action="append",
        default=[],
        metavar="UNIT:MODE",
        help=f"corrupt every reply of this unit, MODE: {', '.join(GARBLE_MODES)} (repeatable)",
    )
    parser.add_argument(
        "--fault-wrong-unit",
        type=_unit_value,
        action="append",
        default=[],
        metavar="UNIT:ID",
        help="this unit replies with unit id ID (repeatable)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default %(default)s); DEBUG shows ignored frames",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.bench_registers <= MAX_BENCH_REGISTERS:
        parser.error(f"--bench-registers must be within 0..{MAX_BENCH_REGISTERS}")
    if args.baudrate <= 0:
        parser.error("--baudrate must be > 0")
    units = set(args.units)
    faults: dict[int, LineFaults] = {unit: LineFaults() for unit in args.units}
    try:
        for unit in args.fault_silent:
            _check_unit(unit, units)
            faults[unit].silent = True
        for unit, value in args.fault_late:
            _check_unit(unit, units)
            faults[unit].late = float(value)
        for unit, value in args.fault_garble:
            _check_unit(unit, units)
            faults[unit].garble = value
        for unit, value in args.fault_wrong_unit:
            _check_unit(unit, units)
            faults[unit].wrong_unit = int(value)
        for fault in faults.values():
            fault.validate()
    except ValueError as exc:
        parser.error(str(exc))
    args.faults = faults
    return args


def _check_unit(unit: int, units: set[int]) -> None:
    if unit not in units:
        raise ValueError(f"fault for unit {unit}, which is not in --units")


def _make_link(target: str, link: str) -> None:
    """Point the symlink ``link`` at ``target``, replacing an older symlink (never a file)."""
    _remove_link(link)
    os.symlink(target, link)


def _remove_link(link: str) -> None:
    if os.path.islink(link):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


async def _run(args: argparse.Namespace) -> None:
    line = RtuLine.with_units(
        args.units,
        bench_registers=args.bench_registers,
        tick=args.tick,
        seed=args.seed,
        baudrate=args.baudrate,
        parity=args.parity,
        stopbits=args.stopbits,
        emulate_timing=not args.no_timing,
    )
    line.faults.update(args.faults)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await line.start()
    assert line.path is not None
    link = args.link
    try:
        if link is not None:
            _make_link(line.path, link)
        print(line.path, flush=True)
        await stop.wait()
    finally:
        if link is not None:
            _remove_link(link)
        await line.stop()
        for unit, stats in line.stats.items():
            log.info("unit %d: %s", unit, stats)
        log.info("line: %s", line.line_stats)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
