"""Unit tests of the Modbus PLC simulator's PDU handling and simulation (no sockets)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from simulators.modbus_plc import (
    BENCH_BASE,
    MAP_SIZE,
    LineState,
    ModbusPlc,
    OrderStatus,
    _parse_args,
)

pytestmark = pytest.mark.timeout(10)

ALLOWED_ORDER_MOVES = {
    (OrderStatus.CREATED, OrderStatus.RELEASED),
    (OrderStatus.RELEASED, OrderStatus.RUNNING),
    (OrderStatus.RUNNING, OrderStatus.COMPLETED),
    (OrderStatus.RUNNING, OrderStatus.ABORTED),
    (OrderStatus.COMPLETED, OrderStatus.CREATED),
    (OrderStatus.ABORTED, OrderStatus.CREATED),
}


def read_request(function_code: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", function_code, address, count)


def read_regs(plc: ModbusPlc, address: int, count: int, function_code: int = 3) -> list[int]:
    reply = plc.process_pdu(read_request(function_code, address, count))
    assert reply[0] == function_code, reply.hex()
    assert reply[1] == 2 * count
    return list(struct.unpack(f">{count}H", reply[2:]))


def regs_bytes(regs: list[int]) -> bytes:
    return struct.pack(f">{len(regs)}H", *regs)


def exception_of(reply: bytes) -> tuple[int, int]:
    assert len(reply) == 2
    assert reply[0] & 0x80
    return reply[0] & 0x7F, reply[1]


@pytest.fixture
def plc() -> ModbusPlc:
    # tick=0: the model is frozen at its documented initial values until step().
    return ModbusPlc(port=0, tick=0, seed=7, bench_registers=200)


def test_initial_register_map_decodes_as_documented(plc: ModbusPlc) -> None:
    hr = read_regs(plc, 0, 125) + read_regs(plc, 125, 125) + read_regs(plc, 250, 50)
    assert hr[0] == LineState.IDLE
    assert hr[1:3] == [0, 0]
    assert struct.unpack(">I", regs_bytes(hr[3:5]))[0] == 0
    assert hr[30] == OrderStatus.CREATED
    assert 0 <= struct.unpack(">h", regs_bytes(hr[40:41]))[0] <= 100
    # Swapped words: low word first, so swap back before decoding big-endian.
    temperature = struct.unpack(">f", regs_bytes([hr[101], hr[100]]))[0]
    assert temperature == pytest.approx(725.3, abs=0.01)
    assert struct.unpack(">f", regs_bytes(hr[102:104]))[0] >= 0.0
    assert struct.unpack(">h", regs_bytes(hr[104:105]))[0] == -35
    assert struct.unpack(">d", regs_bytes(hr[110:114]))[0] == pytest.approx(1234.5)
    assert struct.unpack(">Q", regs_bytes(hr[120:124]))[0] == 5_000_000_000
    assert struct.unpack(">i", regs_bytes(hr[124:126]))[0] == -150_000
    assert regs_bytes(hr[200:208]) == b"RCP-A12".ljust(16, b"\0")
    assert regs_bytes(hr[210:218]) == b"B1001".ljust(16, b"\0")
    # Unmapped addresses inside 0..299 read as 0.
    assert hr[5:10] == [0] * 5
    assert hr[218:300] == [0] * 82


def test_bits_and_input_registers(plc: ModbusPlc) -> None:
    reply = plc.process_pdu(read_request(2, 0, 2))
    assert reply == bytes([2, 1, 0b11])  # e-stop ok, curtain clear
    reply = plc.process_pdu(read_request(1, 0, 10))
    assert reply == bytes([1, 2, 0, 0])  # motor off while idle, door closed
    assert read_regs(plc, 0, 3, function_code=4)[2] == 0  # no part made yet


def test_state_machine_runs_batches_with_valid_order_transitions(plc: ModbusPlc) -> None:
    seen_states: list[int] = []
    moves: set[tuple[int, int]] = set()
    order = plc.holding(30)[0]
    heartbeats: set[int] = set()
    for _ in range(200):  # ~5 full cycles
        plc.step()
        state = plc.holding(0)[0]
        if not seen_states or seen_states[-1] != state:
            seen_states.append(state)
        new_order = plc.holding(30)[0]
        if new_order != order:
            moves.add((order, new_order))
            order = new_order
        status = plc.holding(10)[0]
        heartbeats.add(status & 1)
        assert bool(status & 0b1000) == (state == LineState.RUNNING)
        assert plc.coils(0)[0] == (state == LineState.RUNNING)
        assert state in (LineState.IDLE, LineState.RUNNING, LineState.DONE)
    assert seen_states[:4] == [LineState.IDLE, LineState.RUNNING, LineState.DONE, LineState.IDLE]
    assert moves <= ALLOWED_ORDER_MOVES
    assert heartbeats == {0, 1}
    batch = regs_bytes(plc.holding(210, 8)).rstrip(b"\0").decode()
    assert batch.startswith("B")
    assert int(batch[1:]) > 1001
    assert struct.unpack(">I", regs_bytes(plc.holding(3, 2)))[0] >= 18


def test_a_batch_makes_about_twenty_parts(plc: ModbusPlc) -> None:
    for _ in range(100):
        plc.step()
        if plc.holding(0)[0] == LineState.DONE and plc.holding(30)[0] == OrderStatus.COMPLETED:
            break
    else:
        pytest.fail("no batch completed in 100 ticks")
    good, scrap = plc.holding(1, 2)
    assert 18 <= good + scrap <= 22


def test_process_values_stay_in_range_and_counters_increase(plc: ModbusPlc) -> None:
    energy = 0.0
    operating = 0
    axis_signs: set[bool] = set()
    for _ in range(100):
        plc.step()
        hr = plc.holding(0, 126)
        assert 700.0 <= struct.unpack(">f", regs_bytes([hr[101], hr[100]]))[0] <= 750.0
        assert 0 <= struct.unpack(">h", regs_bytes(hr[40:41]))[0] <= 100
        new_energy = struct.unpack(">d", regs_bytes(hr[110:114]))[0]
        new_operating = struct.unpack(">Q", regs_bytes(hr[120:124]))[0]
        assert new_energy > energy
        assert new_operating > operating
        energy, operating = new_energy, new_operating
        axis_signs.add(struct.unpack(">i", regs_bytes(hr[124:126]))[0] > 0)
    assert axis_signs == {True, False}


def test_bench_registers_change_at_every_read(plc: ModbusPlc) -> None:
    first = read_regs(plc, BENCH_BASE, 125)
    second = read_regs(plc, BENCH_BASE, 125)
    assert all(b == a + 1 for a, b in zip(first, second, strict=True))
    # Only the registers touched by a read change.
    assert read_regs(plc, BENCH_BASE + 125, 75) == [1] * 75
    plc.set_holding(BENCH_BASE + 199, [0xFFFF])
    assert read_regs(plc, BENCH_BASE + 199, 1) == [0]  # wraps at 65535


def test_illegal_addresses(plc: ModbusPlc) -> None:
    assert exception_of(plc.process_pdu(read_request(3, 300, 1))) == (3, 2)
    assert exception_of(plc.process_pdu(read_request(3, 290, 20))) == (3, 2)  # straddles 299
    assert exception_of(plc.process_pdu(read_request(3, 999, 2))) == (3, 2)
    assert exception_of(plc.process_pdu(read_request(3, BENCH_BASE + 190, 11))) == (3, 2)
    assert exception_of(plc.process_pdu(read_request(4, BENCH_BASE, 1))) == (4, 2)
    assert exception_of(plc.process_pdu(read_request(1, 299, 2))) == (1, 2)
    assert exception_of(plc.process_pdu(struct.pack(">BHH", 6, 300, 1))) == (6, 2)
    assert read_regs(plc, 299, 1) == [0]


def test_no_bench_range_without_bench_mode() -> None:
    plc = ModbusPlc(port=0, tick=0)
    assert exception_of(plc.process_pdu(read_request(3, BENCH_BASE, 1))) == (3, 2)


def test_bad_counts_unknown_functions_and_truncated_pdus(plc: ModbusPlc) -> None:
    assert exception_of(plc.process_pdu(read_request(3, 0, 0))) == (3, 3)
    assert exception_of(plc.process_pdu(read_request(3, 0, 126))) == (3, 3)
    assert exception_of(plc.process_pdu(read_request(1, 0, 2001))) == (1, 3)
    assert exception_of(plc.process_pdu(bytes([0x2B, 0x0E, 0x01, 0x00]))) == (0x2B, 1)
    assert exception_of(plc.process_pdu(bytes([3, 0, 0]))) == (3, 3)
    assert exception_of(plc.process_pdu(bytes([3, 0, 0, 0, 1, 9]))) == (3, 3)
    assert exception_of(plc.process_pdu(bytes([16, 0, 250, 0, 2, 4, 0, 1]))) == (16, 3)
    assert exception_of(plc.process_pdu(bytes([15, 0, 250, 0, 9, 2, 0xFF]))) == (15, 3)
    assert exception_of(plc.process_pdu(b"")) == (0, 1)
    assert plc.stats.malformed == 4


def test_writes_are_stored(plc: ModbusPlc) -> None:
    assert plc.process_pdu(struct.pack(">BHH", 6, 250, 0xBEEF)) == struct.pack(
        ">BHH", 6, 250, 0xBEEF
    )
    pdu16 = struct.pack(">BHHB3H", 16, 251, 3, 6, 1, 2, 3)
    assert plc.process_pdu(pdu16) == struct.pack(">BHH", 16, 251, 3)
    assert plc.holding(250, 4) == [0xBEEF, 1, 2, 3]
    assert plc.process_pdu(struct.pack(">BHH", 5, 10, 0xFF00)) == struct.pack(">BHH", 5, 10, 0xFF00)
    assert exception_of(plc.process_pdu(struct.pack(">BHH", 5, 10, 0x1234))) == (5, 3)
    pdu15 = struct.pack(">BHHB2B", 15, 20, 10, 2, 0b0000_0101, 0b10)
    assert plc.process_pdu(pdu15) == struct.pack(">BHH", 15, 20, 10)
    assert plc.coils(20, 10) == [True, False, True] + [False] * 6 + [True]
    assert plc.coils(10)[0] is True
    plc.process_pdu(struct.pack(">BHHB2H", 16, BENCH_BASE, 2, 4, 500, 600))
    assert plc.holding(BENCH_BASE, 2) == [500, 600]


def test_direct_accessors_check_ranges(plc: ModbusPlc) -> None:
    plc.set_input_registers(5, [1, 70000])
    assert plc.input_registers(5, 2) == [1, 70000 & 0xFFFF]
    plc.set_discrete_inputs(7, [True, False, True])
    assert plc.discrete_inputs(7, 3) == [True, False, True]
    with pytest.raises(IndexError):
        plc.holding(MAP_SIZE, 1)
    with pytest.raises(IndexError):
        plc.set_coils(MAP_SIZE - 1, [True, True])
    with pytest.raises(IndexError):
        plc.holding(BENCH_BASE + 200, 1)
    with pytest.raises(ValueError, match="bench_registers"):
        ModbusPlc(bench_registers=60001)


async def test_fault_switches_in_serve_pdu(plc: ModbusPlc) -> None:
    request = read_request(3, 0, 1)
    assert await plc.serve_pdu(1, request) == bytes([3, 2, 0, 0])
    assert exception_of(await plc.serve_pdu(2, request) or b"") == (3, 0x0B)  # wrong unit
    plc.faults.exception_code = 6
    assert exception_of(await plc.serve_pdu(1, request) or b"") == (3, 6)
    plc.faults.exception_code = None
    plc.faults.drop_connections = True
    assert await plc.serve_pdu(1, request) is None
    plc.faults.drop_connections = False
    plc.faults.delay = 5.0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(plc.serve_pdu(1, request), timeout=0.05)
    plc.faults.clear()
    assert await plc.serve_pdu(1, request) == bytes([3, 2, 0, 0])


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--host",
        "--port",
        "--unit",
        "--bench-registers",
        "--fault-delay",
        "--fault-exception",
        "--fault-drop",
        "--tick",
    ):
        assert option in text


def test_cli_parses_faults_and_rejects_bad_values() -> None:
    args = _parse_args(
        ["--port", "0", "--fault-delay", "1.5", "--fault-exception", "4", "--fault-drop"]
    )
    assert (args.port, args.fault_delay, args.fault_exception, args.fault_drop) == (0, 1.5, 4, True)
    with pytest.raises(SystemExit):
        _parse_args(["--bench-registers", "70000"])
    with pytest.raises(SystemExit):
        _parse_args(["--fault-exception", "0"])
