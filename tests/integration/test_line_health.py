"""A Modbus line's devices in /healthz and /metrics: a device whose breaker is open is named,
and its errors are counted by kind (issue 15: documented, not yet tested end to end)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulators.modbus_plc import BENCH_BASE, ModbusPlc
from simulators.modbus_rtu import RtuLine
from tests.support import http
from tests.support.broker import Mosquitto
from tests.support.gateway import running_gateway
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

UNITS = (1, 2)


@pytest.fixture
async def line() -> AsyncIterator[RtuLine]:
    rtu = RtuLine(
        {unit: ModbusPlc(unit=unit, bench_registers=2, tick=0) for unit in UNITS},
        baudrate=115200,
    )
    await rtu.start()
    yield rtu
    await rtu.stop()


def _config(tmp_path: Path, line: RtuLine, mosquitto: Mosquitto) -> dict[str, Any]:
    assert line.path is not None
    return {
        "gateway": {"id": "gw", "site": "s", "area": "a", "line": "l", "state_dir": str(tmp_path)},
        "mqtt": {"url": mosquitto.url, "keepalive": "2s", "connect_timeout": "2s"},
        "http": {"listen": "127.0.0.1:0"},
        "sources": [
            {
                "name": "rs485-a",
                "protocol": "modbus",
                "url": f"rtu://{line.path}?baudrate=115200",
                # A slow machine answers well within 1 s; the silent unit never does.
                "timeout": "1s",
                "breaker": {"failures": 2, "retry": "30s"},
                "devices": [
                    {
                        "unit": unit,
                        "name": f"pump-{unit}",
                        "poll": "200ms",
                        "tags": [
                            {"name": "r0", "address": f"holding:{BENCH_BASE}", "type": "uint16"}
                        ],
                    }
                    for unit in UNITS
                ],
            }
        ],
    }


async def test_an_open_breaker_is_named_and_errors_are_counted_by_kind(
    tmp_path: Path, line: RtuLine, mosquitto: Mosquitto
) -> None:
    async with running_gateway(_config(tmp_path, line, mosquitto)) as gateway:
        port = gateway.metrics_port
        assert port is not None
        source = gateway.sources[0]
        devices = {d.name: d for d in getattr(source, "device_statuses", [])}
        await until(lambda: all(d.reads > 2 for d in devices.values()), 30, "both units read")
        code, body = await asyncio.to_thread(http.get, port, "/healthz")
        assert code == 200, body

        line.faults[2].silent = True
        await until(lambda: devices["pump-2"].breaker_open, 30, "pump-2's breaker to open")
        code, body = await asyncio.to_thread(http.get, port, "/healthz")
        assert code == 503, body
        state = orjson.loads(body)
        named = [part for part in state["failing"] if part.startswith("device pump-2 ")]
        assert named == ["device pump-2 (rs485-a unit 2): no reply within 1s"], state["failing"]
        assert state["sources"]["rs485-a"]["devices"]["pump-2"]["breaker_open"] is True
        assert state["sources"]["rs485-a"]["devices"]["pump-1"]["breaker_open"] is False

        _, text = await asyncio.to_thread(http.get, port, "/metrics")
        label = 'source="rs485-a",device="pump-2"'
        assert (
            http.metric(text, f'edgegw_device_errors_total{{{label},kind="timeout"}}') or 0
        ) >= 2
        assert http.metric(text, f"edgegw_device_breaker_open{{{label}}}") == 1
        healthy = 'source="rs485-a",device="pump-1"'
        assert http.metric(text, f"edgegw_device_breaker_open{{{healthy}}}") == 0
        assert http.metric(text, f'edgegw_device_errors_total{{{healthy},kind="timeout"}}') in (
            None,
            0,
        )
