"""`mqtt.batch`: telemetry in edgegw.batch/1 messages; every item keeps its id and seq, so
nothing changes for a deduplicating consumer, across link cuts too."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest

from simulators.modbus_plc import ModbusPlc
from tests.conftest import StartModbusPlc
from tests.support.broker import Mosquitto
from tests.support.gateway import GatewayProcess, bench_tags, config_dict, write_config
from tests.support.ledger import (
    Tally,
    assert_complete,
    assert_unbroken_runs,
    backlog_sent,
    delivered_and_stored,
)
from tests.support.proxy import CuttableProxy
from tests.support.subscriber import Subscriber
from tests.support.wait import until


@pytest.fixture
async def plc(start_modbus_plc: StartModbusPlc) -> ModbusPlc:
    return await start_modbus_plc(bench_registers=100)


# Progress waits (tests.support.wait) for every volume: 4 x 1,000 items (15 + 5 x 1), 8,000
# items (15 + 5 x 4), the backlog (15 + 5 x 2 + 20 empty), the subscriber caught up
# (15 + 5 x 5); conditions: 15 + 30 started + 15 ~ 260 s (about 25 s here)
@pytest.mark.timeout(300)
async def test_batches_carry_every_item_once_across_link_cuts(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto
) -> None:
    proxy = await CuttableProxy(mosquitto.port).start()
    data = config_dict(tmp_path, proxy.port, plc.port, bench_tags(100), poll="50ms", timeout="3s")
    data["mqtt"]["batch"] = {"max_values": 200, "max_delay": "50ms"}
    path = write_config(tmp_path / "gw.yaml", data)
    outbox = str(tmp_path / "outbox.sqlite3")
    with Subscriber(mosquitto.port, "s/a/l/#") as sub:
        tally = Tally(sub)
        process = await GatewayProcess(path).start()
        try:
            for _ in range(4):
                await tally.wait_items(tally.count() + 1000)
                proxy.cut()
                await asyncio.sleep(0.3)  # the outage itself is the scenario
                proxy.heal()
            await tally.wait_items(8000)
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
        await until(lambda: process.starts() > starts, 30, "the gateway started")
        await backlog_sent(outbox)
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
