"""A tag the PLC does not have is named: in the log, the source's books, /healthz, /metrics and
`edgegw status` (issue 14: "LAST ERROR modbus exception 2" with no tag name, /healthz ok)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edgegw.reading import Reading
from edgegw.sources.modbus.config import ModbusSourceConfig
from edgegw.sources.modbus.driver import ModbusSource
from simulators.modbus_plc import ModbusPlc
from tests.support import http
from tests.support.broker import Mosquitto
from tests.support.cli import run_edgegw
from tests.support.gateway import bench_tags, config_dict, running_gateway, write_config
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

EXCEPTION_2 = "modbus exception 2: illegal data address"


@contextlib.asynccontextmanager
async def pymodbus_holding(count: int) -> AsyncIterator[int]:
    """pymodbus' own server (not our simulator) with holding registers 0..count-1 only."""
    device = SimDevice(
        id=1,
        simdata=[SimData(0, values=list(range(count)), datatype=DataType.REGISTERS)],
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield server.transport.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


async def polls(source: ModbusSource, count: int) -> list[list[Reading]]:
    out: list[list[Reading]] = []
    batches = source.batches()
    try:
        while len(out) < count:
            out.append(await asyncio.wait_for(anext(batches), 30))
    finally:
        await batches.aclose()
    return out


async def test_an_address_the_plc_lacks_is_named_and_the_rest_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    tags = [
        {"name": "speed", "address": "holding:2", "type": "uint16"},
        {"name": "typo", "address": "holding:12", "type": "uint16"},  # coalesced with speed
    ]
    async with pymodbus_holding(10) as port:
        config = ModbusSourceConfig.model_validate(
            {
                "name": "press",
                "protocol": "modbus",
                "url": f"tcp://127.0.0.1:{port}",
                "poll": "50ms",
                "timeout": "2s",
                "tags": tags,
            }
        )
        source = ModbusSource(config)
        assert source.request_count == 1
        batches = await polls(source, 3)
    last = {r.tag: r for r in batches[-1]}
    assert (last["speed"].quality, last["speed"].value) == ("good", 2)
    assert (last["typo"].quality, last["typo"].reason) == ("bad", EXCEPTION_2)
    assert source.status.bad_tags == {"typo": EXCEPTION_2}
    assert source.status.last_error == f"typo: {EXCEPTION_2}"
    named = [r.getMessage() for r in caplog.records if "tag cannot be read" in r.getMessage()]
    assert named == [
        f"tag cannot be read source=press tag=typo address=holding:12 reason={EXCEPTION_2}"
    ], "named once, not at every poll"


async def test_a_refused_connection_names_address_and_cause(unused_tcp_port: int) -> None:
    config = ModbusSourceConfig.model_validate(
        {
            "name": "press",
            "protocol": "modbus",
            "url": f"tcp://127.0.0.1:{unused_tcp_port}",
            "poll": "1s",
            "tags": [{"name": "a", "address": "holding:0", "type": "uint16"}],
        }
    )
    source = ModbusSource(config)
    (batch,) = await polls(source, 1)
    reason = (
        f"cannot connect to 127.0.0.1:{unused_tcp_port}: connection refused (is the PLC's "
        "Modbus server on this port?)"
    )
    assert [r.reason for r in batch] == [reason]
    assert source.status.last_error == reason


async def test_health_metrics_and_status_show_bad_tags(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto
) -> None:
    tags = [*bench_tags(2), {"name": "door", "address": "holding:500", "type": "uint16"}]
    data = config_dict(tmp_path, mosquitto.port, plc.port, tags, max_gap=0)
    data["http"] = {"listen": "127.0.0.1:0"}
    async with running_gateway(data) as gateway:
        await until(lambda: bool(gateway.sources[0].status.bad_tags), 30, "the bad tag noticed")
        port = gateway.metrics_port
        assert port is not None
        code, body = await asyncio.to_thread(http.get, port, "/healthz")
        assert code == 503, body
        state = orjson.loads(body)
        assert state["sources"]["plc"]["up"] is True
        assert state["sources"]["plc"]["bad_tags"] == {"door": EXCEPTION_2}
        assert state["failing"] == [f"source plc: 1 tag(s) cannot be read: door ({EXCEPTION_2})"]
        code, text = await asyncio.to_thread(http.get, port, "/metrics")
        assert 'edgegw_tags_bad{source="plc"} 1\n' in text
        config = write_config(tmp_path / "gw.yaml", data)
        shown = await asyncio.to_thread(run_edgegw, "status", "-c", str(config))
    assert shown.returncode == 1, shown.stderr
    assert "up, 1 BAD TAG" in shown.stdout
    row = next(line for line in shown.stdout.splitlines() if "tag door" in line)
    assert row.split() == ["tag", "door", "BAD", *EXCEPTION_2.split()]
