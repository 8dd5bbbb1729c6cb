"""Modbus TCP simulator of a small production line, with runtime fault switches.

The server is written directly on asyncio instead of pymodbus's server because the
simulator must inject faults per request at runtime (reply delay, exception answers,
dropping the connection) and later issues add late replies, garbage frames and RTU
over a pseudo-terminal. pymodbus 3.16's ``SimDevice(action=...)`` hook can delay and
return an exception code, but it cannot reach the connection (no drop, no garbage)
and its framing is not ours to bend. Here the transport (MBAP over TCP) is a thin
layer around :meth:`ModbusPlc.serve_pdu`, which an RTU transport can reuse as is.

Register map: see ``simulators/README.md`` (addresses are a contract with the demo
config and the tests; do not move them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

__all__ = [
    "BENCH_BASE",
    "MAP_SIZE",
    "Faults",
    "LineState",
    "ModbusPlc",
    "OrderStatus",
    "SimStats",
    "main",
]

log = logging.getLogger("simulators.modbus_plc")

#: Every table (holding, input, coils, discrete) has addresses 0..MAP_SIZE-1; unmapped
#: ones read as 0 so that a gateway coalescing across small gaps gets no exception.
MAP_SIZE = 300
#: First bench holding register (bench mode only).
BENCH_BASE = 1000
MAX_BENCH_REGISTERS = 60000

# Function codes served.
FC_READ_COILS = 1
FC_READ_DISCRETE = 2
FC_READ_HOLDING = 3
FC_READ_INPUT = 4
FC_WRITE_COIL = 5
FC_WRITE_REGISTER = 6
FC_WRITE_COILS = 15
FC_WRITE_REGISTERS = 16

# Modbus exception codes used by the server itself.
EXC_ILLEGAL_FUNCTION = 1
EXC_ILLEGAL_ADDRESS = 2
EXC_ILLEGAL_VALUE = 3
EXC_GATEWAY_TARGET_NO_RESPONSE = 0x0B

# Protocol limits (Modbus application protocol v1.1b3).
MAX_READ_BITS = 2000
MAX_READ_REGS = 125
MAX_WRITE_BITS = 1968
MAX_WRITE_REGS = 123
MBAP_LEN = 7
MAX_MBAP_LENGTH_FIELD = 254  # unit id + a PDU of at most 253 bytes

# Holding register addresses (the contract, see README).
HR_STATE = 0
HR_GOOD = 1
HR_SCRAP = 2
HR_TOTAL = 3  # 3-4 uint32
HR_STATUS = 10
HR_ORDER = 30
HR_PRESSURE = 40
HR_TEMPERATURE = 100  # 100-101 float32, swapped words
HR_FLOW = 102  # 102-103 float32
HR_AMBIENT = 104
HR_ENERGY = 110  # 110-113 float64
HR_OPERATING_MS = 120  # 120-123 uint64
HR_AXIS = 124  # 124-125 int32
HR_RECIPE = 200  # 200-207 string
HR_BATCH = 210  # 210-217 string
STRING_REGS = 8
IR_UPTIME = 0  # 0-1 uint32
IR_CYCLE_MS = 2
COIL_MOTOR = 0
COIL_DOOR = 3
DI_ESTOP_OK = 0
DI_CURTAIN_CLEAR = 1

STATUS_HEARTBEAT = 1 << 0
STATUS_RUNNING = 1 << 3
STATUS_ALARM = 1 << 5

RECIPES = ("RCP-A12", "RCP-B07", "RCP-C330")


class LineState:
    """Values of holding 0 (2 is deliberately never used)."""

    IDLE = 0
    RUNNING = 1
    DONE = 3


class OrderStatus:
    """Values of holding 30; a valid order goes created → released → running → completed|aborted."""

    CREATED = 0
    RELEASED = 1
    RUNNING = 2
    COMPLETED = 3
    ABORTED = 4


#: Seconds per step() when the background simulation is off (tick <= 0).
DEFAULT_TICK = 0.1

# Durations of the non-running phases, in ticks. Each order status lasts several ticks so
# that a gateway polling a few times slower than the tick still sees every transition.
IDLE_TICKS = 10  # first half "created", second half "released"
DONE_TICKS = 8
BATCH_MIN, BATCH_MAX = 18, 22
SCRAP_PROBABILITY = 0.05
ALARM_PROBABILITY = 0.004  # per running tick; an alarm aborts the batch
DOOR_TOGGLE_PROBABILITY = 0.03  # per non-running tick
CURTAIN_BREAK_PROBABILITY = 0.03  # per tick, for one tick


@dataclass
class Faults:
    """Fault switches, read at every request so they take effect at runtime."""

    #: Seconds to wait before every reply (0 = none).
    delay: float = 0.0
    #: Answer every request with this Modbus exception code (None = off).
    exception_code: int | None = None
    #: Close every client connection as soon as it sends a request (no reply).
    drop_connections: bool = False

    def clear(self) -> None:
        """Switch every fault off."""
        self.delay = 0.0
        self.exception_code = None
        self.drop_connections = False


@dataclass
class SimStats:
    """Counters for tests and benchmarks."""

    requests: int = 0
    exceptions: int = 0
    connections_opened: int = 0
    connections_dropped: int = 0
    malformed: int = 0


# ---------------------------------------------------------------------------
# Encoding helpers: plain values -> lists of 16-bit registers.


def _u32(value: int) -> list[int]:
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


def _i32(value: int) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">i", value)))


def _u64(value: int) -> list[int]:
    return list(struct.unpack(">4H", struct.pack(">Q", value)))


def _f32(value: float) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def _f32_swapped(value: float) -> list[int]:
    high, low = struct.unpack(">2H", struct.pack(">f", value))
    return [low, high]


def _f64(value: float) -> list[int]:
    return list(struct.unpack(">4H", struct.pack(">d", value)))


def _string(text: str) -> list[int]:
    raw = text.encode("ascii")[: STRING_REGS * 2].ljust(STRING_REGS * 2, b"\0")
    return list(struct.unpack(f">{STRING_REGS}H", raw))


def _pack_bits(bits: Sequence[int]) -> bytes:
    """Pack bits LSB first, as Modbus read-coils replies do."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _unpack_bits(data: bytes, count: int) -> list[int]:
    return [(data[i >> 3] >> (i & 7)) & 1 for i in range(count)]


def exception_pdu(function_code: int, code: int) -> bytes:
    return bytes((function_code | 0x80, code & 0xFF))


class _LineModel:
    """The production line's state; written into the register tables by the PLC."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.state = LineState.IDLE
        self.order = OrderStatus.CREATED
        self.phase_ticks = 0
        self.batch_number = 1001
        self.batch_size = 20
        self.good = 0
        self.scrap = 0
        self.total = 0
        self.heartbeat = False
        self.alarm = False
        self.pressure = 5
        self.temperature = 725.3  # tenths of °C
        self.flow = 0.0
        self.ambient = -35  # tenths of °C
        self.energy = 1234.5  # kWh
        # Start above 2**32 ms so that the high words of the uint64 are exercised.
        self.operating_ms = 5_000_000_000
        self.axis_phase = -math.pi / 2  # start at the negative extreme
        self.recipe = RECIPES[0]
        self.cycle_ms = 0
        self.door_open = False
        self.curtain_clear = True

    @property
    def axis(self) -> int:
        return round(150_000 * math.sin(self.axis_phase))

    @property
    def batch_id(self) -> str:
        return f"B{self.batch_number}"

    def advance(self, dt: float) -> None:
        """One tick of the state machine idle → running → done → idle, plus noise."""
        self.phase_ticks += 1
        self.heartbeat = not self.heartbeat
        if self.state == LineState.IDLE:
            self._tick_idle()
        elif self.state == LineState.RUNNING:
            self._tick_running(dt)
        else:
            self._tick_done()
        self._tick_process_values(dt)

    def _tick_idle(self) -> None:
        if self.phase_ticks == IDLE_TICKS // 2:
            self.order = OrderStatus.RELEASED
        elif self.phase_ticks >= IDLE_TICKS:
            self.state = LineState.RUNNING
            self.order = OrderStatus.RUNNING
            self.phase_ticks = 0
            self.door_open = False  # the interlock closes the door before the motor starts
        elif self.rng.random() < DOOR_TOGGLE_PROBABILITY:
            self.door_open = not self.door_open

    def _tick_running(self, dt: float) -> None:
        if self.rng.random() < SCRAP_PROBABILITY:
            self.scrap += 1
        else:
            self.good += 1
        self.total = (self.total + 1) & 0xFFFFFFFF
        self.cycle_ms = min(0xFFFF, round(max(dt, 0.1) * 1000 * self.rng.uniform(0.95, 1.05)))
        if self.rng.random() < ALARM_PROBABILITY:
            self.alarm = True
            self._finish(OrderStatus.ABORTED)
        elif self.good + self.scrap >= self.batch_size:
            self._finish(OrderStatus.COMPLETED)

    def _finish(self, order: int) -> None:
        self.state = LineState.DONE
        self.order = order
        self.phase_ticks = 0

    def _tick_done(self) -> None:
        if self.phase_ticks < DONE_TICKS:
            return
        # A new order: new batch id, counters reset, alarm acknowledged.
        self.state = LineState.IDLE
        self.order = OrderStatus.CREATED
        self.phase_ticks = 0
        self.batch_number += 1
        self.batch_size = self.rng.randint(BATCH_MIN, BATCH_MAX)
        self.good = 0
        self.scrap = 0
        self.alarm = False
        self.recipe = RECIPES[(self.batch_number - 1001) % len(RECIPES)]

    def _tick_process_values(self, dt: float) -> None:
        rng = self.rng
        running = self.state == LineState.RUNNING
        target_pressure = 60 if running else 5
        self.pressure = max(0, min(100, target_pressure + rng.randint(-3, 3)))
        self.temperature = max(700.0, min(750.0, self.temperature + rng.uniform(-2.0, 2.0)))
        self.flow = max(0.0, (12.0 if running else 0.0) + rng.uniform(-0.3, 0.3))
        self.ambient = max(-200, min(400, self.ambient + rng.randint(-1, 1)))
        self.energy += (5.5 if running else 0.8) * dt / 3600.0
        self.operating_ms += round(dt * 1000)
        self.axis_phase += 0.3
        self.curtain_clear = rng.random() >= CURTAIN_BREAK_PROBABILITY


class ModbusPlc:
    """A simulated PLC serving Modbus TCP; see the module docstring and the README."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5020,
        unit: int = 1,
        bench_registers: int = 0,
        tick: float = 0.1,
        seed: int | None = None,
    ) -> None:
        if not 0 <= bench_registers <= MAX_BENCH_REGISTERS:
            raise ValueError(f"bench_registers must be within 0..{MAX_BENCH_REGISTERS}")
        if not 0 <= unit <= 255:
            raise ValueError("unit must be within 0..255")
        self.host = host
        #: The listening port; after start() with port=0 it is the bound port, which a
        #: later start() reuses (a "PLC restart" keeps its address).
        self.port = port
        self.unit = unit
        self.bench_registers = bench_registers
        #: Seconds between simulation steps; <= 0 freezes the simulation (call step()).
        self.tick = tick
        self.faults = Faults()
        self.stats = SimStats()
        self._holding = [0] * MAP_SIZE
        self._input = [0] * MAP_SIZE
        self._coils = bytearray(MAP_SIZE)
        self._discrete = bytearray(MAP_SIZE)
        self._bench = [0] * bench_registers
        self._model = _LineModel(random.Random(seed))
        self._started_at = time.monotonic()
        self._server: asyncio.Server | None = None
        self._sim_task: asyncio.Task[None] | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._write_model()

    # -- lifecycle ---------------------------------------------------------

    @property
    def serving(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (returns once the port accepts connections) and start the simulation."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        # reuse_address (asyncio's default on Unix) lets a restart bind the same port
        # while closed connections are still in TIME_WAIT.
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started_at = time.monotonic()  # uptime restarts with the PLC
        self._write_model()
        if self.tick > 0:
            self._sim_task = asyncio.create_task(self._simulate(), name="modbus-plc-sim")
        log.info(
            "Modbus PLC simulator listening on %s:%d (unit %d)", self.host, self.port, self.unit
        )

    async def stop(self) -> None:
        """Close the listener and every client connection; start() may be called again."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for writer in self._connections.values():
            writer.close()
        for task in tasks:
            task.cancel()
        if self._sim_task is not None:
            self._sim_task.cancel()
            tasks.append(self._sim_task)
            self._sim_task = None
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        log.info("Modbus PLC simulator on port %d stopped", self.port)

    async def __aenter__(self) -> ModbusPlc:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- simulation --------------------------------------------------------

    def step(self, dt: float | None = None) -> None:
        """Advance the simulation by one tick of ``dt`` seconds (default: the tick, or
        DEFAULT_TICK when the simulation is frozen with tick=0, so that tests stepping by
        hand still see counters increase)."""
        if dt is None:
            dt = self.tick if self.tick > 0 else DEFAULT_TICK
        self._model.advance(dt)
        self._write_model()

    async def _simulate(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # Schedule on absolute times so that the tick does not drift with load.
            next_at += self.tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.step()

    def _write_model(self) -> None:
        """Copy the model into the register tables (overwrites writes to mapped addresses)."""
        m = self._model
        hr = self._holding
        hr[HR_STATE] = m.state
        hr[HR_GOOD] = m.good & 0xFFFF
        hr[HR_SCRAP] = m.scrap & 0xFFFF
        hr[HR_TOTAL : HR_TOTAL + 2] = _u32(m.total)
        status = STATUS_HEARTBEAT if m.heartbeat else 0
        if m.state == LineState.RUNNING:
            status |= STATUS_RUNNING
        if m.alarm:
            status |= STATUS_ALARM
        hr[HR_STATUS] = status
        hr[HR_ORDER] = m.order
        hr[HR_PRESSURE] = m.pressure & 0xFFFF
        hr[HR_TEMPERATURE : HR_TEMPERATURE + 2] = _f32_swapped(m.temperature)
        hr[HR_FLOW : HR_FLOW + 2] = _f32(m.flow)
        hr[HR_AMBIENT] = m.ambient & 0xFFFF
        hr[HR_ENERGY : HR_ENERGY + 4] = _f64(m.energy)
        hr[HR_OPERATING_MS : HR_OPERATING_MS + 4] = _u64(m.operating_ms)
        hr[HR_AXIS : HR_AXIS + 2] = _i32(m.axis)
        hr[HR_RECIPE : HR_RECIPE + STRING_REGS] = _string(m.recipe)
        hr[HR_BATCH : HR_BATCH + STRING_REGS] = _string(m.batch_id)
        uptime = int(time.monotonic() - self._started_at) & 0xFFFFFFFF
        self._input[IR_UPTIME : IR_UPTIME + 2] = _u32(uptime)
        self._input[IR_CYCLE_MS] = m.cycle_ms
        self._coils[COIL_MOTOR] = int(m.state == LineState.RUNNING)
        self._coils[COIL_DOOR] = int(m.door_open)
        self._discrete[DI_ESTOP_OK] = 1
        self._discrete[DI_CURTAIN_CLEAR] = int(m.curtain_clear)

    # -- direct access for tests (no Modbus, no bench increment) ---------------

    def set_holding(self, address: int, values: Sequence[int]) -> None:
        table, offset = self._holding_table(address, len(values))
        table[offset : offset + len(values)] = [v & 0xFFFF for v in values]

    def holding(self, address: int, count: int = 1) -> list[int]:
        table, offset = self._holding_table(address, count)
        return table[offset : offset + count]

    def set_input_registers(self, address: int, values: Sequence[int]) -> None:
        _check_map_range(address, len(values))
        self._input[address : address + len(values)] = [v & 0xFFFF for v in values]

    def input_registers(self, address: int, count: int = 1) -> list[int]:
        _check_map_range(address, count)
        return self._input[address : address + count]

    def set_coils(self, address: int, values: Sequence[bool]) -> None:
        _check_map_range(address, len(values))
        self._coils[address : address + len(values)] = bytes(int(bool(v)) for v in values)

    def coils(self, address: int, count: int = 1) -> list[bool]:
        _check_map_range(address, count)
        return [bool(b) for b in self._coils[address : address + count]]

    def set_discrete_inputs(self, address: int, values: Sequence[bool]) -> None:
        _check_map_range(address, len(values))
        self._discrete[address : address + len(values)] = bytes(int(bool(v)) for v in values)

    def discrete_inputs(self, address: int, count: int = 1) -> list[bool]:
        _check_map_range(address, count)
        return [bool(b) for b in self._discrete[address : address + count]]

    def _holding_table(self, address: int, count: int) -> tuple[list[int], int]:
        """The list holding [address, address+count) and the offset in it, or IndexError."""
        if self._in_map(address, count):
            return self._holding, address
        if self._in_bench(address, count):
            return self._bench, address - BENCH_BASE
        raise IndexError(f"holding {address}..{address + count - 1} is not mapped")

    @staticmethod
    def _in_map(address: int, count: int) -> bool:
        return count >= 1 and address >= 0 and address + count <= MAP_SIZE

    def _in_bench(self, address: int, count: int) -> bool:
        return (
            count >= 1
            and address >= BENCH_BASE
            and address + count <= BENCH_BASE + len(self._bench)
        )

    # -- transport-independent request handling --------------------------------

    async def serve_pdu(self, unit: int, pdu: bytes) -> bytes | None:
        """Apply the fault switches, then answer one request PDU.

        Returns the reply PDU, or None when the connection must be closed without a
        reply. Shared by every transport (TCP now, RTU later).
        """
        self.stats.requests += 1
        faults = self.faults
        if faults.drop_connections:
            return None
        if faults.delay > 0:
            await asyncio.sleep(faults.delay)
        function_code = pdu[0] if pdu else 0
        if faults.exception_code is not None:
            self.stats.exceptions += 1
            return exception_pdu(function_code, faults.exception_code)
        if unit != self.unit:
            # What a TCP gateway answers when the serial device behind it is absent.
            self.stats.exceptions += 1
            return exception_pdu(function_code, EXC_GATEWAY_TARGET_NO_RESPONSE)
        reply = self.process_pdu(pdu)
        if reply[0] & 0x80:
            self.stats.exceptions += 1
        return reply

    def process_pdu(self, pdu: bytes) -> bytes:
        """Execute one request PDU against the tables (no faults) and return the reply."""
        if not pdu:
            return exception_pdu(0, EXC_ILLEGAL_FUNCTION)
        function_code = pdu[0]
        handler = self._handlers.get(function_code)
        if handler is None:
            return exception_pdu(function_code, EXC_ILLEGAL_FUNCTION)
        try:
            return handler(self, pdu)
        except struct.error:
            # A truncated or overlong body: the spec's answer is "illegal data value".
            log.debug("malformed PDU for function %d: %s", function_code, pdu.hex())
            self.stats.malformed += 1
            return exception_pdu(function_code, EXC_ILLEGAL_VALUE)

    def _read_bits(self, pdu: bytes) -> bytes:
        function_code, address, count = struct.unpack(">BHH", pdu)
        if not 1 <= count <= MAX_READ_BITS:
            return exception_pdu(function_code, EXC_ILLEGAL_VALUE)
        if not self._in_map(address, count):
            return exception_pdu(function_code, EXC_ILLEGAL_ADDRESS)
        table = self._coils if function_code == FC_READ_COILS else self._discrete
        packed = _pack_bits(table[address : address + count])
        return bytes((function_code, len(packed))) + packed

    def _read_registers(self, pdu: bytes) -> bytes:
        function_code, address, count = struct.unpack(">BHH", pdu)
        if not 1 <= count <= MAX_READ_REGS:
            return exception_pdu(function_code, EXC_ILLEGAL_VALUE)
        if self._in_map(address, count):
            table = self._holding if function_code == FC_READ_HOLDING else self._input
            values = table[address : address + count]
        elif function_code == FC_READ_HOLDING and self._in_bench(address, count):
            values = self._read_bench(address - BENCH_BASE, count)
        else:
            return exception_pdu(function_code, EXC_ILLEGAL_ADDRESS)
        return struct.pack(f">BB{count}H", function_code, 2 * count, *values)

    def _read_bench(self, offset: int, count: int) -> list[int]:
        """Every bench register changes at every read that touches it, so that a gateway
        with report-by-exception publishes every value it reads."""
        end = offset + count
        values = [(v + 1) & 0xFFFF for v in self._bench[offset:end]]
        self._bench[offset:end] = values
        return values

    def _write_coil(self, pdu: bytes) -> bytes:
        function_code, address, value = struct.unpack(">BHH", pdu)
        if value not in (0x0000, 0xFF00):
            return exception_pdu(function_code, EXC_ILLEGAL_VALUE)
        if not self._in_map(address, 1):
            return exception_pdu(function_code, EXC_ILLEGAL_ADDRESS)
        self._coils[address] = int(value == 0xFF00)
        return pdu  # the reply echoes the request

    def _write_register(self, pdu: bytes) -> bytes:
        function_code, address, value = struct.unpack(">BHH", pdu)
        if not (self._in_map(address, 1) or self._in_bench(address, 1)):
            return exception_pdu(function_code, EXC_ILLEGAL_ADDRESS)
        self.set_holding(address, [value])
        return pdu

    def _write_coils(self, pdu: bytes) -> bytes:
        function_code, address, count, byte_count = struct.unpack_from(">BHHB", pdu)
        data = pdu[6:]
        if not 1 <= count <= MAX_WRITE_BITS or byte_count != (count + 7) // 8:
            return exception_pdu(function_code, EXC_ILLEGAL_VALUE)
        if len(data) != byte_count:
            raise struct.error("byte count does not match the data")
        if not self._in_map(address, count):
            return exception_pdu(function_code, EXC_ILLEGAL_ADDRESS)
        self._coils[address : address + count] = bytes(_unpack_bits(data, count))
        return struct.pack(">BHH", function_code, address, count)

    def _write_registers(self, pdu: bytes) -> bytes:
        function_code, address, count, byte_count = struct.unpack_from(">BHHB", pdu)
        if not 1 <= count <= MAX_WRITE_REGS or byte_count != 2 * count:
            return exception_pdu(function_code, EXC_ILLEGAL_VALUE)
        values = struct.unpack(f">{count}H", pdu[6:])
        if not (self._in_map(address, count) or self._in_bench(address, count)):
            return exception_pdu(function_code, EXC_ILLEGAL_ADDRESS)
        self.set_holding(address, values)
        return struct.pack(">BHH", function_code, address, count)

    # Function code -> handler; a class-level table so dispatch is one dict lookup.
    _handlers: ClassVar[dict[int, Callable[[ModbusPlc, bytes], bytes]]] = {
        FC_READ_COILS: _read_bits,
        FC_READ_DISCRETE: _read_bits,
        FC_READ_HOLDING: _read_registers,
        FC_READ_INPUT: _read_registers,
        FC_WRITE_COIL: _write_coil,
        FC_WRITE_REGISTER: _write_register,
        FC_WRITE_COILS: _write_coils,
        FC_WRITE_REGISTERS: _write_registers,
    }

    # -- Modbus TCP transport -----------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self.stats.connections_opened += 1
        peer = writer.get_extra_info("peername")
        log.debug("client %s connected", peer)
        try:
            await self._serve_tcp(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("client %s went away: %r", peer, exc)
        except asyncio.CancelledError:
            # stop() cancels handlers on purpose. Not re-raised: Python 3.11's stream
            # server calls task.exception() on a cancelled handler and logs a traceback.
            log.debug("client %s: handler cancelled by stop()", peer)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.debug("client %s closed", peer)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve MBAP frames one at a time until the peer closes or sends garbage."""
        while True:
            header = await reader.readexactly(MBAP_LEN)
            transaction, protocol, length, unit = struct.unpack(">HHHB", header)
            if protocol != 0 or not 2 <= length <= MAX_MBAP_LENGTH_FIELD:
                # Framing is lost: no way to find the next frame, so hang up.
                self.stats.malformed += 1
                log.debug("bad MBAP header %s, closing", header.hex())
                return
            pdu = await reader.readexactly(length - 1)
            reply = await self.serve_pdu(unit, pdu)
            if reply is None:
                self.stats.connections_dropped += 1
                log.debug("fault drop_connections: closing")
                return
            writer.write(struct.pack(">HHHB", transaction, 0, len(reply) + 1, unit) + reply)
            await writer.drain()


def _check_map_range(address: int, count: int) -> None:
    if not (count >= 1 and address >= 0 and address + count <= MAP_SIZE):
        raise IndexError(f"{address}..{address + count - 1} is outside 0..{MAP_SIZE - 1}")


# ---------------------------------------------------------------------------
# Command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.modbus_plc",
        description=(
            "Modbus TCP simulator of a small production line (state machine idle → running → "
            "done, batches of ~20 parts, process values with noise). Register map: "
            "simulators/README.md. Fault options inject trouble for gateway tests."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=5020, help="TCP port, 0 = any free port (default %(default)s)"
    )
    parser.add_argument(
        "--unit",
        type=int,
        default=1,
        help="Modbus unit (device) id served; other ids get exception 0x0B (default %(default)s)",
    )
    parser.add_argument(
        "--bench-registers",
        type=int,
        default=0,
        metavar="N",
        help=(
            f"bench mode: holding registers {BENCH_BASE}..{BENCH_BASE}+N-1 exist and each one "
            f"increments at every read that touches it (0..{MAX_BENCH_REGISTERS}, default 0 = off)"
        ),
    )
    parser.add_argument(
        "--tick",
        type=float,
        default=0.1,
        help="seconds between simulation steps; 0 freezes the simulation (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible noise")
    parser.add_argument(
        "--fault-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before every reply, to provoke client timeouts (default 0 = none)",
    )
    parser.add_argument(
        "--fault-exception",
        type=int,
        default=None,
        metavar="CODE",
        help="answer every request with this Modbus exception code, e.g. 4 = device failure",
    )
    parser.add_argument(
        "--fault-drop",
        action="store_true",
        help="close every client connection as soon as it sends a request (no reply)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default %(default)s); DEBUG shows connections and malformed frames",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.bench_registers <= MAX_BENCH_REGISTERS:
        parser.error(f"--bench-registers must be within 0..{MAX_BENCH_REGISTERS}")
    if args.fault_exception is not None and not 1 <= args.fault_exception <= 255:
        parser.error("--fault-exception must be within 1..255")
    if args.fault_delay < 0:
        parser.error("--fault-delay must be >= 0")
    if not 0 <= args.unit <= 255:
        parser.error("--unit must be within 0..255")
    return args


async def _run(args: argparse.Namespace) -> None:
    plc = ModbusPlc(
        host=args.host,
        port=args.port,
        unit=args.unit,
        bench_registers=args.bench_registers,
        tick=args.tick,
        seed=args.seed,
    )
    plc.faults.delay = args.fault_delay
    plc.faults.exception_code = args.fault_exception
    plc.faults.drop_connections = args.fault_drop
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await plc.start()
    try:
        await stop.wait()
    finally:
        await plc.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
