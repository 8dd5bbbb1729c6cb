"""ModbusSource over real sockets: decoding, request coalescing, faults and bad values.

Decoding is checked against pymodbus's own server (not our simulator), with the registers
encoded here with `struct`, independently of `edgegw.sources.modbus.decode`. Coalescing
and faults use our simulator, whose request counter and fault switches the tests read.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edgegw.reading import Reading, Value
from edgegw.sources.modbus.config import ModbusSourceConfig
from edgegw.sources.modbus.driver import ModbusSource
from simulators.modbus_plc import ModbusPlc
from tests.conftest import StartModbusPlc

pytestmark = pytest.mark.timeout(30)

BATCH_TIMEOUT = 5.0  # seconds one poll may take before a test gives up
ORDERS = ("big", "little")


# ---------------------------------------------------------------------------
# Helpers


def source_config(port: int, tags: list[dict[str, Any]], **extra: Any) -> ModbusSourceConfig:
    data: dict[str, Any] = {
        "name": "line1",
        "protocol": "modbus",
        "url": f"tcp://127.0.0.1:{port}",
        "poll": "20ms",
        "timeout": "500ms",
        **extra,
        "tags": tags,
    }
    return ModbusSourceConfig.model_validate(data)


@contextlib.asynccontextmanager
async def polling(source: ModbusSource) -> AsyncIterator[AsyncGenerator[list[Reading], None]]:
    """The source's batches() generator, closed with aclose() however the test ends."""
    gen = source.batches()
    assert isinstance(gen, AsyncGenerator)
    try:
        yield gen
    finally:
        await gen.aclose()


async def next_batch(gen: AsyncGenerator[list[Reading], None]) -> list[Reading]:
    return await asyncio.wait_for(anext(gen), BATCH_TIMEOUT)


def by_tag(batch: list[Reading]) -> dict[str, Reading]:
    readings = {r.tag: r for r in batch}
    assert len(readings) == len(batch), f"a tag appears twice in one batch: {batch}"
    return readings


def all_good(batch: list[Reading]) -> bool:
    return all(r.quality == "good" for r in batch)


async def until_all_good(
    gen: AsyncGenerator[list[Reading], None], max_batches: int = 100
) -> list[Reading]:
    """Poll until one whole batch is good (bounded), and return that batch."""
    seen: list[Reading] = []
    for _ in range(max_batches):
        batch = await next_batch(gen)
        if all_good(batch):
            return batch
        seen = batch
    pytest.fail(f"no good batch within {max_batches} polls; last: {seen}")


def assert_bad(batch: list[Reading], *fragments: str) -> None:
    assert batch, "no readings to judge: an empty batch is not a bad one"
    for reading in batch:
        assert reading.quality == "bad", reading
        assert reading.value is None, reading
        assert reading.reason, reading
        for fragment in fragments:
            assert fragment in reading.reason, reading


def same_value(got: Value, expected: Value) -> bool:
    """Exact equality, and the same Python type (True is not 1, 3.0 is not 3)."""
    return type(got) is type(expected) and got == expected


# -- independent encoders: value -> registers as a device would hold them -------------------


def to_registers(raw: bytes) -> list[int]:
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def encode(fmt: str, value: int | float, byte_order: str, word_order: str) -> list[int]:
    """Registers of `value` (struct format `fmt`) in the usual "ABCD" family.

    Big/big is the value's big-endian bytes, high word first (ABCD); word order little
    reverses the registers (CDAB); byte order little swaps the two bytes inside each
    register (BADC); both little give the plain little-endian bytes (DCBA).
    """
    raw = struct.pack(">" + fmt, value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return to_registers(b"".join(words))


def encode_text(text: str, registers: int, pad: bytes = b"\0", swap: bool = False) -> list[int]:
    raw = text.encode("utf-8").ljust(registers * 2, pad)
    assert len(raw) == registers * 2
    if swap:
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    return to_registers(raw)


def test_encoder_follows_the_abcd_convention() -> None:
    # The encoder is the test's reference: pin it to the four textbook layouts.
    assert encode("I", 0x11223344, "big", "big") == [0x1122, 0x3344]  # ABCD
    assert encode("I", 0x11223344, "big", "little") == [0x3344, 0x1122]  # CDAB
    assert encode("I", 0x11223344, "little", "big") == [0x2211, 0x4433]  # BADC
    assert encode("I", 0x11223344, "little", "little") == [0x4433, 0x2211]  # DCBA
    assert encode("Q", 0x1122334455667788, "little", "little") == to_registers(
        struct.pack("<Q", 0x1122334455667788)
    )
    assert encode("Q", 0x1122334455667788, "big", "little") == [0x7788, 0x5566, 0x3344, 0x1122]
    assert encode_text("AB", 2, swap=True) == [0x4241, 0x0000]


# ---------------------------------------------------------------------------
# 1. Decoding against pymodbus's own server

# type -> (struct format, value); values with distinct bytes so that any misordering shows.
SAMPLES: dict[str, tuple[str, int | float]] = {
    "int16": ("h", -12345),
    "uint16": ("H", 0xBEEF),
    "int32": ("i", -123456789),
    "uint32": ("I", 0xDEADBEEF),
    "int64": ("q", -0x123456789ABCDEF0),
    "uint64": ("Q", 0xFEDCBA9876543210),
    "float32": ("f", 725.3),
    "float64": ("d", -98765.4321),
}
HOLDING_BASE = 100  # not 0: the block must be addressed relative to its start


class RegisterMap:
    """Lays tags out one after another in a contiguous run of holding registers."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.registers: list[int] = []
        self.tags: list[dict[str, Any]] = []
        self.expected: dict[str, Value] = {}

    def add(self, tag: dict[str, Any], registers: Sequence[int], expected: Value) -> int:
        address = self.base + len(self.registers)
        self.registers.extend(registers)
        self.tags.append({**tag, "address": f"holding:{address}"})
        self.expected[tag["name"]] = expected
        return address

    def add_at(self, tag: dict[str, Any], address: str, expected: Value) -> None:
        """A tag on registers already laid out (bits, overlapping tags)."""
        self.tags.append({**tag, "address": address})
        self.expected[tag["name"]] = expected


def float32_value(value: float) -> float:
    """What a float32 register holding `value` means: `value` rounded to float32."""
    return struct.unpack(">f", struct.pack(">f", value))[0]


def build_holding_map() -> RegisterMap:
    m = RegisterMap(HOLDING_BASE)
    # Every numeric type in all four byte/word order combinations (word order is moot for
    # 16-bit types and must be ignored there).
    for kind, (fmt, value) in SAMPLES.items():
        for byte_order in ORDERS:
            for word_order in ORDERS:
                name = f"{kind}_{byte_order[0]}{word_order[0]}"
                tag = {"name": name, "type": kind}
                tag |= {"byte_order": byte_order, "word_order": word_order}
                m.add(tag, encode(fmt, value, byte_order, word_order), value)
    # No order on the tag: the source's defaults apply (the source says word_order little).
    m.add(
        {"name": "float32_default", "type": "float32"}, encode("f", -0.15, "big", "little"), -0.15
    )
    m.add({"name": "int32_default", "type": "int32"}, encode("i", -70000, "big", "little"), -70000)

    # Bits of one register, and a uint16 sharing that register.
    bits_address = m.add({"name": "status_word", "type": "uint16"}, [0x8009], 0x8009)
    for bit, expected in ((0, True), (1, False), (3, True), (8, False), (15, True)):
        m.add_at(
            {"name": f"status_bit{bit}", "type": "bool"}, f"holding:{bits_address}.{bit}", expected
        )
    # A bool on a whole register: any non-zero value is true.
    m.add({"name": "flag_on", "type": "bool"}, [0x0100], True)
    m.add({"name": "flag_off", "type": "bool"}, [0x0000], False)

    # Strings: NUL-terminated, space-padded and byte-swapped, and a full-length UTF-8 one
    # (no terminator) whose word order must not matter.
    m.add({"name": "recipe", "type": "string", "length": 4}, encode_text("PUMP-07", 4), "PUMP-07")
    m.add(
        {"name": "batch_swapped", "type": "string", "length": 5, "byte_order": "little"},
        encode_text("RCP-B07", 5, pad=b" ", swap=True),
        "RCP-B07",
    )
    m.add(
        {"name": "label_utf8", "type": "string", "length": 4, "word_order": "little"},
        encode_text("Öl-Nr.5", 4),
        "Öl-Nr.5",
    )

    # Scaled values: raw * scale + offset, rounded to 12 significant digits.
    m.add({"name": "ambient", "type": "int16", "scale": 0.1}, encode("h", -38, "big", "big"), -3.8)
    m.add(
        {"name": "level", "type": "uint16", "scale": 0.01, "offset": -10},
        encode("H", 1234, "big", "big"),
        2.34,
    )
    m.add({"name": "kelvin", "type": "uint16", "offset": -273.15}, [500], 226.85)
    m.add(
        {"name": "position", "type": "int32", "scale": 0.001, "word_order": "big"},
        encode("i", 123456789, "big", "big"),
        123456.789,
    )
    m.add(
        {"name": "temp_scaled", "type": "float32", "scale": 0.1, "word_order": "big"},
        encode("f", 725.3, "big", "big"),
        72.53,
    )
    return m


INPUT_TAGS = [
    ({"name": "in_count", "address": "input:5", "type": "uint16"}, [4242], 4242),
    (
        {"name": "in_flow", "address": "input:6", "type": "float32", "word_order": "big"},
        encode("f", -0.5, "big", "big"),
        -0.5,
    ),
    (
        {"name": "in_total", "address": "input:8", "type": "int32", "word_order": "little"},
        encode("i", -2, "big", "little"),
        -2,
    ),
]
COIL_BITS = [i in (0, 3, 9) for i in range(16)]  # coils 0..15
DISCRETE_BITS = [i in (1, 15) for i in range(16)]  # discrete inputs 16..31
BIT_TAGS = [
    ({"name": f"coil{n}", "address": f"coil:{n}", "type": "bool"}, COIL_BITS[n])
    for n in (0, 1, 3, 9, 15)
] + [
    ({"name": f"di{n}", "address": f"discrete:{n}", "type": "bool"}, DISCRETE_BITS[n - 16])
    for n in (16, 17, 30, 31)
]


@contextlib.asynccontextmanager
async def pymodbus_server(device: SimDevice) -> AsyncIterator[int]:
    """pymodbus's TCP server in the background on a free port; yields the port."""
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)  # returns once listening
    try:
        yield server.transport.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


async def test_decodes_every_type_and_order_from_pymodbus_server() -> None:
    holding = build_holding_map()
    input_regs = [reg for _, regs, _ in INPUT_TAGS for reg in regs]
    # Four separate tables (coils, discrete inputs, holding, input), as a real device has;
    # with separate tables pymodbus addresses coils and discrete inputs by bit.
    device = SimDevice(
        id=7,
        simdata=(
            [SimData(0, values=COIL_BITS, datatype=DataType.BITS)],
            [SimData(16, values=DISCRETE_BITS, datatype=DataType.BITS)],
            [SimData(HOLDING_BASE, values=holding.registers, datatype=DataType.REGISTERS)],
            [SimData(5, values=input_regs, datatype=DataType.REGISTERS)],
        ),
    )
    tags = holding.tags + [tag for tag, _, _ in INPUT_TAGS] + [tag for tag, _ in BIT_TAGS]
    expected = {
        **holding.expected,
        **{tag["name"]: value for tag, _, value in INPUT_TAGS},
        **{tag["name"]: value for tag, value in BIT_TAGS},
    }
    async with pymodbus_server(device) as port:
        config = source_config(port, tags, unit=7, byte_order="big", word_order="little")
        source = ModbusSource(config)
        async with polling(source) as gen:
            before = time.time()
            batch = await next_batch(gen)
            after = time.time()

    readings = by_tag(batch)
    assert set(readings) == set(expected)
    wrong = {}
    for name, want in expected.items():
        reading = readings[name]
        assert reading.source == "line1"
        assert reading.quality == "good", reading
        assert reading.reason is None, reading
        assert before <= reading.source_ts <= after
        assert before <= reading.received_ts <= after
        if isinstance(want, float) and name.startswith(("float32", "in_flow")):
            # Same float32 bits, and the shortest decimal of it (the documented promise).
            ok = isinstance(reading.value, float) and struct.pack(
                ">f", reading.value
            ) == struct.pack(">f", want)
            ok = ok and reading.value == want
        else:
            ok = same_value(reading.value, want)
        if not ok:
            wrong[name] = (reading.value, want)
    assert not wrong, f"decoded (got, expected): {wrong}"
    # The float32 sample really has digits beyond float32 precision to hide.
    assert float32_value(725.3) != 725.3


# ---------------------------------------------------------------------------
# 2. Coalescing: one request per block, not per tag


@pytest.fixture
async def plc(start_modbus_plc: StartModbusPlc) -> ModbusPlc:
    return await start_modbus_plc()


async def test_six_tags_in_one_block_cost_one_request_per_poll(plc: ModbusPlc) -> None:
    registers = (
        encode("f", 12.5, "big", "big")  # 100-101
        + encode("h", -5, "big", "big")  # 102
        + [0b0100]  # 103: bit 2
        + encode("I", 3_000_000_000, "big", "big")  # 104-105
        + [0xFFFF, 0xFFFF]  # 106-107: unused gap
        + encode("d", 1234.5, "big", "big")  # 108-111
        + [0xFFFF, 0xFFFF]  # 112-113: unused gap
        + encode_text("AB-1", 4)  # 114-117
    )
    assert len(registers) == 18
    plc.set_holding(100, registers)  # after start(): start() rewrites the model's registers
    tags = [
        {"name": "temp", "address": "holding:100", "type": "float32"},
        {"name": "count", "address": "holding:102", "type": "int16"},
        {"name": "running", "address": "holding:103.2", "type": "bool"},
        {"name": "total", "address": "holding:104", "type": "uint32"},
        {"name": "energy", "address": "holding:108", "type": "float64"},
        {"name": "recipe", "address": "holding:114", "type": "string", "length": 4},
    ]
    expected = {
        "temp": 12.5,
        "count": -5,
        "running": True,
        "total": 3_000_000_000,
        "energy": 1234.5,
        "recipe": "AB-1",
    }
    source = ModbusSource(source_config(plc.port, tags))
    assert source.request_count == 1
    async with polling(source) as gen:
        for _ in range(4):
            before = plc.stats.requests
            batch = await next_batch(gen)
            # The generator is suspended between batches: nothing else reaches the PLC.
            assert plc.stats.requests - before == 1
            readings = by_tag(batch)
            assert {name: r.value for name, r in readings.items()} == expected
            assert all_good(batch), batch


@pytest.mark.parametrize(
    ("addresses", "max_gap", "requests"),
    [
        pytest.param((0, 200), 16, 2, id="far-apart"),
        pytest.param((0, 17), 16, 1, id="gap-16-merged"),
        pytest.param((0, 18), 16, 2, id="gap-17-split"),
        pytest.param((0, 1), 0, 1, id="adjacent-merged-at-gap-0"),
        pytest.param((0, 2), 0, 2, id="gap-1-split-at-gap-0"),
    ],
)
async def test_requests_per_poll_follow_max_gap(
    plc: ModbusPlc, addresses: tuple[int, int], max_gap: int, requests: int
) -> None:
    for i, address in enumerate(addresses):
        plc.set_holding(address, [1000 + i])
    tags = [
        {"name": f"t{i}", "address": f"holding:{address}", "type": "uint16"}
        for i, address in enumerate(addresses)
    ]
    source = ModbusSource(source_config(plc.port, tags, max_gap=max_gap))
    assert source.request_count == requests
    async with polling(source) as gen:
        for _ in range(3):
            before = plc.stats.requests
            batch = await next_batch(gen)
            assert plc.stats.requests - before == requests
            assert {r.tag: r.value for r in batch} == {"t0": 1000, "t1": 1001}
            assert all_good(batch), batch


# ---------------------------------------------------------------------------
# 3. Faults degrade the tags of the poll, and never raise

FAULT_TAGS = [
    {"name": "total", "address": "holding:50", "type": "uint32"},
    {"name": "door", "address": "coil:10", "type": "bool"},
]


def set_fault_values(plc: ModbusPlc) -> dict[str, Value]:
    plc.set_holding(50, encode("I", 0x12345678, "big", "big"))
    plc.set_coils(10, [True])
    return {"total": 0x12345678, "door": True}


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (2, "illegal data address"),
        (4, "server device failure"),
        (11, "gateway target device failed to respond"),
    ],
)
async def test_exception_reply_marks_every_tag_bad(plc: ModbusPlc, code: int, name: str) -> None:
    expected = set_fault_values(plc)
    source = ModbusSource(source_config(plc.port, FAULT_TAGS))
    assert source.request_count == 2  # holding and coils: both blocks must degrade
    async with polling(source) as gen:
        plc.faults.exception_code = code
        batch = await next_batch(gen)
        assert {r.tag for r in batch} == set(expected)
        assert_bad(batch, f"exception {code}", name)

        plc.faults.clear()
        batch = await next_batch(gen)
        assert all_good(batch), batch
        assert {r.tag: r.value for r in batch} == expected


async def test_no_reply_within_timeout_marks_tags_bad_then_recovers(plc: ModbusPlc) -> None:
    expected = set_fault_values(plc)
    source = ModbusSource(source_config(plc.port, FAULT_TAGS, timeout="100ms"))
    async with polling(source) as gen:
        batch = await next_batch(gen)
        assert all_good(batch), batch

        plc.faults.delay = 0.3
        batch = await next_batch(gen)
        assert {r.tag for r in batch} == set(expected)
        assert_bad(batch, "no reply within 0.1s")

        plc.faults.clear()
        batch = await until_all_good(gen)
        assert {r.tag: r.value for r in batch} == expected


async def test_dropped_connection_marks_tags_bad_then_reconnects(plc: ModbusPlc) -> None:
    expected = set_fault_values(plc)
    source = ModbusSource(source_config(plc.port, FAULT_TAGS, timeout="100ms"))
    async with polling(source) as gen:
        batch = await next_batch(gen)
        assert all_good(batch), batch
        opened = plc.stats.connections_opened

        plc.faults.drop_connections = True
        batch = await next_batch(gen)
        assert {r.tag for r in batch} == set(expected)
        assert_bad(batch)

        plc.faults.clear()
        batch = await until_all_good(gen)
        assert {r.tag: r.value for r in batch} == expected
    assert plc.stats.connections_dropped >= 1
    assert plc.stats.connections_opened > opened  # a new connection, not a zombie


async def test_source_reconnects_after_plc_restart(plc: ModbusPlc) -> None:
    expected = set_fault_values(plc)
    source = ModbusSource(source_config(plc.port, FAULT_TAGS))
    async with polling(source) as gen:
        batch = await next_batch(gen)
        assert all_good(batch), batch
        assert source.status.connected

        await plc.stop()
        reasons = []
        for _ in range(20):
            batch = await next_batch(gen)
            assert {r.tag for r in batch} == set(expected)
            assert_bad(batch)
            reasons.extend(r.reason for r in batch)
            if any("cannot connect" in str(reason) for reason in reasons):
                break
        else:
            pytest.fail(f"no 'cannot connect' reason while the PLC is down: {reasons}")
        assert not source.status.connected

        await plc.start()  # same port: a PLC restart keeps its address
        batch = await until_all_good(gen)
        assert {r.tag: r.value for r in batch} == expected
        assert source.status.connected


async def test_late_replies_never_yield_wrong_values(plc: ModbusPlc) -> None:
    """Replies that arrive after the timeout must be dropped, never taken for the next
    request's (same block in the next poll, or the other block of the same poll)."""
    tags = [
        {"name": "a", "address": "holding:60", "type": "uint32"},
        {"name": "b", "address": "holding:260", "type": "uint32"},
    ]
    source = ModbusSource(source_config(plc.port, tags, poll="10ms", timeout="50ms"))
    assert source.request_count == 2
    # Reply delay per poll, around the 50 ms timeout; 0 = no fault.
    delays = [0, 0, 0.06, 0.07, 0.055, 0, 0.09, 0.06, 0, 0, 0.065, 0, 0]
    bad_reasons: list[str] = []
    wrong: list[tuple[int, Reading, int]] = []
    async with polling(source) as gen:
        for poll, delay in enumerate(delays):
            # Distinct values in each block and at each poll, set while nothing is being
            # served for this poll: a good reading must carry exactly these.
            values = {"a": 0x0001_0000 + poll, "b": 0x0002_0000 + poll}
            plc.set_holding(60, encode("I", values["a"], "big", "big"))
            plc.set_holding(260, encode("I", values["b"], "big", "big"))
            plc.faults.delay = delay
            batch = await next_batch(gen)
            assert {r.tag for r in batch} == {"a", "b"}
            for reading in batch:
                if reading.quality == "good":
                    if reading.value != values[reading.tag]:
                        wrong.append((poll, reading, values[reading.tag]))
                else:
                    assert reading.value is None
                    assert reading.reason
                    bad_reasons.append(reading.reason)
        plc.faults.clear()
        batch = await until_all_good(gen)
        assert {r.tag: r.value for r in batch} == {"a": 0x0001_0000 + poll, "b": 0x0002_0000 + poll}
    assert not wrong, f"(poll, reading, register value): {wrong}"
    assert any("no reply within" in reason for reason in bad_reasons), bad_reasons


# ---------------------------------------------------------------------------
# 4. Registers that hold no finite number


async def test_nan_and_inf_are_bad_readings(plc: ModbusPlc) -> None:
    plc.set_holding(130, [0x7FC0, 0x0000])  # float32 quiet NaN
    plc.set_holding(132, [0x7F80, 0x0000])  # float32 +Inf
    plc.set_holding(134, [0xFF80, 0x0000])  # float32 -Inf
    plc.set_holding(136, [0x7F80, 0x0001])  # float32 signalling NaN
    plc.set_holding(138, to_registers(struct.pack(">d", math.nan)))
    plc.set_holding(142, to_registers(struct.pack(">d", 1e308)))  # finite, scaled to inf
    plc.set_holding(146, encode("f", 21.5, "big", "big"))  # a good neighbour
    tags = [
        {"name": "nan32", "address": "holding:130", "type": "float32"},
        {"name": "inf32", "address": "holding:132", "type": "float32"},
        {"name": "ninf32", "address": "holding:134", "type": "float32"},
        {"name": "snan32", "address": "holding:136", "type": "float32"},
        {"name": "nan64", "address": "holding:138", "type": "float64"},
        {"name": "huge_scaled", "address": "holding:142", "type": "float64", "scale": 10},
        {"name": "fine", "address": "holding:146", "type": "float32"},
    ]
    source = ModbusSource(source_config(plc.port, tags))
    async with polling(source) as gen:
        readings = by_tag(await next_batch(gen))
    # Every tag is there: a tag dropped instead of marked bad must fail this test.
    assert set(readings) == {tag["name"] for tag in tags}
    assert readings["fine"].quality == "good"
    assert readings["fine"].value == 21.5
    non_finite = ["nan32", "inf32", "ninf32", "snan32", "nan64", "huge_scaled"]
    assert_bad([readings[name] for name in non_finite], "not a finite number")


async def test_float32_needing_nine_digits_is_the_shortest_decimal(plc: ModbusPlc) -> None:
    plc.set_holding(150, [0xC2CE, 0x6F44])  # the float32 nearest to -103.217316
    tags = [{"name": "x", "address": "holding:150", "type": "float32"}]
    source = ModbusSource(source_config(plc.port, tags))
    async with polling(source) as gen:
        (reading,) = await next_batch(gen)
    assert reading.quality == "good"
    assert isinstance(reading.value, float)
    assert struct.pack(">f", reading.value) == bytes.fromhex("c2ce6f44")
    assert reading.value == -103.217316  # not -103.21731567382812
