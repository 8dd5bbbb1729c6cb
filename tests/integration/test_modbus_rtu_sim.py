"""The Modbus RTU line simulator, seen from the client end of its pseudo-terminal.

Requests are built by hand with the test's own CRC (not the simulator's), so the
simulator's framing and CRC are checked independently.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import sys
import termios
import tty
from collections.abc import AsyncIterator

import pytest

from simulators.modbus_plc import BENCH_BASE, ModbusPlc
from simulators.modbus_rtu import NOISE_BYTE, RtuLine
from tests.support.frames import crc, frame
from tests.support.wait import until

# The longest test waits at most 5 reads or conditions of 5 s, or 15 + 5 + 10 s (the command
# line): 30 s; they take milliseconds to a second here.
pytestmark = pytest.mark.timeout(60)
WITHIN = 5.0  # seconds: a ceiling for bytes or a state that come in milliseconds

UNITS = (1, 2, 3)


def read_request(unit: int, address: int, count: int = 1, function: int = 3) -> bytes:
    return frame(unit, function, *struct.pack(">HH", address, count))


def registers_reply(unit: int, *values: int, function: int = 3) -> bytes:
    return frame(unit, function, 2 * len(values), *struct.pack(f">{len(values)}H", *values))


def write_registers_request(unit: int, address: int, *values: int) -> bytes:
    body = struct.pack(f">HHB{len(values)}H", address, len(values), 2 * len(values), *values)
    return frame(unit, 16, *body)


def verifies(data: bytes) -> bool:
    return len(data) >= 4 and crc(data[:-2]) == data[-2:]


class Port:
    """The client end: the pty slave opened like pyserial opens a serial port."""

    def __init__(self, path: str, exclusive: bool = False) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        if exclusive:  # what pymodbus's exclusive=True makes pyserial do
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tty.setraw(self.fd, termios.TCSANOW)  # TCSAFLUSH would drop pending input
        self.buffer = bytearray()
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            self.buffer += os.read(self.fd, 4096)
        except BlockingIOError:
            return
        self._arrived.set()

    def send(self, data: bytes) -> None:
        assert os.write(self.fd, data) == len(data)

    async def read(self, count: int, within: float = WITHIN) -> bytes:
        """Exactly ``count`` bytes, waiting at most ``within`` seconds for them."""
        deadline = self._loop.time() + within
        while len(self.buffer) < count:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                pytest.fail(f"{count} bytes expected, got {bytes(self.buffer).hex(' ')!r}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def transact(self, request: bytes, reply_length: int) -> bytes:
        self.send(request)
        return await self.read(reply_length)

    async def assert_nothing_pending(self, line: RtuLine) -> None:
        """Prove the line sent nothing unasked: a probe's reply is all that comes next."""
        line.devices[1].set_holding(299, [0xBEEF])
        expected = registers_reply(1, 0xBEEF)
        assert await self.transact(read_request(1, 299), len(expected)) == expected
        assert not self.buffer

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)


@pytest.fixture
async def line() -> AsyncIterator[RtuLine]:
    # tick=0: frozen models, so values set by the tests stay put. Timing emulated at 19200.
    line = RtuLine({unit: ModbusPlc(unit=unit, tick=0, seed=unit) for unit in UNITS})
    await line.start()
    yield line
    await line.stop()


@pytest.fixture
async def port(line: RtuLine) -> AsyncIterator[Port]:
    assert line.path is not None
    port = Port(line.path)
    yield port
    port.close()


def test_crc_helper_known_vector() -> None:
    assert crc(bytes.fromhex("010300000001")) == bytes.fromhex("840a")


async def test_each_unit_answers_with_its_own_registers(line: RtuLine, port: Port) -> None:
    for unit in UNITS:
        line.devices[unit].set_holding(250, [unit * 1000, unit])
    for unit in UNITS:
        expected = registers_reply(unit, unit * 1000, unit)
        assert await port.transact(read_request(unit, 250, 2), len(expected)) == expected
        assert verifies(expected)
    for unit in UNITS:
        assert line.stats[unit].requests == 1
        assert line.stats[unit].replies == 1
        assert line.stats[unit].ignored_other_unit == 2
        assert line.devices[unit].stats.requests == 1


async def test_back_to_back_requests_are_split_by_length(line: RtuLine, port: Port) -> None:
    line.devices[1].set_holding(0, [0])  # frozen model: state idle
    # Two requests in one write, no gap between them: only their lengths delimit them.
    port.send(write_registers_request(2, 260, 7, 8, 9) + read_request(1, 0))
    assert await port.read(8) == frame(2, 16, 0x01, 0x04, 0x00, 0x03)
    assert await port.read(7) == registers_reply(1, 0)
    assert line.devices[2].holding(260, 3) == [7, 8, 9]
    assert line.line_stats.crc_errors == 0


async def test_other_function_codes_are_framed_by_silence(line: RtuLine, port: Port) -> None:
    # Function 43 has no length rule: the frame ends at the t3.5 gap; the PLC rejects it.
    reply = await port.transact(frame(3, 43, 14, 1, 0), 5)
    assert reply == frame(3, 43 | 0x80, 1)


async def test_unknown_unit_gets_silence(line: RtuLine, port: Port) -> None:
    port.send(read_request(9, 0))
    await until(lambda: line.line_stats.unknown_unit == 1, WITHIN, "the request to unit 9 seen")
    assert [line.stats[unit].ignored_other_unit for unit in UNITS] == [1, 1, 1]
    await port.assert_nothing_pending(line)


async def test_bad_crc_gets_silence_and_is_counted(line: RtuLine, port: Port) -> None:
    request = bytearray(read_request(2, 0))
    request[-1] ^= 0x40
    port.send(bytes(request))
    await until(lambda: line.stats[2].crc_errors_received == 1, WITHIN, "the bad CRC counted")
    # Garbage without a recognisable length ends at the gap and is dropped as well.
    port.send(bytes((0x07, 0x99, 0x42)))
    await until(lambda: line.line_stats.crc_errors == 2, WITHIN, "the garbage dropped")
    await port.assert_nothing_pending(line)
    assert line.stats[2].requests == 0
    assert line.devices[2].stats.requests == 0


async def test_silent_unit_never_replies(line: RtuLine, port: Port) -> None:
    line.faults[2].silent = True
    port.send(read_request(2, 0))
    await until(lambda: line.stats[2].silenced == 1, WITHIN, "unit 2 silenced")
    await port.assert_nothing_pending(line)
    line.faults[2].clear()
    line.devices[2].set_holding(5, [55])
    assert await port.transact(read_request(2, 5), 7) == registers_reply(2, 55)


async def test_late_reply_comes_after_the_delay_and_others_go_on(line: RtuLine, port: Port) -> None:
    loop = asyncio.get_running_loop()
    line.devices[2].set_holding(7, [222])
    line.devices[1].set_holding(7, [111])
    line.faults[2].late = 0.4
    started = loop.time()
    port.send(read_request(2, 7))
    # The client "timed out" and moved on to unit 1, which answers at once ...
    port.send(read_request(1, 7))
    assert await port.read(7) == registers_reply(1, 111)
    # ... while unit 2's late reply is still pending (no stopwatch: a slow machine only
    # makes the late reply later) ...
    assert line.stats[2].late_replies_sent == 0
    # ... then unit 2's late reply turns up, in the middle of whatever comes next.
    assert await port.read(7) == registers_reply(2, 222)
    assert loop.time() - started >= 0.4
    assert line.stats[2].late_replies_sent == 1
    assert line.stats[1].late_replies_sent == 0


@pytest.mark.parametrize("mode", ["crc", "truncate", "noise"])
async def test_garbled_replies(line: RtuLine, port: Port, mode: str) -> None:
    line.devices[3].set_holding(20, [0x1234])
    expected = registers_reply(3, 0x1234)
    line.faults[3].garble = mode  # type: ignore[assignment]
    port.send(read_request(3, 20))
    if mode == "crc":
        received = await port.read(7)
        assert received[:-2] == expected[:-2]
        assert not verifies(received)
    elif mode == "truncate":
        received = await port.read(4)
        assert received == expected[:4]
        await until(lambda: line.stats[3].garbled_sent == 1, WITHIN, "the truncated reply sent")
    else:
        received = await port.read(8)
        assert received[0] == NOISE_BYTE
        assert not verifies(received)
        assert received[1:] == expected
    await port.assert_nothing_pending(line)
    assert line.stats[3].garbled_sent == 1
    assert line.stats[3].replies == 1


async def test_reply_from_the_wrong_unit(line: RtuLine, port: Port) -> None:
    line.devices[1].set_holding(3, [9, 9])
    line.faults[1].wrong_unit = 7
    assert await port.transact(read_request(1, 3, 2), 9) == registers_reply(7, 9, 9)
    assert line.stats[1].wrong_unit_sent == 1


async def test_plc_faults_are_honoured(line: RtuLine, port: Port) -> None:
    line.devices[3].faults.exception_code = 4
    assert await port.transact(read_request(3, 0), 5) == frame(3, 0x83, 4)
    line.devices[3].faults.clear()
    line.devices[3].faults.drop_connections = True  # no connection to drop: silence
    port.send(read_request(3, 0))
    await until(lambda: line.devices[3].stats.requests == 2, WITHIN, "the second request at unit 3")
    await port.assert_nothing_pending(line)


async def test_broadcast_write_reaches_every_unit_without_reply(line: RtuLine, port: Port) -> None:
    line.faults[3].silent = True  # off the line: misses the broadcast
    port.send(write_registers_request(0, 270, 0xAA, 0xBB))
    port.send(frame(0, 6, 0x01, 0x0E, 0x00, 0x05))  # write single register 270 = 5 ...
    port.send(read_request(0, 270))  # ... and a broadcast read, which nobody executes
    await until(
        lambda: line.devices[2].holding(270, 2) == [5, 0xBB], WITHIN, "the broadcasts executed"
    )
    assert line.devices[1].holding(270, 2) == [5, 0xBB]
    assert line.devices[3].holding(270, 2) == [0, 0]
    assert line.line_stats.broadcasts == 3
    assert [line.stats[unit].broadcasts for unit in UNITS] == [2, 2, 0]
    assert line.stats[3].silenced == 2
    await port.assert_nothing_pending(line)


async def test_timing_emulation_paces_replies_at_the_baud_rate() -> None:
    plc = ModbusPlc(unit=5, tick=0)
    async with RtuLine({5: plc}, baudrate=1200, parity="E") as line:
        assert line.char_time == pytest.approx(11 / 1200)
        assert line.path is not None
        port = Port(line.path)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await port.transact(read_request(5, 0), 7) == registers_reply(5, 0)
            # request 8 chars + t3.5 + reply 7 chars = 18.5 chars of 11 bits at 1200 baud
            assert loop.time() - started >= 18.5 * 11 / 1200 - 0.005
        finally:
            port.close()


async def test_client_can_reopen_and_stale_bytes_wait_for_it(line: RtuLine) -> None:
    assert line.path is not None
    port = Port(line.path, exclusive=True)
    # A second exclusive opener is refused, as with a real port.
    second = os.open(line.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match="Resource temporarily unavailable") as info:
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert info.value.errno == errno.EAGAIN
    finally:
        os.close(second)
    line.faults[2].late = 0.1
    port.send(read_request(2, 0))
    port.close()  # the client gives up before the late reply
    await until(lambda: line.stats[2].late_replies_sent == 1, WITHIN, "the late reply sent")
    # The simulator holds the slave open: the master never sees a hang-up, and the reply
    # written with no client attached waits in the pty for the next opener.
    port = Port(line.path, exclusive=True)
    try:
        assert await port.read(7) == registers_reply(2, 0)
        port.send(read_request(2, 0))
    finally:
        port.close()
    await until(lambda: line.stats[2].late_replies_sent == 2, WITHIN, "the second late reply sent")
    line.flush_client_input()  # what pyserial's open() does on the client side
    port = Port(line.path, exclusive=True)
    try:
        await port.assert_nothing_pending(line)
    finally:
        port.close()
    assert line.line_stats.crc_errors == 0


async def test_command_line_prints_the_path_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.modbus_rtu",
        "--units",
        "1,2,3",
        "--bench-registers",
        "10",
        "--tick",
        "0",
        "--fault-silent",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            path = (await process.stdout.readline()).decode().strip()
        assert path.startswith("/dev/")
        port = Port(path, exclusive=True)
        try:
            # Bench registers increment at every read: the first read returns 1.
            reply = await port.transact(read_request(3, BENCH_BASE, 2), 9)
            assert reply == registers_reply(3, 1, 1)
        finally:
            port.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
