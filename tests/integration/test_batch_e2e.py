"""`mqtt.batch`: telemetry in edgegw.batch/1 messages; every item keeps its id and seq, so
nothing changes for a deduplicating consumer, across link cuts too."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from edgegw.outbox import read_stats
from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.gateway import GatewayProcess, bench_tags, config_dict, write_config
from tests.support.ledger import (
    assert_complete,
    assert_unbroken_runs,
    delivered_and_stored,
    telemetry,
)
from tests.support.proxy import CuttableProxy
from tests.support.subscriber import Subscriber
from tests.support.wait import until


@pytest.fixture
async def plc() -> AsyncIterator[ModbusPlc]:
    sim = ModbusPlc(host="127.0.0.1", port=0, tick=0, bench_registers=100)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.mark.timeout(90)
async def test_batches_carry_every_item_once_across_link_cuts(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto
) -> None:
    proxy = await CuttableProxy(mosquitto.port).start()
    data = config_dict(tmp_path, proxy.port, plc.port, bench_tags(100), poll="50ms", timeout="3s")
    data["mqtt"]["batch"] = {"max_values": 200, "max_delay": "50ms"}
    path = write_config(tmp_path / "gw.yaml", data)
    outbox = str(tmp_path / "outbox.sqlite3")
    with Subscriber(mosquitto.port, "s/a/l/#") as sub:
        process = await GatewayProcess(path).start()
        try:
            for _ in range(4):
                before = len(telemetry(sub.messages))
                await until(lambda b=before: len(telemetry(sub.messages)) > b + 1000, 20, "items")
                proxy.cut()
                await asyncio.sleep(0.3)
                proxy.heal()
            await until(lambda: len(telemetry(sub.messages)) > 8000, 30, "8,000 items")
        finally:
            process.signal(signal.SIGTERM)
            assert await process.wait(15) == 0
            await proxy.stop()
        # the rest goes straight to the broker
        data["mqtt"]["url"] = f"mqtt://127.0.0.1:{mosquitto.port}"
        write_config(path, data)
        process = GatewayProcess(path)
        starts = process.starts()
        await process.start()
        await until(lambda: process.starts() > starts, 20, "the gateway started")
        await until(lambda: read_stats(outbox).depth == 0, 30, "the backlog sent")
        process.signal(signal.SIGTERM)
        assert await process.wait(15) == 0
        # Rows committed during the stop wait on disk for the next start: delivered or stored.
        received, last = await delivered_and_stored(sub, outbox)
    items = received
    assert_complete(items, last)
    assert_unbroken_runs(items, stops=1)  # the SIGTERM before the last run
    batches = [orjson.loads(m.payload) for m in sub.messages if m.topic == "s/a/l/plc/batch"]
    assert batches, "telemetry went out as batches"
    assert all(b["schema"] == "edgegw.batch/1" for b in batches)
    assert all(b["seq_first"] == b["items"][0]["seq"] for b in batches)
    assert all(len(b["items"]) <= 200 for b in batches)
    assert len(batches) * 10 < len(items), "batches hold many values each"
