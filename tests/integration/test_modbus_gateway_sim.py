"""The multi-unit Modbus gateway simulators over real sockets.

TcpGateway is read through pymodbus's TCP client and through hand-built MBAP frames (to
see transaction ids and pipelining); RtuOverTcpServer through hand-built RTU frames with
the test's own CRC (not the simulator's), so its framing is checked independently.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from simulators.modbus_gateway import GatewayFaults, RtuOverTcpServer, TcpGateway
from simulators.modbus_plc import ModbusPlc
from tests.support.frames import crc, frame
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

UNITS = (1, 2, 3)
ADDRESS = 250  # unmapped holding register: the frozen model never rewrites it
TARGET_TIMEOUT = 0.2
SILENCE = 0.25  # how long "no reply" is watched for


def devices() -> dict[int, ModbusPlc]:
    """Frozen PLCs (tick=0), each holding 1000 + unit at ADDRESS."""
    plcs = {unit: ModbusPlc(unit=unit, tick=0, seed=unit) for unit in UNITS}
    for unit, plc in plcs.items():
        plc.set_holding(ADDRESS, [1000 + unit])
    return plcs


class Stream:
    """A raw TCP client with deadlines on every read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, count: int, within: float = 2.0) -> bytes:
        try:
            return await asyncio.wait_for(self.reader.readexactly(count), within)
        except TimeoutError:
            pytest.fail(f"{count} bytes expected within {within} s")

    async def assert_silent(self, within: float = SILENCE) -> None:
        """Nothing arrives for ``within`` seconds (a negative check, not a sync point)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), within)
        except TimeoutError:
            return
        pytest.fail(f"unexpected bytes: {data.hex(' ')}")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# ---------------------------------------------------------------------------
# TcpGateway


def mbap_read(transaction: int, unit: int, address: int = ADDRESS, count: int = 1) -> bytes:
    return struct.pack(">HHHBBHH", transaction, 0, 6, unit, 3, address, count)


async def read_mbap_reply(stream: Stream, within: float = 2.0) -> tuple[int, int, bytes]:
    """(transaction id, unit id, PDU) of the next MBAP frame."""
    transaction, protocol, length, unit = struct.unpack(">HHHB", await stream.read(7, within))
    assert protocol == 0
    return transaction, unit, await stream.read(length - 1)


def one_register(value: int) -> bytes:
    return struct.pack(">BBH", 3, 2, value)


@pytest.fixture
async def gateway() -> AsyncIterator[TcpGateway]:
    async with TcpGateway(devices(), port=0, target_timeout=TARGET_TIMEOUT) as gateway:
        yield gateway


@pytest.fixture
async def client(gateway: TcpGateway) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=gateway.port, timeout=1.0, retries=0, reconnect_delay=0
    )
    assert await client.connect()
    yield client
    client.close()


async def test_gateway_routes_each_unit_to_its_plc(
    gateway: TcpGateway, client: AsyncModbusTcpClient
) -> None:
    for unit in (3, 1, 2):
        result = await client.read_holding_registers(ADDRESS, count=1, device_id=unit)
        assert not result.isError(), result
        assert result.registers == [1000 + unit]
    write = await client.write_register(ADDRESS, 77, device_id=2)
    assert not write.isError()
    assert gateway.devices[2].holding(ADDRESS) == [77]
    assert gateway.devices[1].holding(ADDRESS) == [1001]
    assert gateway.stats[2].requests == 2
    assert gateway.stats[2].replies == 2
    assert gateway.stats[1].requests == gateway.stats[3].requests == 1


async def test_gateway_answers_exception_11_for_a_missing_unit(
    gateway: TcpGateway, client: AsyncModbusTcpClient
) -> None:
    result = await client.read_holding_registers(ADDRESS, count=1, device_id=7)
    assert result.isError()
    assert result.exception_code == 11
    assert gateway.gateway_stats.unknown_unit == 1
    # The connection stays usable.
    ok = await client.read_holding_registers(ADDRESS, count=1, device_id=1)
    assert ok.registers == [1001]


async def test_silent_unit_in_exception_mode_gets_exception_11_after_the_timeout(
    gateway: TcpGateway, client: AsyncModbusTcpClient
) -> None:
    gateway.faults[2].silent = True
    gateway.faults[2].silent_mode = "exception"
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await client.read_holding_registers(ADDRESS, count=1, device_id=2)
    assert loop.time() - started >= TARGET_TIMEOUT * 0.9
    assert result.isError()
    assert result.exception_code == 11
    assert gateway.stats[2].silenced == 1
    assert gateway.stats[2].gateway_exceptions == 1
    assert gateway.stats[2].replies == 0
    gateway.faults[2].clear()
    ok = await client.read_holding_registers(ADDRESS, count=1, device_id=2)
    assert ok.registers == [1002]


async def test_silent_unit_in_none_mode_gets_no_reply(gateway: TcpGateway) -> None:
    gateway.faults[2].silent = True  # silent_mode "none" is the default
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=gateway.port, timeout=TARGET_TIMEOUT * 1.5, retries=0, reconnect_delay=0
    )
    assert await client.connect()
    try:
        with pytest.raises(ModbusException):
            await client.read_holding_registers(ADDRESS, count=1, device_id=2)
    finally:
        client.close()
    assert gateway.stats[2].silenced == 1

    # Pipelined behind a silent request, the next one is answered after the gateway's
    # timeout, and nothing ever comes for the silent one.
    stream = await Stream.open(gateway.port)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream.send(mbap_read(1, 2) + mbap_read(2, 1))
        assert await read_mbap_reply(stream) == (2, 1, one_register(1001))
        assert loop.time() - started >= TARGET_TIMEOUT * 0.9
        await stream.assert_silent()
    finally:
        await stream.close()
    assert gateway.stats[2].silenced == 2
    assert gateway.stats[2].gateway_exceptions == 0


async def test_late_reply_keeps_its_transaction_id(gateway: TcpGateway) -> None:
    gateway.faults[2].late = 0.3
    stream = await Stream.open(gateway.port)
    try:
        stream.send(mbap_read(10, 2))
        # The client's timeout (0.1 s) passes without a reply; it moves on to unit 1.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.reader.read(1), 0.1)
        stream.send(mbap_read(11, 1))
        # In order per connection: the late reply first, recognisable by its id.
        assert await read_mbap_reply(stream) == (10, 2, one_register(1002))
        assert await read_mbap_reply(stream) == (11, 1, one_register(1001))
    finally:
        await stream.close()
    assert gateway.stats[2].late_replies_sent == 1


async def test_pipelined_requests_are_answered_in_order(gateway: TcpGateway) -> None:
    gateway.faults[3].late = 0.1  # the first is slow: the others still wait their turn
    stream = await Stream.open(gateway.port)
    try:
        stream.send(mbap_read(0x0103, 3) + mbap_read(0x0101, 1) + mbap_read(0xFFFF, 2))
        replies = [await read_mbap_reply(stream) for _ in range(3)]
    finally:
        await stream.close()
    assert replies == [
        (0x0103, 3, one_register(1003)),
        (0x0101, 1, one_register(1001)),
        (0xFFFF, 2, one_register(1002)),
    ]


async def test_gateway_restart_keeps_the_port_and_broken_mbap_closes() -> None:
    gateway = TcpGateway(devices(), port=0, target_timeout=TARGET_TIMEOUT)
    await gateway.start()
    port = gateway.port
    assert port != 0
    stream = await Stream.open(port)
    stream.send(struct.pack(">HHHB", 1, 5, 6, 1) + b"\x03\x00\x00\x00\x01")  # protocol 5
    assert await stream.reader.read() == b""  # closed by the gateway
    await stream.close()
    assert gateway.gateway_stats.malformed == 1
    await gateway.stop()
    assert not gateway.serving
    await gateway.start()
    try:
        assert gateway.port == port
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        assert await client.connect()
        result = await client.read_holding_registers(ADDRESS, count=1, device_id=3)
        client.close()
        assert result.registers == [1003]
    finally:
        await gateway.stop()


def test_gateway_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="silent_mode"):
        GatewayFaults(silent_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unit=1"):
        TcpGateway({2: ModbusPlc(unit=1, tick=0)})


# ---------------------------------------------------------------------------
# RtuOverTcpServer


def rtu_read(unit: int, address: int = ADDRESS, count: int = 1) -> bytes:
    return frame(unit, 3, *struct.pack(">HH", address, count))


def rtu_reply(unit: int, value: int) -> bytes:
    return frame(unit, 3, 2, *struct.pack(">H", value))


def verifies(data: bytes) -> bool:
    return len(data) >= 4 and crc(data[:-2]) == data[-2:]


REPLY_LEN = 7  # unit + fc + byte count + one register + CRC


@pytest.fixture
async def rtu_server() -> AsyncIterator[RtuOverTcpServer]:
    async with RtuOverTcpServer(devices(), host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def rtu(rtu_server: RtuOverTcpServer) -> AsyncIterator[Stream]:
    stream = await Stream.open(rtu_server.port)
    yield stream
    await stream.close()


async def assert_probe_answers(stream: Stream) -> None:
    """The next bytes are exactly the reply to a fresh request (nothing pending)."""
    stream.send(rtu_read(1))
    assert await stream.read(REPLY_LEN) == rtu_reply(1, 1001)


async def test_rtu_units_answer_with_their_own_registers(
    rtu_server: RtuOverTcpServer, rtu: Stream
) -> None:
    for unit in UNITS:
        rtu.send(rtu_read(unit))
        reply = await rtu.read(REPLY_LEN)
        assert verifies(reply)
        assert reply == rtu_reply(unit, 1000 + unit)
    # Back to back in one write: split by length, each answered once.
    rtu.send(b"".join(rtu_read(unit) for unit in UNITS))
    replies = {await rtu.read(REPLY_LEN) for _ in UNITS}
    assert replies == {rtu_reply(unit, 1000 + unit) for unit in UNITS}
    assert [rtu_server.stats[unit].requests for unit in UNITS] == [2, 2, 2]
    assert [rtu_server.stats[unit].replies for unit in UNITS] == [2, 2, 2]


async def test_rtu_other_function_codes_are_framed_by_the_gap(rtu: Stream) -> None:
    rtu.send(frame(2, 0x2B, 0x0E, 0x01, 0x00))  # read device id: length unknown to the framer
    assert await rtu.read(5) == frame(2, 0xAB, 0x01)  # illegal function, after the gap


async def test_rtu_bad_crc_gets_silence(rtu_server: RtuOverTcpServer, rtu: Stream) -> None:
    bad = bytearray(rtu_read(1))
    bad[-1] ^= 0xFF
    rtu.send(bytes(bad))
    await until(lambda: rtu_server.line_stats.crc_errors == 1, 5, "the bad CRC counted")
    await rtu.assert_silent()
    assert rtu_server.stats[1].crc_errors_received == 1
    assert rtu_server.stats[1].requests == 0
    await assert_probe_answers(rtu)


async def test_rtu_unknown_unit_gets_silence(rtu_server: RtuOverTcpServer, rtu: Stream) -> None:
    rtu.send(rtu_read(9))
    await until(lambda: rtu_server.line_stats.unknown_unit == 1, 5, "the request to unit 9 seen")
    await rtu.assert_silent()
    await assert_probe_answers(rtu)


async def test_rtu_silent_unit_never_replies(rtu_server: RtuOverTcpServer, rtu: Stream) -> None:
    rtu_server.faults[2].silent = True
    rtu.send(rtu_read(2))
    await until(lambda: rtu_server.stats[2].silenced == 1, 5, "unit 2 silenced")
    await rtu.assert_silent()
    await assert_probe_answers(rtu)
    rtu_server.faults[2].clear()
    rtu.send(rtu_read(2))
    assert await rtu.read(REPLY_LEN) == rtu_reply(2, 1002)


async def test_rtu_late_reply_arrives_after_another_units(
    rtu_server: RtuOverTcpServer, rtu: Stream
) -> None:
    rtu_server.faults[2].late = 0.3
    loop = asyncio.get_running_loop()
    started = loop.time()
    rtu.send(rtu_read(2))
    rtu.send(rtu_read(1))
    # Units are independent: unit 1 answers at once, unit 2's reply comes later.
    assert await rtu.read(REPLY_LEN) == rtu_reply(1, 1001)
    assert await rtu.read(REPLY_LEN) == rtu_reply(2, 1002)
    assert loop.time() - started >= 0.3 * 0.9
    assert rtu_server.stats[2].late_replies_sent == 1


@pytest.mark.parametrize("mode", ["crc", "truncate", "noise"])
async def test_rtu_garbled_replies(rtu_server: RtuOverTcpServer, rtu: Stream, mode: str) -> None:
    rtu_server.faults[3].garble = mode  # type: ignore[assignment]
    rtu.send(rtu_read(3))
    good = rtu_reply(3, 1003)
    if mode == "crc":
        reply = await rtu.read(REPLY_LEN)
        assert reply[:-2] == good[:-2]
        assert not verifies(reply)
    elif mode == "truncate":
        assert await rtu.read(REPLY_LEN - 3) == good[:-3]
        await rtu.assert_silent()
    else:
        assert await rtu.read(REPLY_LEN + 1) == b"\xff" + good
    assert rtu_server.stats[3].garbled_sent == 1
    rtu_server.faults[3].clear()
    await assert_probe_answers(rtu)


async def test_rtu_reply_from_the_wrong_unit(rtu_server: RtuOverTcpServer, rtu: Stream) -> None:
    rtu_server.faults[1].wrong_unit = 9
    rtu.send(rtu_read(1))
    assert await rtu.read(REPLY_LEN) == rtu_reply(9, 1001)
    assert rtu_server.stats[1].wrong_unit_sent == 1


async def test_rtu_broadcast_write_reaches_every_unit_without_reply(
    rtu_server: RtuOverTcpServer, rtu: Stream
) -> None:
    rtu.send(frame(0, 6, *struct.pack(">HH", ADDRESS, 4242)))
    await until(
        lambda: all(rtu_server.devices[u].holding(ADDRESS) == [4242] for u in UNITS),
        5,
        "the broadcast executed by every unit",
    )
    await rtu.assert_silent()
    assert rtu_server.line_stats.broadcasts == 1
