"""Modbus RTU on one serial line (a pseudo-terminal): three unit ids, a silent one, late and
garbled replies. Every value read is checked against the register it claims to come from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edgegw.reading import Reading
from edgegw.sources.modbus.config import ModbusSourceConfig
from edgegw.sources.modbus.line import ModbusLine
from simulators.modbus_gateway import RtuOverTcpServer, TcpGateway
from simulators.modbus_plc import BENCH_BASE, ModbusPlc
from simulators.modbus_rtu import RtuLine
from tests.support import http
from tests.support.broker import Mosquitto
from tests.support.gateway import running_gateway
from tests.support.ledger import telemetry
from tests.support.lines import Collector, check_values
from tests.support.subscriber import Subscriber
from tests.support.wait import until

# Each test's timeout is at least the sum of its waits: the condition timeouts, plus for each
# progress wait (a rate window) one stall and five times what it takes here.
pytestmark = pytest.mark.timeout(90)

UNITS = (1, 2, 3)
REGISTERS = 12  # bench registers per unit
OFFSETS = (0, 1, 10, 11)  # read as two requests of 2 registers (max_gap 0): a reply given to
# the other request of the same device has the same unit, function and length, and shows only
# by its values
TIMEOUT = 0.1
WINDOW = 200  # reads per rate window: 5 s (two requests per 50 ms poll). Over a second or
# two a rate on a shared machine swings by more than the 20 % the tests allow.


def base(unit: int, register: int) -> int:
    """Distinct starting values per unit and register: a reply given to the wrong request
    (another unit, another block) shows as a value its register never held."""
    return unit * 15_000 + register * 1_000


def registers_of(rtu: RtuLine | TcpGateway | RtuOverTcpServer) -> Callable[[int, int], int]:
    return lambda unit, register: rtu.devices[unit].holding(BENCH_BASE + register)[0]


def bench_units() -> dict[int, ModbusPlc]:
    """Units 1..3, each with its bench registers starting at `base(unit, register)`."""
    devices = {}
    for unit in UNITS:
        plc = ModbusPlc(unit=unit, bench_registers=REGISTERS, tick=0)
        for register in range(REGISTERS):
            plc.set_holding(BENCH_BASE + register, [base(unit, register)])
        devices[unit] = plc
    return devices


@pytest.fixture
async def line() -> AsyncIterator[RtuLine]:
    rtu = RtuLine(bench_units(), baudrate=115200)
    await rtu.start()
    yield rtu
    await rtu.stop()


def source_config(
    rtu: RtuLine, poll: str = "50ms", url: str | None = None, **extra: Any
) -> dict[str, Any]:
    if url is None:
        assert rtu.path is not None
        url = f"rtu://{rtu.path}?baudrate=115200&parity=E&stopbits=1&bytesize=8"
    return {
        "name": "rs485-a",
        "protocol": "modbus",
        "url": url,
        "timeout": f"{int(TIMEOUT * 1000)}ms",
        "max_gap": 0,
        "breaker": {"failures": 3, "retry": "2s"},
        "devices": [
            {
                "unit": unit,
                "name": f"pump-{unit}",
                "poll": poll,
                "tags": [
                    {"name": f"r{i}", "address": f"holding:{BENCH_BASE + i}", "type": "uint16"}
                    for i in OFFSETS
                ],
            }
            for unit in UNITS
        ],
        **extra,
    }


async def test_three_units_on_one_line_are_published_end_to_end(
    tmp_path: Path, line: RtuLine, mosquitto: Mosquitto, subscriber: Subscriber
) -> None:
    # No fault here: a timeout of 1 s (not TIMEOUT) lets a machine five times slower answer
    # every request in time.
    timeout = 1.0
    data = {
        "gateway": {"id": "gw", "site": "s", "area": "a", "line": "l", "state_dir": str(tmp_path)},
        "mqtt": {"url": mosquitto.url, "keepalive": "2s", "connect_timeout": "2s"},
        "sources": [source_config(line, timeout=f"{timeout:g}s")],
        "http": {"listen": "127.0.0.1:0"},
    }
    async with running_gateway(data) as gateway:
        await subscriber.wait_for(
            lambda m: all(
                len([p for p in telemetry(m) if p.get("source") == f"pump-{unit}"]) >= 20
                for unit in UNITS
            ),
            20,
            what="20 values from each unit",
        )
        assert gateway.metrics_port is not None
        _, text = await asyncio.to_thread(http.get, gateway.metrics_port, "/metrics")
        for unit in UNITS:
            label = f'{{source="rs485-a",device="pump-{unit}"}}'
            assert (http.metric(text, f"edgegw_device_reads_total{label}") or 0) > 0, text
            assert http.metric(text, f"edgegw_device_breaker_open{label}") == 0
            # The last answered request: answered within the timeout, or it was no answer.
            assert 0 < (http.metric(text, f"edgegw_device_response_seconds{label}") or 0) < timeout
    received = telemetry(subscriber.messages)
    readings = [
        Reading(p["source"], p["tag"], p["value"], p["quality"], 0.0, 0.0)
        for p in received
        if p.get("source", "").startswith("pump-")
    ]
    assert check_values(readings, base, registers_of(line)) >= 60
    topics = {m.topic for m in subscriber.messages}
    assert "s/a/l/pump-2/r11" in topics


# 3 rate windows (15 + 5 x 5 s each) + 10 + 10 = 140 s (16 s here)
@pytest.mark.timeout(150)
async def test_a_silent_unit_keeps_the_others_at_80_percent(line: RtuLine) -> None:
    config = ModbusSourceConfig.model_validate(source_config(line))
    async with Collector(ModbusLine(config)) as collector:
        baseline = await collector.time_for_reads("pump-1", WINDOW)
        line.faults[2].silent = True
        status = next(s for s in collector.source.device_statuses if s.name == "pump-2")
        await until(lambda: status.breaker_open, 10, "pump-2's breaker to open")
        # Long enough to include breaker retries of the silent unit (every 2 s).
        with_silent = await collector.time_for_reads("pump-1", WINDOW)
        other = await collector.time_for_reads("pump-3", WINDOW)
        bad = [r for r in collector.readings if r.source == "pump-2" and r.quality == "bad"]
        line.faults[2].silent = False
        await until(lambda: not status.breaker_open, 10, "pump-2's breaker to close")
    assert baseline / with_silent >= 0.8, f"pump-1: {baseline:.2f} s -> {with_silent:.2f} s"
    assert baseline / other >= 0.8, f"pump-3: {baseline:.2f} s -> {other:.2f} s"
    assert bad[-1].reason is not None
    assert "no reply to 3 requests in a row" in bad[-1].reason
    assert status.errors["timeout"] >= 3
    check_values(collector.readings, base, registers_of(line))


@pytest.mark.parametrize("fault", ["late", "crc", "truncate", "noise", "wrong_unit"])
async def test_late_and_garbled_replies_never_give_a_wrong_value(line: RtuLine, fault: str) -> None:
    config = ModbusSourceConfig.model_validate(source_config(line, poll="20ms"))
    async with Collector(ModbusLine(config)) as collector:
        await until(lambda: collector.reads("pump-2") >= 10, 10, "10 good reads of pump-2")
        faults = line.faults[2]
        for _ in range(3):  # on and off, so replies before, during and after are mixed
            if fault == "late":
                faults.late = 1.5 * TIMEOUT
            elif fault == "wrong_unit":
                faults.wrong_unit = 3
            else:
                faults.garble = fault  # type: ignore[assignment]
            errors = sum(collector.source.device_statuses[1].errors.values())
            await until(
                lambda e=errors: sum(collector.source.device_statuses[1].errors.values()) >= e + 3,
                10,
                "3 failed reads of pump-2",
            )
            faults.clear()
            reads = collector.reads("pump-2")
            await until(lambda r=reads: collector.reads("pump-2") >= r + 5, 15, "pump-2 back")
    good = check_values(collector.readings, base, registers_of(line))
    assert good > 100
    kinds = collector.source.device_statuses[1].errors
    expected = {"late": "timeout", "crc": "crc", "truncate": "timeout", "noise": "wrong_reply"}
    assert kinds.get(expected.get(fault, "wrong_reply"), 0) >= 3, kinds


async def test_illegal_address_in_a_coalesced_read_splits_it(line: RtuLine) -> None:
    data = source_config(line)
    last = BENCH_BASE + REGISTERS - 1
    data["max_gap"] = 16
    data["devices"] = [
        {
            "unit": 1,
            "name": "pump-1",
            "poll": "20ms",
            "tags": [
                {"name": f"r{REGISTERS - 1}", "address": f"holding:{last}", "type": "uint16"},
                {"name": "missing", "address": f"holding:{last + 2}", "type": "uint16"},
            ],
        }
    ]
    config = ModbusSourceConfig.model_validate(data)
    tag = f"r{REGISTERS - 1}"
    async with Collector(ModbusLine(config)) as collector:
        # Wait for what is asserted: a number of reads (requests, the failed coalesced one
        # included) is not a number of good values.
        await until(
            lambda: sum(r.tag == tag and r.quality == "good" for r in collector.readings) >= 5,
            10,
            "5 good values after the split",
        )
    good = [r for r in collector.readings if r.tag == tag and r.quality == "good"]
    missing = [r for r in collector.readings if r.tag == "missing"]
    assert len(good) >= 5
    assert missing
    assert all(r.quality == "bad" for r in missing)
    assert missing[-1].reason == "modbus exception 2: illegal data address"
    assert len(collector.source.devices[0].blocks) == 2
    check_values(good, base, registers_of(line))


# 3 x 10 + 2 rate windows (15 + 5 x 5 s each) + 4 x 10 = 150 s (12 s here)
@pytest.mark.timeout(180)
@pytest.mark.parametrize("transport", ["tcp", "rtu-over-tcp"])
async def test_lines_over_tcp_read_every_unit_and_survive_a_silent_one(transport: str) -> None:
    devices = bench_units()
    # A gateway waits for the device behind it less long than we wait for the gateway, and
    # then says so (exception 11), as a well-configured one does.
    server: TcpGateway | RtuOverTcpServer = (
        TcpGateway(devices, target_timeout=TIMEOUT / 2)
        if transport == "tcp"
        else RtuOverTcpServer(devices)
    )
    if isinstance(server, TcpGateway):
        server.faults[2].silent_mode = "exception"
    async with server:
        data = source_config(None, url=f"{transport}://127.0.0.1:{server.port}")  # type: ignore[arg-type]
        config = ModbusSourceConfig.model_validate(data)
        async with Collector(ModbusLine(config)) as collector:
            for unit in UNITS:
                await until(lambda u=unit: collector.reads(f"pump-{u}") >= 10, 10, "10 reads each")
            baseline = await collector.time_for_reads("pump-1", WINDOW)
            server.faults[2].silent = True
            status = collector.source.device_statuses[1]
            await until(lambda: status.breaker_open, 10, "pump-2's breaker to open")
            with_silent = await collector.time_for_reads("pump-1", WINDOW)
            server.faults[2].clear()
            if transport == "tcp":
                server.faults[3].late = 1.5 * TIMEOUT  # type: ignore[union-attr]
            else:
                server.faults[3].garble = "crc"  # type: ignore[union-attr]
            errors = collector.source.device_statuses[2].errors
            await until(lambda: sum(errors.values()) >= 3, 10, "3 failed reads of pump-3")
            server.faults[3].clear()
            await until(lambda: not status.breaker_open, 10, "pump-2's breaker to close")
            reads = collector.reads("pump-3")
            await until(lambda: collector.reads("pump-3") >= reads + 5, 10, "pump-3 back")
    assert baseline / with_silent >= 0.8, f"pump-1: {baseline:.2f} s -> {with_silent:.2f} s"
    assert check_values(collector.readings, base, registers_of(server)) > 100


async def test_tags_sharing_a_missing_register_go_bad_without_stalling_the_line(
    line: RtuLine,
) -> None:
    data = source_config(line, poll="20ms")
    last = BENCH_BASE + REGISTERS - 1
    data["max_gap"] = 16
    data["devices"][0]["tags"] = [
        {"name": "r11", "address": f"holding:{last}", "type": "uint16"},
        {"name": "word", "address": f"holding:{last + 2}", "type": "uint16"},
        {"name": "flag", "address": f"holding:{last + 2}.3", "type": "bool"},
    ]
    config = ModbusSourceConfig.model_validate(data)
    async with Collector(ModbusLine(config)) as collector:
        await until(
            lambda: (
                {r.tag for r in collector.readings if r.tag in ("word", "flag")} == {"word", "flag"}
            ),
            10,
            "both tags of the missing register read",
        )
        await until(lambda: collector.reads("pump-2") >= 5, 10, "the rest of the line read")
    shared = [r for r in collector.readings if r.tag in ("word", "flag")]
    assert {r.tag for r in shared} == {"word", "flag"}
    assert all(r.reason == "modbus exception 2: illegal data address" for r in shared)


async def test_a_path_that_is_no_serial_port_gives_bad_values_with_the_reason() -> None:
    config = ModbusSourceConfig.model_validate(
        {
            "name": "rs485-x",
            "protocol": "modbus",
            "url": "rtu:///dev/null",
            "unit": 1,
            "tags": [{"name": "t", "address": "holding:0", "type": "uint16"}],
        }
    )
    source = ModbusLine(config)
    async with Collector(source) as collector:
        await until(lambda: bool(collector.readings), 10, "a reading")
    reading = collector.readings[0]
    assert reading.quality == "bad"
    assert reading.reason is not None
    assert "cannot open /dev/null: not a usable serial port" in reading.reason
    assert not source.status.connected


async def test_a_gateway_that_goes_away_makes_every_device_bad_then_recovers() -> None:
    server = TcpGateway(bench_units())
    async with server:
        data = source_config(None, url=f"tcp://127.0.0.1:{server.port}")  # type: ignore[arg-type]
        config = ModbusSourceConfig.model_validate(data)
        async with Collector(ModbusLine(config)) as collector:
            await until(lambda: collector.reads("pump-3") >= 5, 10, "5 reads of pump-3")
            await server.stop()
            await until(
                lambda: (
                    {r.source for r in collector.readings[-12:] if r.quality == "bad"}
                    == {"pump-1", "pump-2", "pump-3"}
                ),
                10,
                "every device bad",
            )
            assert not collector.source.status.connected
            await server.start()
            reads = collector.reads("pump-1")
            await until(lambda: collector.reads("pump-1") >= reads + 5, 15, "reads again")
            assert collector.source.status.connected
    assert collector.source.status.outages == 1  # the stop at the end is none
    assert check_values(collector.readings, base, registers_of(server)) > 20
