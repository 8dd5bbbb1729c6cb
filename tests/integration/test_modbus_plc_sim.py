"""The Modbus PLC simulator over real sockets, seen through pymodbus's client."""

from __future__ import annotations

import asyncio
import re
import signal
import struct
import sys
from collections.abc import AsyncIterator, Sequence

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from simulators.modbus_plc import BENCH_BASE, LineState, ModbusPlc, OrderStatus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


def regs_bytes(regs: Sequence[int]) -> bytes:
    return struct.pack(f">{len(regs)}H", *regs)


async def connect(port: int, reply_timeout: float = 1.0) -> AsyncModbusTcpClient:
    # retries=0 and reconnect_delay=0: every failure surfaces at once, no silent reconnect.
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=reply_timeout, retries=0, reconnect_delay=0
    )
    assert await client.connect()
    return client


async def read(client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
    result = await client.read_holding_registers(address, count=count, device_id=1)
    assert not result.isError(), result
    return list(result.registers)


@pytest.fixture
async def frozen_plc() -> AsyncIterator[ModbusPlc]:
    plc = ModbusPlc(host="127.0.0.1", port=0, unit=1, bench_registers=500, tick=0, seed=3)
    await plc.start()
    yield plc
    await plc.stop()


async def test_register_map_decodes_as_documented(frozen_plc: ModbusPlc) -> None:
    client = await connect(frozen_plc.port)
    try:
        hr = await read(client, 0, 125) + await read(client, 125, 93)
        assert hr[0] == LineState.IDLE
        assert hr[30] == OrderStatus.CREATED
        temperature = struct.unpack(">f", regs_bytes([hr[101], hr[100]]))[0]
        assert temperature == pytest.approx(725.3, abs=0.01)
        assert struct.unpack(">h", regs_bytes(hr[104:105]))[0] == -35
        assert struct.unpack(">d", regs_bytes(hr[110:114]))[0] == pytest.approx(1234.5)
        assert struct.unpack(">Q", regs_bytes(hr[120:124]))[0] == 5_000_000_000
        assert struct.unpack(">i", regs_bytes(hr[124:126]))[0] == -150_000
        assert regs_bytes(hr[200:208]).rstrip(b"\0") == b"RCP-A12"
        assert regs_bytes(hr[210:218]).rstrip(b"\0") == b"B1001"

        inputs = await client.read_input_registers(0, count=3, device_id=1)
        assert not inputs.isError()
        assert struct.unpack(">I", regs_bytes(inputs.registers[0:2]))[0] < 60
        discrete = await client.read_discrete_inputs(0, count=2, device_id=1)
        assert discrete.bits[:2] == [True, True]
        coils = await client.read_coils(0, count=4, device_id=1)
        assert coils.bits[0] is False  # motor off while idle
    finally:
        client.close()


async def test_writes_round_trip(frozen_plc: ModbusPlc) -> None:
    client = await connect(frozen_plc.port)
    try:
        assert not (await client.write_register(250, 4711, device_id=1)).isError()
        assert not (await client.write_registers(260, [1, 2, 3], device_id=1)).isError()
        assert not (await client.write_coil(50, True, device_id=1)).isError()
        assert not (await client.write_coils(60, [True, False, True], device_id=1)).isError()
        assert await read(client, 250, 13) == [4711] + [0] * 9 + [1, 2, 3]
        assert frozen_plc.coils(60, 3) == [True, False, True]
        assert frozen_plc.coils(50)[0] is True
        frozen_plc.set_holding(270, [99])
        assert await read(client, 270, 1) == [99]
    finally:
        client.close()


async def test_state_machine_advances() -> None:
    async with ModbusPlc(port=0, tick=0.01, seed=11) as plc:
        client = await connect(plc.port)
        try:

            async def state_is(wanted: int) -> bool:
                return (await read(client, 0, 1))[0] == wanted

            await until(lambda: state_is(LineState.RUNNING), 10, "the line state RUNNING")
            assert (await read(client, 30, 1))[0] == OrderStatus.RUNNING
            await until(lambda: state_is(LineState.DONE), 10, "the line state DONE")
            order = (await read(client, 30, 1))[0]
            assert order in (OrderStatus.COMPLETED, OrderStatus.ABORTED)
            await until(lambda: state_is(LineState.IDLE), 10, "the line state IDLE")
            assert regs_bytes(await read(client, 210, 8)).rstrip(b"\0") == b"B1002"
        finally:
            client.close()


async def test_bench_registers_change_at_every_read(frozen_plc: ModbusPlc) -> None:
    client = await connect(frozen_plc.port)
    try:
        previous = await read(client, BENCH_BASE, 125)
        for _ in range(5):
            current = await read(client, BENCH_BASE, 125)
            assert all(c == (p + 1) & 0xFFFF for p, c in zip(previous, current, strict=True))
            previous = current
        tail = await client.read_holding_registers(BENCH_BASE + 499, count=2, device_id=1)
        assert tail.isError()
        assert tail.exception_code == 2
    finally:
        client.close()


async def test_illegal_address_beyond_the_map(frozen_plc: ModbusPlc) -> None:
    client = await connect(frozen_plc.port)
    try:
        result = await client.read_holding_registers(300, count=1, device_id=1)
        assert result.isError()
        assert result.exception_code == 2
        assert await read(client, 280, 20) == [0] * 20  # unmapped but inside 0..299
    finally:
        client.close()


async def test_exception_fault_switches_at_runtime(frozen_plc: ModbusPlc) -> None:
    client = await connect(frozen_plc.port)
    try:
        await read(client, 0, 1)
        frozen_plc.faults.exception_code = 4
        result = await client.read_holding_registers(0, count=1, device_id=1)
        assert result.isError()
        assert result.exception_code == 4
        frozen_plc.faults.exception_code = None
        assert await read(client, 0, 1) == [LineState.IDLE]
    finally:
        client.close()


async def test_delay_fault_makes_the_client_time_out(frozen_plc: ModbusPlc) -> None:
    frozen_plc.faults.delay = 2.0
    client = await connect(frozen_plc.port, reply_timeout=0.2)
    try:
        with pytest.raises(ModbusException):
            await client.read_holding_registers(0, count=1, device_id=1)
    finally:
        client.close()
    frozen_plc.faults.delay = 0
    # A fresh connection is served at once (the old one is still serving its late reply).
    client = await connect(frozen_plc.port, reply_timeout=0.5)
    try:
        assert await read(client, 0, 1) == [LineState.IDLE]
    finally:
        client.close()


async def test_drop_fault_closes_the_connection(frozen_plc: ModbusPlc) -> None:
    frozen_plc.faults.drop_connections = True
    reader, writer = await asyncio.open_connection("127.0.0.1", frozen_plc.port)
    try:
        writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, 1))
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read(100) == b""  # EOF, no reply
    finally:
        writer.close()
    assert frozen_plc.stats.connections_dropped == 1

    client = await connect(frozen_plc.port, reply_timeout=0.5)
    try:
        with pytest.raises(ModbusException):
            await client.read_holding_registers(0, count=1, device_id=1)
    finally:
        client.close()

    frozen_plc.faults.drop_connections = False
    client = await connect(frozen_plc.port)
    try:
        assert await read(client, 0, 1) == [LineState.IDLE]
    finally:
        client.close()


async def test_garbage_closes_only_that_connection(frozen_plc: ModbusPlc) -> None:
    good = await connect(frozen_plc.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", frozen_plc.port)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")  # protocol id "/ " ≠ 0
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read(100) == b""
        assert await read(good, 0, 1) == [LineState.IDLE]
        assert frozen_plc.stats.malformed == 1
    finally:
        writer.close()
        good.close()


async def test_wrong_unit_gets_gateway_exception(frozen_plc: ModbusPlc) -> None:
    client = await connect(frozen_plc.port)
    try:
        result = await client.read_holding_registers(0, count=1, device_id=9)
        assert result.isError()
        assert result.exception_code == 0x0B
    finally:
        client.close()


async def test_stop_then_start_on_the_same_port() -> None:
    plc = ModbusPlc(port=0, tick=0.05, seed=5)
    await plc.start()
    port = plc.port
    client = await connect(port, reply_timeout=0.5)
    try:
        await read(client, 0, 1)
        await plc.stop()
        assert not plc.serving
        with pytest.raises(ModbusException):
            await client.read_holding_registers(0, count=1, device_id=1)
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)

    await plc.start()
    try:
        assert plc.port == port
        client = await connect(port)
        try:
            await read(client, 0, 1)
        finally:
            client.close()
    finally:
        await plc.stop()
    await plc.stop()  # idempotent


async def test_command_line_serves_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.modbus_plc",
        "--port",
        "0",
        "--fault-exception",
        "4",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(15):
            line = (await process.stderr.readline()).decode()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        client = await connect(int(match.group(1)))
        try:
            result = await client.read_holding_registers(0, count=1, device_id=1)
            assert result.exception_code == 4
        finally:
            client.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
